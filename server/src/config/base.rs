//! Server configuration: TOML file → flags and `LANYARD_*` environment →
//! [`Config::validate`] → a typed [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_core::TrustDomain;
pub use lanyard_core::config::{ConfigError, LogFormat};
use lanyard_core::config::{at_least_one, overlay, read_toml};
use lanyard_core::duration::{format_duration, parse_duration};
use lanyard_core::task::SensitivityLevels;

/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/lanyard/server/admin.sock";
/// Default server API address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8081";

/// Raw settings, as read from TOML or flags; every field optional.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Trust domain name.
    pub trust_domain: Option<String>,
    /// Where the database and CA keys live.
    pub data_dir: Option<PathBuf>,
    /// Server API listen address.
    pub bind: Option<String>,
    /// Admin API socket path.
    pub admin_socket: Option<PathBuf>,
    /// Prometheus metrics address (off when unset).
    pub metrics_bind: Option<String>,
    /// CA certificate lifetime.
    pub ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime.
    pub default_x509_svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime.
    pub default_jwt_svid_ttl: Option<String>,
    /// Agent SVID lifetime.
    pub agent_svid_ttl: Option<String>,
    /// Default join token lifetime.
    pub join_token_ttl: Option<String>,
    /// `plain` or `json`.
    pub log_format: Option<String>,
    /// Most open connections on the server port.
    pub max_connections: Option<usize>,
    /// Most open connections (and handshakes) from one peer address.
    pub max_connections_per_peer: Option<usize>,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: Option<usize>,
    /// How long a peer gets to finish the TLS handshake.
    pub handshake_timeout: Option<String>,
    /// Connections older than this are closed (agents reconnect).
    pub max_connection_age: Option<String>,
    /// Data sensitivity levels, lowest first (default: public, internal,
    /// confidential, restricted).
    pub sensitivity_levels: Option<Vec<String>>,
    /// `sled` (default: the embedded database in the data dir) or a
    /// `postgres://` URL shared by several servers.
    pub datastore: Option<String>,
    /// PEM CA certificates that sign the PostgreSQL server's certificate.
    pub datastore_ca: Option<PathBuf>,
    /// With PostgreSQL: keep this server's CA and JWT private keys in the
    /// database rows instead of its data dir (default false).
    pub ca_keys_in_datastore: Option<bool>,
    /// More denied tool calls than this for one task, within
    /// `quarantine_window`, quarantine its holder (default 3).
    pub quarantine_max_denials: Option<u32>,
    /// The window of `quarantine_max_denials` (default 60s).
    pub quarantine_window: Option<String>,
    /// Audit records older than this are pruned, in whole segments
    /// (default 90d; `forever` keeps everything).
    pub audit_retention: Option<String>,
    /// Audit segments are pruned while at least this many newer records
    /// remain (default: no count limit).
    pub audit_max_records: Option<u64>,
    /// Size at which a new audit segment file is started (default 64 MiB).
    pub audit_segment_bytes: Option<u64>,
    /// The key file that seals credential providers' secrets (default
    /// `<data_dir>/credential.key`, created when missing; every server of
    /// one PostgreSQL database needs the same file).
    pub credential_key_file: Option<PathBuf>,
    /// PEM file of the CA certificates trusted for the token and
    /// revocation endpoints of `oauth-exchange` providers (default: the
    /// system's roots).
    pub credential_ca_file: Option<PathBuf>,
    /// `iss` of every JWT-SVID: the OpenID Connect issuer URL (default
    /// `https://<trust domain>`; every server of a trust domain names the
    /// same one).
    pub jwt_issuer: Option<String>,
    /// Serve OpenID Connect discovery and the JWT keys on this address
    /// (off when unset).
    pub oidc_bind: Option<String>,
    /// PEM certificate chain of the discovery endpoint (HTTPS).
    pub oidc_cert: Option<PathBuf>,
    /// PEM private key of `oidc_cert`.
    pub oidc_key: Option<PathBuf>,
    /// Serve discovery over plain HTTP (behind a TLS-terminating proxy).
    pub oidc_plain_http: Option<bool>,
    /// `[[k8s_psat]]`: clusters whose agents attest with projected service
    /// account tokens.
    pub k8s_psat: Option<Vec<crate::config::psat::RawPsatCluster>>,
    /// How long a call held for approval waits by default (5m).
    pub approval_ttl: Option<String>,
    /// `[[approver]]`: the people who may approve held calls.
    pub approver: Option<Vec<crate::config::approvers::RawApprover>>,
    /// `[[approver_group]]`: webhooks per group of approvers.
    pub approver_group: Option<Vec<crate::config::approvers::RawApproverGroup>>,
    /// PEM CA certificates trusted for approval webhooks (default: the
    /// system's roots).
    pub webhook_ca_file: Option<PathBuf>,
    /// Serve the operator console on this address (off by default).
    pub console_bind: Option<String>,
    /// PEM certificate chain of the console (HTTPS).
    pub console_cert: Option<PathBuf>,
    /// PEM private key of `console_cert`.
    pub console_key: Option<PathBuf>,
    /// The console's base URL in login links (default: its address).
    pub console_url: Option<String>,
    /// How long a console session lasts (15m).
    pub console_session_ttl: Option<String>,
}

