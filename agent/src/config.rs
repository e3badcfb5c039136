//! Agent configuration: TOML file → flags and `LANYARD_*` environment →
//! [`RawConfig::validate`] → a typed [`Config`].

use std::path::{Path, PathBuf};

use lanyard_core::TrustDomain;
use lanyard_core::config::parse_toml;
pub use lanyard_core::config::{ConfigError, LogFormat};

/// Default Workload API socket.
pub const DEFAULT_SOCKET: &str = "/tmp/lanyard/public/api.sock";
/// Default server address.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8081";

/// Raw settings; every field optional.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Server address, host:port.
    pub server: Option<String>,
    /// Trust domain.
    pub trust_domain: Option<String>,
    /// Join token for the first attestation.
    pub join_token: Option<String>,
    /// PEM bundle to authenticate the server at bootstrap.
    pub trust_bundle: Option<PathBuf>,
    /// Trust the first server reached (development only).
    pub insecure_bootstrap: Option<bool>,
    /// Workload API socket path.
    pub socket: Option<PathBuf>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// `plain` or `json`.
    pub log_format: Option<String>,
}

impl std::fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConfig")
            .field("server", &self.server)
            .field("trust_domain", &self.trust_domain)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// How the agent authenticates the server before it has a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Verify the server against this PEM bundle file.
    TrustBundle(PathBuf),
    /// Accept whatever server answers (development only).
    Insecure,
    /// Neither given: only a stored agent SVID can be used.
    None,
}

/// The validated agent configuration.
#[derive(Clone)]
pub struct Config {
    /// Server address, host:port.
    pub server: String,
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Join token.
    pub join_token: Option<String>,
    /// Server authentication at bootstrap.
    pub bootstrap: Bootstrap,
    /// Workload API socket.
    pub socket: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("trust_domain", &self.trust_domain)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("bootstrap", &self.bootstrap)
            .field("socket", &self.socket)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        parse_toml(path, &text)
    }

    /// Overlays `other`'s set fields on `self`.
    pub fn merge(mut self, other: RawConfig) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            server,
            trust_domain,
            join_token,
            trust_bundle,
            insecure_bootstrap,
            socket,
            data_dir,
            log_format
        );
        self
    }

    /// Applies defaults and checks every value.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let trust_domain = TrustDomain::new(self.trust_domain.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                "trust_domain",
                "is required (e.g. --trust-domain example.org)",
            )
        })?)
        .map_err(|e| ConfigError::invalid("trust_domain", e))?;
        let server = self.server.unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        if server
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(ConfigError::invalid(
                "server",
                format!("{server:?} is not host:port"),
            ));
        }
        let bootstrap = match (self.trust_bundle, self.insecure_bootstrap.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(ConfigError::invalid(
                    "trust_bundle",
                    "--trust-bundle and --insecure-bootstrap are mutually exclusive",
                ));
            }
            (Some(p), false) => Bootstrap::TrustBundle(p),
            (None, true) => Bootstrap::Insecure,
            (None, false) => Bootstrap::None,
        };
        let log_format = LogFormat::from_setting(self.log_format.as_deref())?;
        Ok(Config {
            server,
            trust_domain,
            join_token: self.join_token.filter(|t| !t.is_empty()),
            bootstrap,
            socket: self.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(".lanyard/agent")),
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let c = RawConfig {
            trust_domain: Some("td".into()),
            insecure_bootstrap: Some(true),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(c.bootstrap, Bootstrap::Insecure);
        assert_eq!(c.server, DEFAULT_SERVER);
        let e = RawConfig {
            trust_domain: Some("td".into()),
            insecure_bootstrap: Some(true),
            trust_bundle: Some("b.pem".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("mutually exclusive"));
        let e = RawConfig {
            trust_domain: Some("td".into()),
            server: Some("nope".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("server:"));
        assert!(toml::from_str::<RawConfig>("nope = 1").is_err());
        let secret = RawConfig {
            join_token: Some("s3cret".into()),
            ..Default::default()
        };
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}
