//! `lanyard-agent` command line: `run`, the Workload API client commands
//! (`api ...`), `task run`, `tool check` and `healthcheck`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lanyard_core::clock::format_rfc3339;
use lanyard_core::x509::{CertInfo, der_chain_split, der_to_pem};
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse,
};
use lanyard_uds::{socket_path, unix_channel};
use serde_json::json;
use tonic::transport::Channel;

use crate::api::SECURITY_HEADER;
use crate::config::{DEFAULT_SOCKET, RawConfig};
use crate::storage::write_atomic;

/// Lanyard node agent: workload attestation and the SPIFFE Workload API.
#[derive(Debug, Parser)]
#[command(name = "lanyard-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Talk to a running agent's Workload API, as a workload would.
    #[command(subcommand)]
    Api(ApiCmd),
    /// Task-scoped identities: begin a task and run a command inside it.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// Tool-call decisions, asked as an enforcement point asks them.
    #[command(subcommand)]
    Tool(tool::ToolCmd),
    /// Credentials from providers, for this process's task.
    #[command(subcommand)]
    Credential(credential::CredentialCmd),
    /// Exit 0 when the agent's Workload API answers its health check.
    Healthcheck {
        #[command(flatten)]
        socket: SocketArgs,
    },
}

/// Flags of `run`; each overrides the config file and has a `LANYARD_*` variable.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long, env = "LANYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Server address, host:port [default: 127.0.0.1:8081]. Repeat the
    /// flag (or separate with commas) to name several servers sharing one
    /// database: the agent fails over between them.
    #[arg(long, env = "LANYARD_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Trust domain, e.g. example.org.
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Join token from `lanyard-server token generate`: used on the first
    /// start, and again whenever a token not used before is given (after an
    /// eviction). Visible in the process list: prefer --join-token-file.
    #[arg(long, env = "LANYARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the join token (mode 0600; kept out of argv).
    #[arg(long, env = "LANYARD_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// PEM bundle from `lanyard-server bundle show`, to authenticate the server.
    #[arg(long, env = "LANYARD_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Trust the first server reached (development only).
    #[arg(long)]
    pub insecure_bootstrap: bool,
    /// Workload API socket [default: /run/lanyard/agent/api.sock].
    #[arg(long, env = "LANYARD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Data directory for the agent's own SVID [default: .lanyard/agent].
    #[arg(long, env = "LANYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics [default: off].
    #[arg(long, env = "LANYARD_METRICS_BIND")]
    pub metrics_bind: Option<String>,
    /// Log format: plain or json [default: plain].
    #[arg(long, env = "LANYARD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Most open Workload API connections [default: 8192].
    #[arg(long, env = "LANYARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open Workload API connections per caller (uid and cgroup) [default: 256].
    #[arg(long, env = "LANYARD_MAX_CONNECTIONS_PER_CALLER")]
    pub max_connections_per_caller: Option<usize>,
    /// Runtime worker threads [default: one per CPU the agent may use].
    #[arg(long, env = "LANYARD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// This node's name for the Kubernetes attestor (`[k8s] node_name`):
    /// set it from the pod's `spec.nodeName` in a DaemonSet.
    #[arg(long, env = "LANYARD_K8S_NODE_NAME")]
    pub k8s_node_name: Option<String>,
    /// Identify callers by start time only, not by pidfd (for kernels or
    /// sandboxes without SO_PEERPIDFD; chosen automatically when missing).
    #[arg(long)]
    pub no_pidfd: bool,
}