impl RawConfig {
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
        let dur = |field: &'static str, v: Option<String>, default: &str| {
            parse_duration(v.as_deref().unwrap_or(default))
                .map_err(|e| ConfigError::invalid(field, e))
        };
        let ca_ttl = dur("ca_ttl", self.ca_ttl, "24h")?;
        let default_x509_svid_ttl = dur("default_x509_svid_ttl", self.default_x509_svid_ttl, "5m")?;
        let default_jwt_svid_ttl = dur("default_jwt_svid_ttl", self.default_jwt_svid_ttl, "5m")?;
        let agent_svid_ttl = dur("agent_svid_ttl", self.agent_svid_ttl, "30m")?;
        let join_token_ttl = dur("join_token_ttl", self.join_token_ttl, "10m")?;
        for (field, v) in [
            ("default_x509_svid_ttl", default_x509_svid_ttl),
            ("default_jwt_svid_ttl", default_jwt_svid_ttl),
            ("agent_svid_ttl", agent_svid_ttl),
        ] {
            if v < Duration::from_secs(1) {
                return Err(ConfigError::invalid(field, "must be at least 1s"));
            }
        }
        let largest = default_x509_svid_ttl
            .max(default_jwt_svid_ttl)
            .max(agent_svid_ttl);
        if ca_ttl < largest * 6 {
            return Err(ConfigError::invalid(
                "ca_ttl",
                format!(
                    "{} is less than 6x the largest SVID TTL ({}); SVIDs would be cut short by CA rotation. Raise ca_ttl to at least {}",
                    format_duration(ca_ttl),
                    format_duration(largest),
                    format_duration(largest * 6)
                ),
            ));
        }
        let bind: SocketAddr = self
            .bind
            .as_deref()
            .unwrap_or(DEFAULT_BIND)
            .parse()
            .map_err(|e| {
                ConfigError::invalid(
                    "bind",
                    format!("{e} (expected host:port, e.g. 127.0.0.1:8081)"),
                )
            })?;
        let log_format = LogFormat::from_setting(self.log_format.as_deref())?;
        let d = NetLimits::default();
        let handshake_timeout = match self.handshake_timeout {
            Some(v) => {
                parse_duration(&v).map_err(|e| ConfigError::invalid("handshake_timeout", e))?
            }
            None => d.handshake_timeout,
        };
        let max_connection_age = match self.max_connection_age {
            Some(v) => {
                parse_duration(&v).map_err(|e| ConfigError::invalid("max_connection_age", e))?
            }
            None => d.max_connection_age,
        };
        if handshake_timeout.is_zero() || max_connection_age < Duration::from_secs(10) {
            return Err(ConfigError::invalid(
                "max_connection_age",
                "handshake_timeout must be above 0 and max_connection_age at least 10s",
            ));
        }
        let net = NetLimits {
            max_connections: at_least_one(
                "max_connections",
                self.max_connections,
                d.max_connections,
            )?,
            max_connections_per_peer: at_least_one(
                "max_connections_per_peer",
                self.max_connections_per_peer,
                d.max_connections_per_peer,
            )?,
            max_handshakes: at_least_one("max_handshakes", self.max_handshakes, d.max_handshakes)?,
            handshake_timeout,
            max_connection_age,
        };
        let sensitivity_levels = match self.sensitivity_levels {
            Some(l) => SensitivityLevels::new(l)
                .map_err(|e| ConfigError::invalid("sensitivity_levels", e))?,
            None => SensitivityLevels::default(),
        };
        let datastore = match self.datastore.as_deref().map(str::trim) {
            None | Some("" | "sled") => Datastore::Sled,
            Some(url) if crate::store::PgOptions::is_postgres_url(url) => {
                Datastore::Postgres(crate::store::PgOptions {
                    url: url.to_owned(),
                    ca_file: self.datastore_ca.clone(),
                })
            }
            Some(_) => {
                return Err(ConfigError::invalid(
                    "datastore",
                    "must be \"sled\" or a postgres://user:password@host:port/database URL",
                ));
            }
        };
        if self.datastore_ca.is_some() && datastore == Datastore::Sled {
            return Err(ConfigError::invalid(
                "datastore_ca",
                "is only used with a postgres:// datastore",
            ));
        }
        let quarantine_window = dur("quarantine_window", self.quarantine_window, "60s")?;
        if quarantine_window.is_zero() {
            return Err(ConfigError::invalid("quarantine_window", "must be above 0"));
        }
        let quarantine = crate::enforce::DenialTrigger {
            max_denials: self.quarantine_max_denials.unwrap_or(3),
            window: quarantine_window,
        };
        let mut audit = crate::audit::AuditSettings::default();
        match self.audit_retention.as_deref().map(str::trim) {
            None => {}
            Some("forever") => audit.retention = None,
            Some(v) => {
                let keep =
                    parse_duration(v).map_err(|e| ConfigError::invalid("audit_retention", e))?;
                if keep.is_zero() {
                    return Err(ConfigError::invalid(
                        "audit_retention",
                        "must be above 0 (or \"forever\")",
                    ));
                }
                audit.retention = Some(keep);
            }
        }
        if let Some(n) = self.audit_max_records {
            audit.max_records = Some(at_least_one("audit_max_records", Some(n), 1u64)?);
        }
        if let Some(n) = self.audit_segment_bytes {
            if n < 4096 {
                return Err(ConfigError::invalid(
                    "audit_segment_bytes",
                    "must be at least 4096",
                ));
            }
            audit.segment_bytes = n;
        }
        let psat_clusters = crate::config::psat::validate(self.k8s_psat.unwrap_or_default())?;
        let console = crate::config::console::validate(crate::config::console::RawConsole {
            bind: self.console_bind,
            cert: self.console_cert,
            key: self.console_key,
            url: self.console_url,
            session_ttl: self.console_session_ttl,
        })?;
        let approval = crate::config::approvers::validate_all(
            self.approver.unwrap_or_default(),
            self.approver_group.unwrap_or_default(),
            self.approval_ttl.as_deref(),
            self.webhook_ca_file.clone(),
        )?;
        let metrics_bind =
            lanyard_core::config::optional_addr("metrics_bind", self.metrics_bind.as_deref())?;
        let oidc = crate::config::oidc::validate(
            crate::config::oidc::RawOidc {
                issuer: self.jwt_issuer,
                bind: self.oidc_bind,
                cert: self.oidc_cert,
                key: self.oidc_key,
                plain_http: self.oidc_plain_http,
            },
            &trust_domain,
        )?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(".lanyard/server"));
        Ok(Config {
            console,
            approval,
            credential_ca_file: self.credential_ca_file,
            credential_key_file: self
                .credential_key_file
                .unwrap_or_else(|| data_dir.join("credential.key")),
            metrics_bind,
            oidc,
            psat_clusters,
            audit,
            quarantine,
            ca_keys_in_datastore: self.ca_keys_in_datastore.unwrap_or(false),
            datastore,
            sensitivity_levels,
            trust_domain,
            data_dir,
            bind,
            admin_socket: self
                .admin_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            join_token_ttl,
            log_format,
            net,
        })
    }
}

