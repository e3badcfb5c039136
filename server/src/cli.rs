//! `lanyard-server` command line: `run` and the admin subcommands, which
//! talk to a running server over its admin socket.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lanyard_core::duration::{format_duration, parse_duration};
use lanyard_core::{Selector, SpiffeId};
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{
    AgentRequest, AuthorityRequest, CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest,
    GetBundleRequest, GetEntryRequest, ListAgentsRequest, ListAuthoritiesRequest,
    ListAuthoritiesResponse, ListEntriesRequest, UpdateEntryRequest,
};
use lanyard_proto::types;
use lanyard_proto::uds::unix_channel;
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
    Run(RunArgs),
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
    /// Admin API socket [default: /tmp/lanyard/private/admin.sock].
    #[arg(long, env = "LANYARD_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
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
}

impl RunArgs {
    /// The merged raw configuration: file first, then flags and environment.
    pub fn raw_config(&self) -> Result<RawConfig, crate::config::ConfigError> {
        let file = match &self.config {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        Ok(file.merge(RawConfig {
            trust_domain: self.trust_domain.clone(),
            data_dir: self.data_dir.clone(),
            bind: self.bind.clone(),
            admin_socket: self.admin_socket.clone(),
            ca_ttl: self.ca_ttl.clone(),
            default_x509_svid_ttl: self.default_x509_svid_ttl.clone(),
            default_jwt_svid_ttl: self.default_jwt_svid_ttl.clone(),
            agent_svid_ttl: self.agent_svid_ttl.clone(),
            join_token_ttl: None,
            log_format: self.log_format.clone(),
        }))
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
    /// Issue no SVID outside a task.
    #[arg(long)]
    pub require_task: bool,
    /// Tool a task may be granted (repeatable).
    #[arg(long = "allow-tool")]
    pub allow_tools: Vec<String>,
    /// Task type the workload may begin (repeatable).
    #[arg(long = "allow-task-type")]
    pub allow_task_types: Vec<String>,
    /// Longest task window, e.g. 10m.
    #[arg(long)]
    pub max_task_ttl: Option<String>,
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

/// A one-line error for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn err(msg: impl ToString) -> CliError {
    CliError(msg.to_string())
}

fn status_err(s: tonic::Status) -> CliError {
    if s.code() == tonic::Code::Unavailable {
        return err(format!(
            "cannot reach the server's admin socket ({}); is lanyard-server running?",
            s.message()
        ));
    }
    err(s.message())
}

async fn client(admin: &AdminArgs) -> Result<AdminClient<Channel>, CliError> {
    if !admin.admin_socket.exists() {
        return Err(err(format!(
            "admin socket {} does not exist; is lanyard-server running? (use --admin-socket)",
            admin.admin_socket.display()
        )));
    }
    let ch = unix_channel(&admin.admin_socket).map_err(err)?;
    Ok(AdminClient::new(ch))
}

fn check_id(field: &str, s: &str) -> Result<String, CliError> {
    SpiffeId::new(s)
        .map(|id| id.to_string())
        .map_err(|e| err(format!("--{field} {s:?}: {e}")))
}

fn ttl_secs(field: &str, v: &Option<String>) -> Result<Option<i64>, CliError> {
    v.as_deref()
        .map(|s| {
            parse_duration(s)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .map_err(|e| err(format!("--{field}: {e}")))
        })
        .transpose()
}

impl EntryFields {
    /// Applies the given fields onto `e`.
    fn apply(&self, e: &mut types::Entry) -> Result<(), CliError> {
        if let Some(s) = &self.spiffe_id {
            e.spiffe_id = check_id("spiffe-id", s)?;
        }
        if let Some(s) = &self.parent_id {
            e.parent_id = check_id("parent-id", s)?;
        }
        if !self.selectors.is_empty() {
            for s in &self.selectors {
                s.parse::<Selector>()
                    .map_err(|x| err(format!("--selector {s:?}: {x}")))?;
            }
            e.selectors = self.selectors.clone();
        }
        if let Some(t) = ttl_secs("x509-ttl", &self.x509_ttl)? {
            e.x509_ttl_seconds = t;
        }
        if let Some(t) = ttl_secs("jwt-ttl", &self.jwt_ttl)? {
            e.jwt_ttl_seconds = t;
        }
        if !self.dns_names.is_empty() {
            e.dns_names = self.dns_names.clone();
        }
        if let Some(h) = &self.hint {
            e.hint = h.clone();
        }
        if self.require_task {
            e.require_task = true;
        }
        let limits = e.task_limits.get_or_insert_with(Default::default);
        if !self.allow_tools.is_empty() {
            limits.allowed_tools = self.allow_tools.clone();
        }
        if !self.allow_task_types.is_empty() {
            limits.allowed_task_types = self.allow_task_types.clone();
        }
        if let Some(t) = ttl_secs("max-task-ttl", &self.max_task_ttl)? {
            limits.max_task_ttl_seconds = t;
        }
        Ok(())
    }
}

fn entry_json(e: &types::Entry) -> serde_json::Value {
    let limits = e.task_limits.clone().unwrap_or_default();
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "x509_ttl_seconds": e.x509_ttl_seconds,
        "jwt_ttl_seconds": e.jwt_ttl_seconds,
        "dns_names": e.dns_names,
        "hint": e.hint,
        "require_task": e.require_task,
        "allowed_tools": limits.allowed_tools,
        "allowed_task_types": limits.allowed_task_types,
        "max_task_ttl_seconds": limits.max_task_ttl_seconds,
        "revision": e.revision,
        "created_at": e.created_at,
    })
}

