//! `lanyard-server` command line: `run` and the admin subcommands, which
//! talk to a running server over its admin socket.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lanyard_core::duration::{format_duration, parse_duration};
use lanyard_core::x509::der_to_pem;
use lanyard_core::{Selector, SpiffeId};
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{
    AgentRequest, AuthorityRequest, CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest,
    GetBundleRequest, GetEntryRequest, ListAgentsRequest, ListAuthoritiesRequest,
    ListAuthoritiesResponse, ListEntriesRequest, UpdateEntryRequest,
};
use lanyard_proto::types;
use lanyard_uds::unix_channel;
use serde_json::json;
use tonic::transport::Channel;

use crate::config::{DEFAULT_ADMIN_SOCKET, RawConfig};

/// Lanyard server: CA, registration entries and node attestation.
#[derive(Debug, Parser)]
#[command(name = "lanyard-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Run(Box<RunArgs>),
    /// Join tokens for node attestation.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Registration entries.
    #[command(subcommand)]
    Entry(EntryCmd),
    /// Attested agents.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// The trust bundle.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Signing authorities (X.509 CA and JWT keys) and their rotation.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Cedar policies that decide tasks.
    #[command(subcommand)]
    Policy(tasks::PolicyCmd),
    /// Task-scoped identities.
    #[command(subcommand)]
    Task(tasks::TaskCmd),
    /// Revoke SVIDs.
    #[command(subcommand)]
    Svid(enforce::SvidCmd),
    /// Quarantined workloads.
    #[command(subcommand)]
    Quarantine(enforce::QuarantineCmd),
    /// Tool calls held for a person's approval (`@approval` policies).
    #[command(subcommand)]
    Approval(approvals::ApprovalCmd),
    /// The operator console (served with --console-bind).
    #[command(subcommand)]
    Console(approvals::ConsoleCmd),
    /// The tamper-evident audit log: tail, export, key, verify.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Credential providers: what tasks may be handed besides their SVIDs
    /// (exchanged OAuth tokens, held secrets, transaction tokens).
    #[command(subcommand)]
    Credential(credentials::CredentialCmd),
    /// Exit 0 when the server answers on its admin socket with an active
    /// CA (for liveness and readiness probes).
    Healthcheck {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Back up, restore or migrate a stopped server's datastore.
    #[command(subcommand)]
    Datastore(datastore::DatastoreCmd),
}