/// Limits on the server port: a flood from one peer must not stop service
/// for the others. Every one is configurable (a load tool simulating
/// thousands of agents from one address raises them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    /// Most open connections in total.
    pub max_connections: usize,
    /// Most open connections and handshakes from one peer address.
    pub max_connections_per_peer: usize,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections are closed at this age (the agent reconnects with its
    /// current SVID; a connection never outlives certificate checks by
    /// long).
    pub max_connection_age: Duration,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_connections_per_peer: 256,
            max_handshakes: 128,
            handshake_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(3600),
        }
    }
}

/// Where the server keeps its state.
#[derive(Debug, Clone)]
pub enum Datastore {
    /// sled in `<data_dir>/db`: one server.
    Sled,
    /// A PostgreSQL database shared by every server.
    Postgres(crate::store::PgOptions),
}

impl PartialEq for Datastore {
    fn eq(&self, other: &Self) -> bool {
        matches!((self, other), (Self::Sled, Self::Sled))
            || matches!((self, other), (Self::Postgres(a), Self::Postgres(b)) if a.url == b.url)
    }
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where state is kept.
    pub datastore: Datastore,
    /// With PostgreSQL: private keys in the database rather than the data
    /// dir.
    pub ca_keys_in_datastore: bool,
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Database and key directory.
    pub data_dir: PathBuf,
    /// Server API address (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// CA lifetime.
    pub ca_ttl: Duration,
    /// Default X.509-SVID lifetime.
    pub default_x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub default_jwt_svid_ttl: Duration,
    /// Agent SVID lifetime.
    pub agent_svid_ttl: Duration,
    /// Default join token lifetime.
    pub join_token_ttl: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Limits on the server port.
    pub net: NetLimits,
    /// Ordered data sensitivity levels for tasks.
    pub sensitivity_levels: SensitivityLevels,
    /// When denied tool calls quarantine a task's holder.
    pub quarantine: crate::enforce::DenialTrigger,
    /// Audit log checkpoints, segments and retention.
    pub audit: crate::audit::AuditSettings,
    /// Clusters whose agents attest with `k8s_psat`.
    pub psat_clusters: Vec<crate::node_attest::PsatCluster>,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// The JWT issuer and the discovery endpoint.
    pub oidc: crate::config::oidc::OidcSettings,
    /// The key file sealing credential providers' secrets.
    pub credential_key_file: PathBuf,
    /// CA certificates for authorization servers (else the system's).
    pub credential_ca_file: Option<PathBuf>,
    /// Who may approve held calls, and how long requests wait.
    pub approval: crate::config::approvers::ApprovalSettings,
    /// The operator console, when served.
    pub console: Option<crate::config::console::ConsoleSettings>,
}

