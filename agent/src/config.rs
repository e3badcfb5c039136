//! Agent configuration: TOML file → flags and `LANYARD_*` environment →
//! [`RawConfig::validate`] → a typed [`Config`].

use std::path::{Path, PathBuf};

use lanyard_core::TrustDomain;

/// Default Workload API socket.
pub const DEFAULT_SOCKET: &str = "/tmp/lanyard/public/api.sock";
/// Default server address.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8081";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    /// A value is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
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

fn invalid(field: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))
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
            invalid(
                "trust_domain",
                "is required (e.g. --trust-domain example.org)",
            )
        })?)
        .map_err(|e| invalid("trust_domain", e))?;
        let server = self.server.unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        if server
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(invalid("server", format!("{server:?} is not host:port")));
        }
        let bootstrap = match (self.trust_bundle, self.insecure_bootstrap.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(invalid(
                    "trust_bundle",
                    "--trust-bundle and --insecure-bootstrap are mutually exclusive",
                ));
            }
            (Some(p), false) => Bootstrap::TrustBundle(p),
            (None, true) => Bootstrap::Insecure,
            (None, false) => Bootstrap::None,
        };
        let log_format = match self.log_format.as_deref().unwrap_or("plain") {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?} is not plain or json"),
                ));
            }
        };
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