fn ttl_text(secs: i64) -> String {
    if secs == 0 {
        "server default".into()
    } else {
        format_duration(std::time::Duration::from_secs(secs.unsigned_abs()))
    }
}

fn entry_text(e: &types::Entry) -> String {
    let mut s = format!(
        "Entry ID      : {}\nSPIFFE ID     : {}\nParent ID     : {}\nRevision      : {}\nX509-SVID TTL : {}\nJWT-SVID TTL  : {}\n",
        e.id,
        e.spiffe_id,
        e.parent_id,
        e.revision,
        ttl_text(e.x509_ttl_seconds),
        ttl_text(e.jwt_ttl_seconds)
    );
    for sel in &e.selectors {
        s.push_str(&format!("Selector      : {sel}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name      : {d}\n"));
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint          : {}\n", e.hint));
    }
    if e.require_task {
        s.push_str("Require task  : true\n");
    }
    if let Some(l) = &e.task_limits {
        for t in &l.allowed_tools {
            s.push_str(&format!("Allowed tool  : {t}\n"));
        }
    }
    s
}

fn print_entries(out: Output, entries: &[types::Entry]) {
    match out {
        Output::Json => println!(
            "{}",
            json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>() })
        ),
        Output::Text => {
            if entries.is_empty() {
                println!("No entries");
            }
            let blocks: Vec<String> = entries.iter().map(entry_text).collect();
            print!("{}", blocks.join("\n"));
        }
    }
}

fn print_entry(out: Output, e: &types::Entry) {
    match out {
        Output::Json => println!("{}", entry_json(e)),
        Output::Text => print!("{}", entry_text(e)),
    }
}

fn agent_json(a: &lanyard_proto::admin::Agent) -> serde_json::Value {
    json!({
        "spiffe_id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "serial": a.serial,
        "expires_at": a.expires_at,
        "banned": a.banned,
        "attested_at": a.attested_at,
    })
}