/// `ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// List the authorities with their state.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Prepare the next X.509 CA and JWT key (published, not signing yet).
    Prepare {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Activate the prepared authorities.
    Activate {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Taint an inactive authority: agents re-issue every SVID it signed.
    Taint {
        /// Authority ID from `ca show`.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a tainted authority from the trust bundle.
    Revoke {
        /// Authority ID from `ca show`.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Flags of `run`; each overrides the config file and has a `LANYARD_*` variable.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long, env = "LANYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Trust domain, e.g. example.org.
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Directory for the database and CA keys [default: .lanyard/server].
    #[arg(long, env = "LANYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Server API address [default: 127.0.0.1:8081].
    #[arg(long, env = "LANYARD_BIND")]
    pub bind: Option<String>,
    /// Admin API socket [default: /run/lanyard/server/admin.sock].
    #[arg(long, env = "LANYARD_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics [default: off].
    #[arg(long, env = "LANYARD_METRICS_BIND")]
    pub metrics_bind: Option<String>,
    /// `iss` of every JWT-SVID, the OpenID Connect issuer URL
    /// [default: https://<trust domain>].
    #[arg(long, env = "LANYARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Serve OpenID Connect discovery (`/.well-known/openid-configuration`
    /// and `/keys`) on ADDR [default: off]; HTTPS with --oidc-cert and
    /// --oidc-key, or plain HTTP with --oidc-plain-http.
    #[arg(long, env = "LANYARD_OIDC_BIND")]
    pub oidc_bind: Option<String>,
    /// PEM certificate chain of the discovery endpoint.
    #[arg(long, env = "LANYARD_OIDC_CERT")]
    pub oidc_cert: Option<PathBuf>,
    /// PEM private key of --oidc-cert.
    #[arg(long, env = "LANYARD_OIDC_KEY")]
    pub oidc_key: Option<PathBuf>,
    /// Serve discovery over plain HTTP (behind a TLS-terminating proxy).
    #[arg(long, env = "LANYARD_OIDC_PLAIN_HTTP")]
    pub oidc_plain_http: bool,
    /// Serve the operator console on ADDR [default: off]: HTTPS with
    /// --console-cert and --console-key, or plain HTTP on a loopback
    /// address. Sign in with `lanyard-server console login`.
    #[arg(long, env = "LANYARD_CONSOLE_BIND")]
    pub console_bind: Option<String>,
    /// PEM certificate chain of the console.
    #[arg(long, env = "LANYARD_CONSOLE_CERT")]
    pub console_cert: Option<PathBuf>,
    /// PEM private key of --console-cert.
    #[arg(long, env = "LANYARD_CONSOLE_KEY")]
    pub console_key: Option<PathBuf>,
    /// The key file sealing credential providers' secrets [default:
    /// <data dir>/credential.key]; every server of one database needs the
    /// same file.
    #[arg(long, env = "LANYARD_CREDENTIAL_KEY_FILE")]
    pub credential_key_file: Option<PathBuf>,
    /// PEM file of the CA certificates trusted for authorization servers'
    /// token and revocation endpoints [default: the system's roots].
    #[arg(long, env = "LANYARD_CREDENTIAL_CA_FILE")]
    pub credential_ca_file: Option<PathBuf>,
    /// CA lifetime [default: 24h].
    #[arg(long, env = "LANYARD_CA_TTL")]
    pub ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime [default: 5m].
    #[arg(long, env = "LANYARD_DEFAULT_X509_SVID_TTL")]
    pub default_x509_svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime [default: 5m].
    #[arg(long, env = "LANYARD_DEFAULT_JWT_SVID_TTL")]
    pub default_jwt_svid_ttl: Option<String>,
    /// Agent SVID lifetime [default: 30m].
    #[arg(long, env = "LANYARD_AGENT_SVID_TTL")]
    pub agent_svid_ttl: Option<String>,
    /// Log format: plain or json [default: plain].
    #[arg(long, env = "LANYARD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Most open connections on the server port [default: 16384].
    #[arg(long, env = "LANYARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one peer address [default: 256].
    #[arg(long, env = "LANYARD_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
    /// Where state lives: `sled` (embedded, one server) or a
    /// `postgres://user:password@host:port/database` URL shared by several
    /// servers [default: sled].
    #[arg(long, env = "LANYARD_DATASTORE")]
    pub datastore: Option<String>,
    /// PEM file of the CA certificates that sign the PostgreSQL server's
    /// certificate (for `sslmode=require`).
    #[arg(long, env = "LANYARD_DATASTORE_CA")]
    pub datastore_ca: Option<PathBuf>,
}

impl RunArgs {
    /// The merged raw configuration: file first, then flags and environment.
    pub fn raw_config(&self) -> Result<RawConfig, crate::config::ConfigError> {
        let file = match &self.config {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        file.merge(RawConfig {
            trust_domain: self.trust_domain.clone(),
            data_dir: self.data_dir.clone(),
            bind: self.bind.clone(),
            admin_socket: self.admin_socket.clone(),
            metrics_bind: self.metrics_bind.clone(),
            jwt_issuer: self.jwt_issuer.clone(),
            oidc_bind: self.oidc_bind.clone(),
            oidc_cert: self.oidc_cert.clone(),
            oidc_key: self.oidc_key.clone(),
            oidc_plain_http: self.oidc_plain_http.then_some(true),
            console_bind: self.console_bind.clone(),
            console_cert: self.console_cert.clone(),
            console_key: self.console_key.clone(),
            credential_ca_file: self.credential_ca_file.clone(),
            credential_key_file: self.credential_key_file.clone(),
            ca_ttl: self.ca_ttl.clone(),
            default_x509_svid_ttl: self.default_x509_svid_ttl.clone(),
            default_jwt_svid_ttl: self.default_jwt_svid_ttl.clone(),
            agent_svid_ttl: self.agent_svid_ttl.clone(),
            join_token_ttl: None,
            log_format: self.log_format.clone(),
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            datastore: self.datastore.clone(),
            datastore_ca: self.datastore_ca.clone(),
            ..Default::default()
        })
    }
}

/// Flags every admin command takes.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// The server's admin socket.
    #[arg(long, env = "LANYARD_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// Machine-readable JSON.
    Json,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a single-use join token and print it.
    Generate {
        /// SPIFFE ID the agent will have [default: spiffe://TD/lanyard/agent/join_token/ID].
        #[arg(long)]
        agent_id: Option<String>,
        /// Token lifetime, e.g. 10m [default: server's join_token_ttl].
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Fields of an entry shared by `create` and `update`.
#[derive(Debug, Args, Clone)]
pub struct EntryFields {
    /// Workload SPIFFE ID.
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Agent SPIFFE ID allowed to obtain this identity.
    #[arg(long)]
    pub parent_id: Option<String>,
    /// Selector (repeatable), e.g. unix:uid:1000.
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime, e.g. 60s.
    #[arg(long)]
    pub x509_ttl: Option<String>,
    /// JWT-SVID lifetime, e.g. 60s.
    #[arg(long)]
    pub jwt_ttl: Option<String>,
    /// DNS SAN (repeatable).
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Hint passed to workloads.
    #[arg(long)]
    pub hint: Option<String>,
    /// Issue no SVID outside a task (`--require-task=false` turns it off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub require_task: Option<bool>,
    /// Mark the entry's workloads as enforcement points (tool servers,
    /// gateways): they may ask their node agent AuthorizeToolCall
    /// (`--enforcement-point=false` turns it off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub enforcement_point: Option<bool>,
    /// Tool a task may be granted (repeatable).
    #[arg(long = "allow-tool")]
    pub allow_tools: Vec<String>,
    /// Task type the workload may begin (repeatable).
    #[arg(long = "allow-task-type")]
    pub allow_task_types: Vec<String>,
    /// Credential provider a task may be handed credentials from
    /// (repeatable; `*` for any; none by default).
    #[arg(long = "allow-credential")]
    pub allow_credentials: Vec<String>,
    /// Longest task window, e.g. 10m (`create` without it: 1h; `update`
    /// without it keeps the stored one).
    #[arg(long)]
    pub max_task_ttl: Option<String>,
    /// Highest data sensitivity a task may be granted, e.g. confidential.
    #[arg(long)]
    pub max_sensitivity: Option<String>,
}

/// `entry` subcommands.
#[derive(Debug, Subcommand)]
pub enum EntryCmd {
    /// Create an entry.
    Create {
        #[command(flatten)]
        fields: EntryFields,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List entries.
    List {
        /// Only entries with this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only entries with this parent ID.
        #[arg(long)]
        parent_id: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one entry.
    Show {
        /// Entry ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change an entry: the given fields replace the stored ones.
    Update {
        /// Entry ID.
        id: String,
        #[command(flatten)]
        fields: EntryFields,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete an entry.
    Delete {
        /// Entry ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `agent` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// List attested agents.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an agent; it must attest again with a new token.
    Evict {
        /// Agent SPIFFE ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ban an agent: refused now and cannot re-attest under this ID.
    Ban {
        /// Agent SPIFFE ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Bundle formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BundleFormat {
    /// PEM certificates (for `lanyard-agent --trust-bundle`).
    Pem,
    /// The SPIFFE bundle format: a JWKS with X.509 and JWT authorities.
    Jwks,
    /// The CRLs (one per live CA, signed by it) as PEM, for openssl,
    /// nginx or Envoy.
    Crl,
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Print the trust bundle.
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

mod approvals;
mod audit;
mod common;
mod credentials;
pub mod datastore;
mod enforce;
mod entry;
mod ops;
mod out;
mod tasks;

use out::{out, outln};

pub use common::CliError;
use common::{check_id, client, err, optional_id, status_err, ttl_secs};
use entry::run_entry;
use ops::{run_agent, run_ca};

/// Runs an admin subcommand.
pub async fn run_admin(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Run(_) | Command::Datastore(_) => Err(err("handled by main")),
        Command::Token(TokenCmd::Generate {
            agent_id,
            ttl,
            admin,
        }) => {
            let agent_id = optional_id("agent-id", agent_id.as_deref())?;
            let ttl_seconds = ttl_secs("ttl", &ttl)?.unwrap_or(0);
            let r = client(&admin)
                .await?
                .create_join_token(CreateJoinTokenRequest {
                    agent_id,
                    ttl_seconds,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({"token": r.token, "agent_id": r.agent_id, "expires_at": r.expires_at})
                ),
                Output::Text => outln!("{}", r.token),
            }
            Ok(())
        }
        Command::Healthcheck { admin } => {
            let r = client(&admin)
                .await?
                .list_authorities(ListAuthoritiesRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if !r.authorities.iter().any(|a| a.state == "active") {
                return Err(err("no active CA"));
            }
            outln!("SERVING");
            Ok(())
        }
        Command::Entry(cmd) => run_entry(cmd).await,
        Command::Ca(cmd) => run_ca(cmd).await,
        Command::Agent(cmd) => run_agent(cmd).await,
        Command::Policy(cmd) => tasks::run_policy(cmd).await,
        Command::Task(cmd) => tasks::run_task(cmd).await,
        Command::Svid(cmd) => enforce::run_svid(cmd).await,
        Command::Quarantine(cmd) => enforce::run_quarantine(cmd).await,
        Command::Approval(cmd) => approvals::run_approval(cmd).await,
        Command::Console(cmd) => approvals::run_console(cmd).await,
        Command::Audit(cmd) => audit::run_audit(cmd).await,
        Command::Credential(cmd) => credentials::run_credential(cmd).await,
        Command::Bundle(BundleCmd::Show {
            format: BundleFormat::Crl,
            admin,
        }) => {
            let r = client(&admin)
                .await?
                .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => outln!(
                    "{}",
                    json!({
                        "crls": r.crls.iter().map(|c| der_to_pem("X509 CRL", std::slice::from_ref(c))).collect::<Vec<_>>(),
                        "revocations": r.revocations.iter().map(enforce::revocation_json).collect::<Vec<_>>(),
                    })
                ),
                Output::Text => out!("{}", der_to_pem("X509 CRL", &r.crls)),
            }
            Ok(())
        }
        Command::Bundle(BundleCmd::Show { format, admin }) => {
            let b = client(&admin)
                .await?
                .get_bundle(GetBundleRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match (admin.output, format) {
                (_, BundleFormat::Jwks) => {
                    let jwt: Vec<lanyard_core::jwt::JwtAuthority> =
                        b.jwt_authorities.iter().cloned().map(Into::into).collect();
                    let wit: Vec<lanyard_core::jwt::JwtAuthority> =
                        b.wit_authorities.iter().cloned().map(Into::into).collect();
                    let doc = lanyard_core::jwt::spiffe_bundle_json_with_wit(
                        &b.x509_authorities,
                        &jwt,
                        &wit,
                        b.sequence,
                        u64::try_from(b.refresh_hint_seconds).unwrap_or(0),
                    )
                    .map_err(err)?;
                    outln!("{doc}");
                }
                (Output::Json, BundleFormat::Pem) => outln!(
                    "{}",
                    json!({
                        "trust_domain": b.trust_domain,
                        "sequence": b.sequence,
                        "x509_authorities": b.x509_authorities.iter().map(|c| der_to_pem("CERTIFICATE", std::slice::from_ref(c))).collect::<Vec<_>>(),
                    })
                ),
                (Output::Text, BundleFormat::Pem) => {
                    out!("{}", der_to_pem("CERTIFICATE", &b.x509_authorities));
                }
                // Printed by the arm above.
                (_, BundleFormat::Crl) => {}
            }
            Ok(())
        }
    }
}
