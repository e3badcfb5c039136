//! Agent configuration: TOML file → flags and `LANYARD_*` environment →
//! [`RawConfig::validate`] → a typed [`Config`].

use std::path::{Path, PathBuf};

use super::tables::{Limits, QuarantineSettings, RawAudit, RawQuarantine, RawWorkloadApi};
use lanyard_core::TrustDomain;
pub use lanyard_core::config::{ConfigError, LogFormat};
use lanyard_core::config::{at_least_one, overlay, read_toml};

/// Default Workload API socket.
pub const DEFAULT_SOCKET: &str = "/run/lanyard/agent/api.sock";
/// Default server address.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8081";

/// `server = "a:1"`, `server = "a:1,b:2"` or `server = ["a:1", "b:2"]`.
fn server_addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Servers {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(
        match <Servers as serde::Deserialize>::deserialize(d)? {
            Servers::One(s) => s,
            Servers::Many(v) => v.join(","),
        },
    ))
}

/// Raw settings; every field optional.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Server address(es), host:port: one string (comma-separated for
    /// several) or a list.
    #[serde(default, deserialize_with = "server_addresses")]
    pub server: Option<String>,
    /// Trust domain.
    pub trust_domain: Option<String>,
    /// Join token for the first attestation.
    pub join_token: Option<String>,
    /// File holding the join token (keeps it out of argv and the
    /// environment).
    pub join_token_file: Option<PathBuf>,
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
    /// Identify callers by pidfd (`SO_PEERPIDFD`) where the kernel has it;
    /// `false` forces the start-time fallback.
    pub use_pidfd: Option<bool>,
    /// `[quarantine]`: what this node does about workloads it quarantines.
    pub quarantine: Option<RawQuarantine>,
    /// `[audit]`: the durable queue of decision records.
    pub audit: Option<RawAudit>,
    /// `[workload_api]`: optional Workload API profiles.
    pub workload_api: Option<RawWorkloadApi>,
    /// Most open Workload API connections in total.
    pub max_connections: Option<usize>,
    /// Most open Workload API connections per caller (its uid and root-made
    /// cgroup boundary).
    pub max_connections_per_caller: Option<usize>,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: Option<u32>,
    /// How long a caller has to complete the HTTP/2 preface, a frame
    /// header or a header block once begun (default 10s).
    pub header_timeout: Option<String>,
    /// Most bytes held for incomplete HTTP/2 frames and header blocks
    /// across every Workload API connection (default 64 MiB).
    pub max_buffered_header_bytes: Option<usize>,
    /// Largest executable hashed for `unix:sha256`, bytes.
    pub max_hash_bytes: Option<u64>,
    /// Runtime worker threads (default: one per CPU).
    pub worker_threads: Option<usize>,
    /// Bytes of JWT-SVIDs kept in the cache.
    pub jwt_cache_bytes: Option<usize>,
    /// JWT-SVID signings each caller may cause per second (burst twice).
    pub jwt_signings_per_caller_per_second: Option<u32>,
    /// How the node attests: `join_token` (default) or `k8s_psat`.
    pub node_attestor: Option<String>,
    /// A DNS server (`ip:port`) to resolve server names with, instead of
    /// the system's resolver configuration.
    pub dns_server: Option<String>,
    /// Prometheus metrics address (off when unset).
    pub metrics_bind: Option<String>,
    /// `[k8s_psat]`: the projected service account token.
    pub k8s_psat: Option<crate::config::k8s::RawK8sPsat>,
    /// `[k8s]`: the Kubernetes workload attestor.
    pub k8s: Option<crate::config::k8s::RawK8s>,
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
    /// Server addresses, host:port, comma-separated; the agent fails over
    /// between them.
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
    /// Use pidfds to identify callers where the kernel has them.
    pub use_pidfd: bool,
    /// Quarantine behaviour.
    pub quarantine: QuarantineSettings,
    /// The audit queue.
    pub audit: crate::audit_queue::QueueSettings,
    /// Serve the WIT-SVID profile of the Workload API.
    pub wit_svids: bool,
    /// Workload API limits.
    pub limits: Limits,
    /// How the node attests.
    pub node_attestation: crate::config::k8s::NodeAttestation,
    /// Resolves server names.
    pub resolver: std::sync::Arc<crate::upstream::dns::ServerResolver>,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// The Kubernetes workload attestor, when on.
    pub k8s: Option<crate::config::k8s::K8sSettings>,
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
            .field("use_pidfd", &self.use_pidfd)
            .field("limits", &self.limits)
            .finish()
    }
}