/// Runs an admin subcommand.
pub async fn run_admin(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Run(_) => Err(err("run is handled by main")),
        Command::Token(TokenCmd::Generate {
            agent_id,
            ttl,
            admin,
        }) => {
            let agent_id = agent_id
                .as_deref()
                .map(|s| check_id("agent-id", s))
                .transpose()?
                .unwrap_or_default();
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
                Output::Json => println!(
                    "{}",
                    json!({"token": r.token, "agent_id": r.agent_id, "expires_at": r.expires_at})
                ),
                Output::Text => println!("{}", r.token),
            }
            Ok(())
        }
        Command::Entry(cmd) => run_entry(cmd).await,
        Command::Ca(cmd) => run_ca(cmd).await,
        Command::Agent(cmd) => run_agent(cmd).await,
        Command::Bundle(BundleCmd::Show { format, admin }) => {
            let b = client(&admin)
                .await?
                .get_bundle(GetBundleRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match (admin.output, format) {
                (_, BundleFormat::Jwks) => {
                    let jwt: Vec<lanyard_core::jwt::JwtAuthority> = b
                        .jwt_authorities
                        .iter()
                        .map(|a| lanyard_core::jwt::JwtAuthority {
                            key_id: a.key_id.clone(),
                            public_key: a.public_key.clone(),
                            expires_at: u64::try_from(a.expires_at).unwrap_or(0),
                        })
                        .collect();
                    let doc = lanyard_core::jwt::spiffe_bundle_json(
                        &b.x509_authorities,
                        &jwt,
                        b.sequence,
                        u64::try_from(b.refresh_hint_seconds).unwrap_or(0),
                    )
                    .map_err(err)?;
                    println!("{doc}");
                }
                (Output::Json, BundleFormat::Pem) => println!(
                    "{}",
                    json!({
                        "trust_domain": b.trust_domain,
                        "sequence": b.sequence,
                        "x509_authorities": b.x509_authorities.iter().map(|c| pem_cert(c)).collect::<Vec<_>>(),
                    })
                ),
                (Output::Text, BundleFormat::Pem) => {
                    for c in &b.x509_authorities {
                        print!("{}", pem_cert(c));
                    }
                }
            }
            Ok(())
        }
    }
}

