//! The gateway's configuration: a TOML file (listeners, the node agent's
//! socket, limits, and one `[[upstream]]` table per tool server), with the
//! command line's flags over it. Everything is checked before anything
//! starts: a bad file is one line naming the setting, never a half-started
//! gateway. A reload (SIGHUP) reads the file again and swaps the upstreams
//! only when the new file is whole.

mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_core::config::{ConfigError, LogFormat};
use lanyard_core::duration::parse_duration;
use serde::Deserialize;

pub use upstream::{Credential, CredentialSource, Inject, Kind, Route, Segment, Upstream};

/// Largest request body a caller may send, by default.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// How long an upstream may take, by default.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call waiting for approval is held open by default.
pub const DEFAULT_APPROVAL_WAIT: Duration = Duration::from_secs(25);

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    admin_listen: Option<String>,
    agent_socket: Option<String>,
    trust_domain: Option<String>,
    log_format: Option<String>,
    max_body: Option<usize>,
    upstream_timeout: Option<String>,
    require_destinations: Option<bool>,
    ext_authz_socket: Option<String>,
    ext_authz_uids: Option<Vec<u32>>,
    approval_wait: Option<String>,
    #[serde(default)]
    upstream: Vec<upstream::UpstreamFile>,
}

/// What the command line sets over the file.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--socket`.
    pub socket: Option<String>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where AI agents connect (HTTPS, mutual TLS).
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` (plain HTTP; keep it private).
    pub admin_listen: Option<SocketAddr>,
    /// The node agent's socket.
    pub agent_socket: PathBuf,
    /// The trust domain of callers and of the gateway.
    pub trust_domain: String,
    /// Log output.
    pub log_format: LogFormat,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Default upstream timeout.
    pub upstream_timeout: Duration,
    /// Refuse a task that declared no destinations (otherwise only a task
    /// that declared some is held to them).
    pub require_destinations: bool,
    /// The Envoy external-authorization service's unix socket.
    pub ext_authz_socket: Option<PathBuf>,
    /// The uids allowed on that socket (besides the gateway's own).
    pub ext_authz_uids: Vec<u32>,
    /// How long a call a policy holds for a person's approval is held
    /// open for the answer before the caller is told "pending, retry".
    pub approval_wait: Duration,
    /// The tool servers.
    pub upstreams: Vec<Upstream>,
}

impl Config {
    /// Reads `path` and applies `flags`.
    pub fn load(path: &Path, flags: &Flags) -> Result<Self, ConfigError> {
        let file: File = lanyard_core::config::read_toml(path)?;
        Self::from_file(file, flags)
    }

    /// Parses TOML `text` (for tests and `check`).
    pub fn parse(text: &str, flags: &Flags) -> Result<Self, ConfigError> {
        let file: File = lanyard_core::config::parse_toml(Path::new("config"), text)?;
        Self::from_file(file, flags)
    }

    fn from_file(f: File, flags: &Flags) -> Result<Self, ConfigError> {
        let listen = flags
            .listen
            .clone()
            .or(f.listen)
            .unwrap_or_else(|| "0.0.0.0:8443".into());
        let listen = lanyard_core::config::optional_addr("listen", Some(&listen))?
            .ok_or_else(|| ConfigError::invalid("listen", "must be set (e.g. 0.0.0.0:8443)"))?;
        let admin_listen = lanyard_core::config::optional_addr(
            "admin_listen",
            flags.admin_listen.as_deref().or(f.admin_listen.as_deref()),
        )?;
        let socket = flags
            .socket
            .clone()
            .or(f.agent_socket)
            .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
            .unwrap_or_else(|| "unix:///run/lanyard/agent/api.sock".into());
        let trust_domain = f.trust_domain.unwrap_or_else(|| "example.org".into());
        lanyard_core::TrustDomain::new(&trust_domain)
            .map_err(|e| ConfigError::invalid("trust_domain", e))?;
        let max_body =
            lanyard_core::config::at_least_one("max_body", f.max_body, DEFAULT_MAX_BODY)?;
        let upstream_timeout = match f.upstream_timeout {
            None => DEFAULT_UPSTREAM_TIMEOUT,
            Some(t) => {
                parse_duration(&t).map_err(|e| ConfigError::invalid("upstream_timeout", e))?
            }
        };
        if upstream_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream_timeout",
                "must be more than 0",
            ));
        }
        let upstreams = upstream::check_all(f.upstream, upstream_timeout)?;
        let approval_wait = match f.approval_wait {
            None => DEFAULT_APPROVAL_WAIT,
            Some(t) => parse_duration(&t).map_err(|e| ConfigError::invalid("approval_wait", e))?,
        };
        if approval_wait > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "approval_wait",
                "at most 60s (the caller retries after that)",
            ));
        }
        Ok(Self {
            approval_wait,
            listen,
            admin_listen,
            agent_socket: lanyard_uds::socket_path(&socket),
            trust_domain,
            log_format: LogFormat::from_setting(f.log_format.as_deref())?,
            max_body,
            upstream_timeout,
            require_destinations: f.require_destinations.unwrap_or(true),
            ext_authz_socket: f.ext_authz_socket.map(PathBuf::from),
            ext_authz_uids: f.ext_authz_uids.unwrap_or_default(),
            upstreams,
        })
    }

    /// The upstream serving the gateway path `path`: the longest
    /// configured prefix that matches at a segment boundary.
    pub fn upstream_for(&self, path: &str) -> Option<&Upstream> {
        self.upstreams
            .iter()
            .filter(|u| {
                path == u.path
                    || path
                        .strip_prefix(u.path.as_str())
                        .is_some_and(|rest| rest.starts_with('/') || u.path.ends_with('/'))
            })
            .max_by_key(|u| u.path.len())
    }

    /// The upstream named `name`.
    pub fn upstream_named(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests;