impl RawConfig {
    /// The runtime's worker threads (`None`: one per CPU the process may
    /// use), checked before the runtime starts.
    ///
    /// One worker halves the agent's CPU per streamed Workload API message
    /// at low load: with several, the HTTP/2 layer waking a stream's task
    /// while it sends makes the runtime wake a second thread for every
    /// streamed message. Under many concurrent clients several workers
    /// keep the tail latency of streams down.
    pub fn worker_threads(&self) -> Result<Option<usize>, ConfigError> {
        match self.worker_threads {
            None => Ok(None),
            Some(n @ 1..=1024) => Ok(Some(n)),
            Some(n) => Err(ConfigError::Invalid {
                field: "worker_threads",
                reason: format!("{n} is not between 1 and 1024"),
            }),
        }
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        read_toml(path)
    }

    /// Overlays `other`'s set settings on `self` (flags and environment
    /// over the file).
    pub fn merge(self, other: RawConfig) -> Result<Self, ConfigError> {
        overlay(self, other)
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
        let list = crate::upstream::client::server_list(&server)
            .map_err(|_| ConfigError::invalid("server", "is empty (expected host:port)"))?;
        for one in &list {
            if one
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(ConfigError::invalid(
                    "server",
                    format!("{one:?} is not host:port"),
                ));
            }
        }
        let server = list.join(",");
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
        let join_token = match (
            self.join_token.filter(|t| !t.is_empty()),
            self.join_token_file,
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "join_token_file",
                    "--join-token and --join-token-file are mutually exclusive",
                ));
            }
            (Some(t), None) => Some(t),
            (None, Some(p)) => {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| ConfigError::Read(p.clone(), e))?;
                let t = text.trim().to_owned();
                if t.is_empty() {
                    return Err(ConfigError::invalid(
                        "join_token_file",
                        format!("{} is empty", p.display()),
                    ));
                }
                Some(t)
            }
            (None, None) => None,
        };
        let d = Limits::default();
        let limits = Limits {
            max_connections_default: self.max_connections.is_none(),
            max_connections: at_least_one(
                "max_connections",
                self.max_connections,
                d.max_connections,
            )?,
            max_connections_per_caller: at_least_one(
                "max_connections_per_caller",
                self.max_connections_per_caller,
                d.max_connections_per_caller,
            )?,
            max_streams_per_connection: at_least_one(
                "max_streams_per_connection",
                self.max_streams_per_connection,
                d.max_streams_per_connection,
            )?,
            header_timeout: match self.header_timeout {
                Some(t) => {
                    let t = lanyard_core::duration::parse_duration(&t)
                        .map_err(|e| ConfigError::invalid("header_timeout", e))?;
                    if t.is_zero() {
                        return Err(ConfigError::invalid("header_timeout", "must be above 0"));
                    }
                    t
                }
                None => d.header_timeout,
            },
            max_buffered_header_bytes: at_least_one(
                "max_buffered_header_bytes",
                self.max_buffered_header_bytes,
                d.max_buffered_header_bytes,
            )?,
            max_hash_bytes: self.max_hash_bytes.unwrap_or(d.max_hash_bytes),
            jwt_cache_bytes: at_least_one(
                "jwt_cache_bytes",
                self.jwt_cache_bytes,
                d.jwt_cache_bytes,
            )?,
            jwt_signings_per_caller_per_second: at_least_one(
                "jwt_signings_per_caller_per_second",
                self.jwt_signings_per_caller_per_second,
                d.jwt_signings_per_caller_per_second,
            )?,
        };
        let q = self.quarantine.unwrap_or_default();
        let dq = crate::pdp::LocalTrigger::default();
        let window = match q.window {
            Some(w) => lanyard_core::duration::parse_duration(&w)
                .map_err(|e| ConfigError::invalid("quarantine.window", e))?,
            None => dq.window,
        };
        if window.is_zero() {
            return Err(ConfigError::invalid("quarantine.window", "must be above 0"));
        }
        let quarantine = QuarantineSettings {
            freeze: q.freeze.unwrap_or(false),
            trigger: crate::pdp::LocalTrigger {
                max_denials: q.max_denials.unwrap_or(dq.max_denials),
                window,
            },
        };
        let a = self.audit.unwrap_or_default();
        let da = crate::audit_queue::QueueSettings::default();
        let sync_interval = match a.sync_interval {
            Some(v) => lanyard_core::duration::parse_duration(&v)
                .map_err(|e| ConfigError::invalid("audit.sync_interval", e))?,
            None => da.sync_interval,
        };
        if sync_interval.is_zero() || sync_interval > std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "audit.sync_interval",
                "must be above 0 and at most 1s",
            ));
        }
        let audit = crate::audit_queue::QueueSettings {
            max_bytes: at_least_one("audit.max_queue_bytes", a.max_queue_bytes, da.max_bytes)?,
            sync_interval,
        };
        let node_attestation =
            crate::config::k8s::node_attestation(self.node_attestor.as_deref(), self.k8s_psat)?;
        if join_token.is_some()
            && node_attestation != crate::config::k8s::NodeAttestation::JoinToken
        {
            return Err(ConfigError::invalid(
                "join_token",
                "is only used with node_attestor = \"join_token\"",
            ));
        }
        let k8s = crate::config::k8s::k8s(self.k8s)?;
        let resolver = match self.dns_server.as_deref().map(str::trim) {
            None | Some("") => crate::upstream::dns::ServerResolver::system(),
            Some(v) => std::sync::Arc::new(crate::upstream::dns::ServerResolver::new(Some(
                v.parse().map_err(|_| {
                    ConfigError::invalid(
                        "dns_server",
                        format!("{v:?} is not ip:port (e.g. 10.96.0.10:53)"),
                    )
                })?,
            ))),
        };
        let metrics_bind =
            lanyard_core::config::optional_addr("metrics_bind", self.metrics_bind.as_deref())?;
        Ok(Config {
            metrics_bind,
            resolver,
            node_attestation,
            k8s,
            server,
            trust_domain,
            join_token,
            quarantine,
            audit,
            wit_svids: self
                .workload_api
                .as_ref()
                .and_then(|w| w.wit)
                .unwrap_or(false),
            use_pidfd: self.use_pidfd.unwrap_or(true),
            limits,
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
    fn worker_threads_default_to_the_runtime_and_are_bounded() {
        let parse = |t: &str| toml::from_str::<RawConfig>(t).unwrap().worker_threads();
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("worker_threads = 1").unwrap(), Some(1));
        let e = parse("worker_threads = 0").unwrap_err().to_string();
        assert!(
            e.contains("worker_threads") && e.contains("between 1 and 1024"),
            "{e}"
        );
        assert!(parse("worker_threads = 5000").is_err());
    }

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
        // Several servers: a list, or commas.
        for text in [
            "trust_domain = \"td\"\ninsecure_bootstrap = true\nserver = [\"a:1\", \"b:2\"]",
            "trust_domain = \"td\"\ninsecure_bootstrap = true\nserver = \"a:1, b:2\"",
        ] {
            let c = toml::from_str::<RawConfig>(text)
                .unwrap()
                .validate()
                .unwrap();
            assert_eq!(c.server, "a:1,b:2");
        }
        let e = RawConfig {
            trust_domain: Some("td".into()),
            insecure_bootstrap: Some(true),
            server: Some("a:1,b".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("\"b\" is not host:port"), "{e}");
        let secret = RawConfig {
            join_token: Some("s3cret".into()),
            ..Default::default()
        };
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn join_token_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "abc123\n").unwrap();
        let base = RawConfig {
            trust_domain: Some("td".into()),
            join_token_file: Some(f.clone()),
            ..Default::default()
        };
        assert_eq!(
            base.clone().validate().unwrap().join_token.as_deref(),
            Some("abc123")
        );
        let both = RawConfig {
            join_token: Some("x".into()),
            ..base.clone()
        };
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .contains("mutually exclusive")
        );
        std::fs::write(&f, "\n").unwrap();
        assert!(
            base.clone()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        let missing = RawConfig {
            join_token_file: Some(dir.path().join("nope")),
            ..base
        };
        assert!(missing.validate().is_err());
        let zero = RawConfig {
            trust_domain: Some("td".into()),
            max_connections: Some(0),
            ..Default::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
    }
}