/// PEM-encodes one DER certificate.
pub fn pem_cert(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

async fn run_entry(cmd: EntryCmd) -> Result<(), CliError> {
    match cmd {
        EntryCmd::Create { fields, admin } => {
            let mut e = types::Entry::default();
            fields.apply(&mut e)?;
            if e.spiffe_id.is_empty() {
                return Err(err("--spiffe-id is required"));
            }
            if e.parent_id.is_empty() {
                return Err(err("--parent-id is required"));
            }
            if e.selectors.is_empty() {
                return Err(err(
                    "at least one --selector is required (e.g. unix:uid:1000)",
                ));
            }
            let e = client(&admin)
                .await?
                .create_entry(CreateEntryRequest { entry: Some(e) })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entry(admin.output, &e);
        }
        EntryCmd::List {
            spiffe_id,
            parent_id,
            admin,
        } => {
            let spiffe_id = spiffe_id
                .map(|s| check_id("spiffe-id", &s))
                .transpose()?
                .unwrap_or_default();
            let parent_id = parent_id
                .map(|s| check_id("parent-id", &s))
                .transpose()?
                .unwrap_or_default();
            let r = client(&admin)
                .await?
                .list_entries(ListEntriesRequest {
                    spiffe_id,
                    parent_id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entries(admin.output, &r.entries);
        }
        EntryCmd::Show { id, admin } => {
            let e = client(&admin)
                .await?
                .get_entry(GetEntryRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entry(admin.output, &e);
        }
        EntryCmd::Update { id, fields, admin } => {
            let mut c = client(&admin).await?;
            let mut e = c
                .get_entry(GetEntryRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            fields.apply(&mut e)?;
            let e = c
                .update_entry(UpdateEntryRequest { entry: Some(e) })
                .await
                .map_err(status_err)?
                .into_inner();
            print_entry(admin.output, &e);
        }
        EntryCmd::Delete { id, admin } => {
            let r = client(&admin)
                .await?
                .delete_entry(DeleteEntryRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            let e = r.entry.unwrap_or_default();
            match admin.output {
                Output::Json => println!("{}", json!({"deleted": entry_json(&e)})),
                Output::Text => println!("Deleted entry {}", e.id),
            }
        }
    }
    Ok(())
}

async fn run_agent(cmd: AgentCmd) -> Result<(), CliError> {
    match cmd {
        AgentCmd::List { admin } => {
            let r = client(&admin)
                .await?
                .list_agents(ListAgentsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => println!(
                    "{}",
                    json!({"agents": r.agents.iter().map(agent_json).collect::<Vec<_>>()})
                ),
                Output::Text => {
                    if r.agents.is_empty() {
                        println!("No agents");
                    }
                    for a in &r.agents {
                        println!(
                            "{}  attestation={} serial={} expires_at={}{}",
                            a.spiffe_id,
                            a.attestation_type,
                            a.serial,
                            a.expires_at,
                            if a.banned { " BANNED" } else { "" }
                        );
                    }
                }
            }
        }
        AgentCmd::Evict { id, admin } => {
            let id = check_id("id", &id)?;
            let a = client(&admin)
                .await?
                .evict_agent(AgentRequest { spiffe_id: id })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => println!("{}", json!({"evicted": agent_json(&a)})),
                Output::Text => println!("Evicted agent {}", a.spiffe_id),
            }
        }
        AgentCmd::Ban { id, admin } => {
            let id = check_id("id", &id)?;
            let a = client(&admin)
                .await?
                .ban_agent(AgentRequest { spiffe_id: id })
                .await
                .map_err(status_err)?
                .into_inner();
            match admin.output {
                Output::Json => println!("{}", json!({"banned": agent_json(&a)})),
                Output::Text => println!("Banned agent {}", a.spiffe_id),
            }
        }
    }
    Ok(())
}

fn print_authorities(out: Output, r: &ListAuthoritiesResponse) {
    use lanyard_core::clock::{format_rfc3339, from_unix_secs};
    let t = |s: i64| format_rfc3339(from_unix_secs(u64::try_from(s).unwrap_or(0)));
    match out {
        Output::Json => println!(
            "{}",
            json!({"authorities": r.authorities.iter().map(|a| json!({
                "id": a.id, "kind": a.kind, "state": a.state, "tainted": a.tainted,
                "not_before": a.not_before, "not_after": a.not_after,
            })).collect::<Vec<_>>()})
        ),
        Output::Text => {
            for a in &r.authorities {
                println!(
                    "{:<5} {:<9} {}{}  valid {} .. {}",
                    a.kind,
                    a.state,
                    a.id,
                    if a.tainted { " (tainted)" } else { "" },
                    t(a.not_before),
                    t(a.not_after)
                );
            }
        }
    }
}

async fn run_ca(cmd: CaCmd) -> Result<(), CliError> {
    let (admin, r) = match cmd {
        CaCmd::Show { admin } => {
            let r = client(&admin)
                .await?
                .list_authorities(ListAuthoritiesRequest {})
                .await;
            (admin, r)
        }
        CaCmd::Prepare { admin } => {
            let r = client(&admin)
                .await?
                .prepare_authorities(ListAuthoritiesRequest {})
                .await;
            (admin, r)
        }
        CaCmd::Activate { admin } => {
            let r = client(&admin)
                .await?
                .activate_authorities(ListAuthoritiesRequest {})
                .await;
            (admin, r)
        }
        CaCmd::Taint { id, admin } => {
            let r = client(&admin)
                .await?
                .taint_authority(AuthorityRequest { id })
                .await;
            (admin, r)
        }
        CaCmd::Revoke { id, admin } => {
            let r = client(&admin)
                .await?
                .revoke_authority(AuthorityRequest { id })
                .await;
            (admin, r)
        }
    };
    print_authorities(admin.output, &r.map_err(status_err)?.into_inner());
    Ok(())
}