impl RunArgs {
    /// The merged raw configuration: file first, then flags and environment.
    pub fn raw_config(&self) -> Result<RawConfig, crate::config::ConfigError> {
        let file = match &self.config {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        let mut file = file;
        if let (Some(name), Some(k8s)) = (&self.k8s_node_name, file.k8s.as_mut()) {
            k8s.node_name = Some(name.clone());
        }
        file.merge(RawConfig {
            server: (!self.server.is_empty()).then(|| self.server.join(",")),
            trust_domain: self.trust_domain.clone(),
            join_token: self.join_token.clone(),
            join_token_file: self.join_token_file.clone(),
            trust_bundle: self.trust_bundle.clone(),
            insecure_bootstrap: self.insecure_bootstrap.then_some(true),
            socket: self.socket.clone(),
            data_dir: self.data_dir.clone(),
            metrics_bind: self.metrics_bind.clone(),
            log_format: self.log_format.clone(),
            use_pidfd: self.no_pidfd.then_some(false),
            max_connections: self.max_connections,
            max_connections_per_caller: self.max_connections_per_caller,
            worker_threads: self.worker_threads,
            ..Default::default()
        })
    }
}

/// Where the Workload API is.
#[derive(Debug, Args, Clone)]
pub struct SocketArgs {
    /// Workload API socket [default: $SPIFFE_ENDPOINT_SOCKET, else /run/lanyard/agent/api.sock].
    #[arg(long)]
    pub socket: Option<String>,
}

impl SocketArgs {
    /// The socket path: flag, then `SPIFFE_ENDPOINT_SOCKET`, then the default.
    pub fn path(&self) -> PathBuf {
        let addr = self
            .socket
            .clone()
            .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
            .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        socket_path(&addr)
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// Machine-readable JSON.
    Json,
}

/// `api` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApiCmd {
    /// Fetch SVIDs once.
    #[command(subcommand)]
    Fetch(FetchCmd),
    /// Validate a token as the Workload API does.
    #[command(subcommand)]
    Validate(ValidateCmd),
    /// Print every X.509-SVID update as it arrives.
    Watch {
        #[command(flatten)]
        socket: SocketArgs,
    },
}

/// `api fetch` subcommands.
#[derive(Debug, Subcommand)]
pub enum FetchCmd {
    /// Fetch the caller's X.509-SVIDs and bundle.
    X509 {
        #[command(flatten)]
        socket: SocketArgs,
        /// Write svid.N.pem, svid.N.key and bundle.N.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "10s")]
        timeout: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Fetch JWT-SVIDs for an audience.
    Jwt {
        #[command(flatten)]
        socket: SocketArgs,
        /// Audience (repeatable).
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Only this SPIFFE ID (must be one of the caller's).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `api validate` subcommands.
#[derive(Debug, Subcommand)]
pub enum ValidateCmd {
    /// Validate a JWT-SVID for an audience; prints its SPIFFE ID and claims.
    Jwt {
        #[command(flatten)]
        socket: SocketArgs,
        /// The audience the token must carry.
        #[arg(long)]
        audience: String,
        /// The token.
        #[arg(long)]
        svid: String,
    },
}

/// A one-line error for the user, and the exit status it ends with (1,
/// or 2 for the commands whose 1 means "denied").
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong; empty for a denial already printed.
    pub message: String,
    /// The exit status.
    pub exit: u8,
}

impl CliError {
    /// A decision command's answer "denied" (printed already): exit 1.
    pub fn denied() -> Self {
        Self {
            message: String::new(),
            exit: 1,
        }
    }

    /// The same error, ending with exit status `exit`.
    pub fn with_exit(mut self, exit: u8) -> Self {
        self.exit = exit;
        self
    }
}

pub(crate) fn err(m: impl ToString) -> CliError {
    CliError {
        message: m.to_string(),
        exit: 1,
    }
}

fn client(socket: &Path) -> Result<SpiffeWorkloadApiClient<Channel>, CliError> {
    if !socket.exists() {
        return Err(err(format!(
            "Workload API socket {} does not exist; is lanyard-agent running? (use --socket or SPIFFE_ENDPOINT_SOCKET)",
            socket.display()
        )));
    }
    Ok(SpiffeWorkloadApiClient::new(
        unix_channel(socket).map_err(err)?,
    ))
}

/// A request with the SPIFFE security header the Workload API requires.
pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

pub(crate) fn status_err(s: tonic::Status) -> CliError {
    err(format!("{:?}: {}", s.code(), s.message()))
}

async fn first_x509(socket: &Path, timeout: Duration) -> Result<X509svidResponse, CliError> {
    let mut c = client(socket)?;
    let fut = async {
        let mut stream = c
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .map_err(status_err)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(status_err)?
            .ok_or_else(|| err("the agent closed the stream without sending SVIDs"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| err(format!("no SVID received within {timeout:?}")))?
}

fn describe(resp: &X509svidResponse) -> Result<(String, serde_json::Value), CliError> {
    let mut text = String::new();
    let mut svids = Vec::new();
    for s in &resp.svids {
        let chain = der_chain_split(&s.x509_svid).map_err(err)?;
        let leaf =
            CertInfo::parse(chain.first().ok_or_else(|| err("empty SVID chain"))?).map_err(err)?;
        text.push_str(&format!(
            "SPIFFE ID:\t\t{}\nSVID Valid After:\t{}\nSVID Valid Until:\t{}\nSerial:\t\t\t{}\n",
            s.spiffe_id,
            format_rfc3339(leaf.not_before),
            format_rfc3339(leaf.not_after),
            leaf.serial
        ));
        if !s.hint.is_empty() {
            text.push_str(&format!("Hint:\t\t\t{}\n", s.hint));
        }
        let leaf_der = chain.first().ok_or_else(|| err("empty SVID chain"))?;
        let task = lanyard_core::TaskClaims::from_x509(leaf_der).map_err(err)?;
        if let Some(t) = &task {
            text.push_str(&format!(
                "Task ID:\t\t{}\nTask type:\t\t{}\nTask tools:\t\t{}\nData sensitivity:\t{}\n",
                t.task_id,
                t.task_type,
                t.tools.join(", "),
                t.data_sensitivity
            ));
            if let Some(o) = &t.on_behalf_of {
                text.push_str(&format!("On behalf of:\t\t{o}\n"));
            }
            if let Some(end) = t.not_after {
                text.push_str(&format!("Task ends:\t\t{}\n", format_rfc3339(end)));
            }
            if let Some(p) = &t.parent_task_id {
                text.push_str(&format!("Parent task:\t\t{p}\n"));
            }
        }
        let bundle = der_chain_split(&s.bundle).map_err(err)?;
        for (i, ca) in bundle.iter().enumerate() {
            let ca = CertInfo::parse(ca).map_err(err)?;
            text.push_str(&format!(
                "CA #{} Valid After:\t{}\nCA #{} Valid Until:\t{}\n",
                i + 1,
                format_rfc3339(ca.not_before),
                i + 1,
                format_rfc3339(ca.not_after)
            ));
        }
        text.push('\n');
        svids.push(json!({
            "spiffe_id": s.spiffe_id,
            "hint": s.hint,
            "serial": leaf.serial,
            "not_before": format_rfc3339(leaf.not_before),
            "not_after": format_rfc3339(leaf.not_after),
            "svid_pem": der_to_pem("CERTIFICATE", &chain),
            "task": task.as_ref().map(|t| json!({
                "task_id": t.task_id.as_str(),
                "task_type": t.task_type,
                "tools": t.tools,
                "data_sensitivity": t.data_sensitivity,
                "on_behalf_of": t.on_behalf_of,
                "not_after": t.not_after.map(format_rfc3339),
                "parent_task_id": t.parent_task_id.as_ref().map(|p| p.as_str()),
                "grant_sha256": hex::encode(t.grant_digest),
            })),
            "bundle_pem": der_to_pem("CERTIFICATE", &bundle),
        }));
    }
    Ok((text, json!({ "svids": svids })))
}

pub(crate) fn write_files(dir: &Path, resp: &X509svidResponse) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    for (i, s) in resp.svids.iter().enumerate() {
        let chain = der_chain_split(&s.x509_svid).map_err(err)?;
        let bundle = der_chain_split(&s.bundle).map_err(err)?;
        let files = [
            (
                format!("svid.{i}.pem"),
                der_to_pem("CERTIFICATE", &chain),
                0o644,
            ),
            (
                format!("svid.{i}.key"),
                der_to_pem("PRIVATE KEY", std::slice::from_ref(&s.x509_svid_key)),
                0o600,
            ),
            (
                format!("bundle.{i}.pem"),
                der_to_pem("CERTIFICATE", &bundle),
                0o644,
            ),
        ];
        for (name, content, mode) in files {
            let p = dir.join(&name);
            write_atomic(&p, content.as_bytes(), mode)
                .map_err(|e| err(format!("{}: {e}", p.display())))?;
            outln!("Wrote {}", p.display());
        }
    }
    Ok(())
}

mod credential;
mod out;
pub mod process;
mod task;
mod tool;

use out::{out, outln};

/// Runs a client subcommand.
pub async fn run_client(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Run(_) => Err(err("run is handled by main")),
        Command::Task(cmd) => task::run_task(cmd).await,
        Command::Tool(cmd) => tool::run_tool(cmd).await,
        Command::Credential(cmd) => credential::run_credential(cmd).await,
        Command::Healthcheck { socket } => {
            let path = socket.path();
            if !path.exists() {
                return Err(err(format!(
                    "agent socket {} does not exist",
                    path.display()
                )));
            }
            let mut c = tonic_health::pb::health_client::HealthClient::new(
                unix_channel(&path).map_err(err)?,
            );
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await
            .map_err(|_| err("health check timed out"))?
            .map_err(status_err)?
            .into_inner();
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if r.status != serving {
                return Err(err("agent is not serving"));
            }
            let audit = tokio::time::timeout(
                Duration::from_secs(5),
                c.check(tonic_health::pb::HealthCheckRequest {
                    service: crate::app::AUDIT_HEALTH_SERVICE.into(),
                }),
            )
            .await
            .map_err(|_| err("health check timed out"))?
            .map_err(status_err)?
            .into_inner();
            if audit.status != serving {
                return Err(err(
                    "audit queue full: tool-call decisions are denied until the server takes the queued records",
                ));
            }
            outln!("Agent is healthy.");
            Ok(())
        }
        Command::Api(ApiCmd::Fetch(FetchCmd::X509 {
            socket,
            write,
            timeout,
            output,
        })) => {
            let timeout = lanyard_core::duration::parse_duration(&timeout).map_err(err)?;
            let started = Instant::now();
            let resp = first_x509(&socket.path(), timeout).await?;
            let (text, js) = describe(&resp)?;
            match output {
                Output::Json => outln!("{js}"),
                Output::Text => {
                    outln!(
                        "Received {} svid after {:.3}ms\n",
                        resp.svids.len(),
                        started.elapsed().as_secs_f64() * 1000.0
                    );
                    out!("{text}");
                }
            }
            if let Some(dir) = write {
                write_files(&dir, &resp)?;
            }
            Ok(())
        }
        Command::Api(ApiCmd::Fetch(FetchCmd::Jwt {
            socket,
            audience,
            spiffe_id,
            output,
        })) => {
            let mut c = client(&socket.path())?;
            let resp = c
                .fetch_jwtsvid(with_header(JwtsvidRequest {
                    audience,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                }))
                .await
                .map_err(status_err)?
                .into_inner();
            match output {
                Output::Json => outln!(
                    "{}",
                    json!({"svids": resp.svids.iter().map(|s| json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint})).collect::<Vec<_>>()})
                ),
                Output::Text => {
                    for s in &resp.svids {
                        outln!("token({}):\n\t{}", s.spiffe_id, s.svid);
                    }
                }
            }
            Ok(())
        }
        Command::Api(ApiCmd::Validate(ValidateCmd::Jwt {
            socket,
            audience,
            svid,
        })) => {
            let mut c = client(&socket.path())?;
            let resp = c
                .validate_jwtsvid(with_header(ValidateJwtsvidRequest { audience, svid }))
                .await
                .map_err(status_err)?
                .into_inner();
            let claims = resp
                .claims
                .map(|s| lanyard_proto::convert::struct_to_json(&s))
                .unwrap_or_default();
            outln!(
                "SVID is valid.\nSPIFFE ID : {}\nClaims    : {}",
                resp.spiffe_id,
                claims
            );
            Ok(())
        }
        Command::Api(ApiCmd::Watch { socket }) => {
            let mut c = client(&socket.path())?;
            let mut stream = c
                .fetch_x509svid(with_header(X509svidRequest {}))
                .await
                .map_err(status_err)?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        outln!(
                            "Received {} svid(s) at {}",
                            resp.svids.len(),
                            format_rfc3339(std::time::SystemTime::now())
                        );
                        out!("{}", describe(&resp)?.0);
                    }
                    Ok(None) => return Err(err("the agent closed the stream")),
                    Err(s) => return Err(status_err(s)),
                }
            }
        }
    }
}