impl Config {
    /// A configuration for tests and embedding: everything under `dir`,
    /// server API on an ephemeral loopback port.
    pub fn for_dir(trust_domain: &str, dir: &Path) -> Result<Config, ConfigError> {
        RawConfig {
            trust_domain: Some(trust_domain.to_owned()),
            data_dir: Some(dir.join("data")),
            bind: Some("127.0.0.1:0".into()),
            admin_socket: Some(dir.join("admin.sock")),
            ..RawConfig::default()
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = RawConfig {
            trust_domain: Some("example.org".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(c.bind.to_string(), DEFAULT_BIND);
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(300));
        let file: RawConfig = toml::from_str("trust_domain = \"a.org\"\nca_ttl = \"4h\"").unwrap();
        let flags = RawConfig {
            trust_domain: Some("b.org".into()),
            ..Default::default()
        };
        let c = file.merge(flags).unwrap().validate().unwrap();
        assert_eq!(c.trust_domain.name(), "b.org");
        assert_eq!(c.ca_ttl, Duration::from_secs(4 * 3600));
    }

    #[test]
    fn datastore_is_sled_or_a_postgres_url() {
        let base = || RawConfig {
            trust_domain: Some("td".into()),
            ..Default::default()
        };
        assert_eq!(base().validate().unwrap().datastore, Datastore::Sled);
        let c = RawConfig {
            datastore: Some("postgres://lanyard@db:5432/lanyard".into()),
            ..base()
        }
        .validate()
        .unwrap();
        assert!(matches!(c.datastore, Datastore::Postgres(o) if o.url.ends_with("/lanyard")));
        for bad in ["mysql://x", "sqlite:foo"] {
            let e = RawConfig {
                datastore: Some(bad.into()),
                ..base()
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().starts_with("datastore:"), "{e}");
        }
        let e = RawConfig {
            datastore_ca: Some("/x.pem".into()),
            ..base()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("postgres"), "{e}");
    }

    #[test]
    fn refuses_bad_values_with_reasons() {
        assert!(toml::from_str::<RawConfig>("bogus = 1").is_err());
        let e = RawConfig::default().validate().unwrap_err();
        assert!(e.to_string().contains("trust_domain"), "{e}");
        let e = RawConfig {
            trust_domain: Some("td".into()),
            ca_ttl: Some("10m".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("6x the largest SVID TTL"), "{e}");
        let e = RawConfig {
            trust_domain: Some("td".into()),
            bind: Some("nope".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("bind:"), "{e}");
    }
}
