//! `lanyard-agent task run`: begin a task for this process and exec a
//! command in it. The command keeps the PID and start time, so it holds the
//! task: its Workload API calls (through `SPIFFE_ENDPOINT_SOCKET`) get the
//! task SVID first, and the task ends when it exits.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use lanyard_core::duration::parse_duration;
use lanyard_proto::task::BeginTaskRequest;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::workload::X509svidResponse;
use lanyard_uds::unix_channel;

use super::{CliError, SocketArgs, err, outln, status_err, with_header, write_files};
use crate::storage::write_atomic;

/// `task` subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Begin a task and exec COMMAND inside it (COMMAND holds the task).
    Run(TaskRunArgs),
}

/// Flags of `task run`.
#[derive(Debug, Args)]
pub struct TaskRunArgs {
    /// Task type, e.g. report.generate.
    #[arg(long = "type")]
    pub task_type: String,
    /// Tool the task needs (repeatable).
    #[arg(long = "tool")]
    pub tools: Vec<String>,
    /// Task lifetime.
    #[arg(long, default_value = "5m")]
    pub ttl: String,
    /// Data sensitivity level [default: the lowest configured].
    #[arg(long)]
    pub sensitivity: Option<String>,
    /// Principal the task acts for, e.g. user:alice@example.com.
    #[arg(long)]
    pub on_behalf_of: Option<String>,
    /// What the task is for.
    #[arg(long, default_value = "")]
    pub intent: String,
    /// Destination the task reaches (repeatable).
    #[arg(long = "destination")]
    pub destinations: Vec<String>,
    /// Also obtain a task JWT-SVID for this audience (repeatable).
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Which of this process's identities [default: its first].
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Hand the command a credential from provider NAME in the environment
    /// variable VAR (repeatable; NAME=VAR). It lives no longer than the
    /// task; like --write, it needs a runner the entry names.
    #[arg(long = "credential", value_name = "NAME=VAR")]
    pub credentials: Vec<String>,
    /// Begin with the permitted tools when some are denied.
    #[arg(long)]
    pub allow_partial: bool,
    /// Write svid.0.pem, svid.0.key and bundle.0.pem (and jwt.0 with
    /// --audience) into this directory before exec, for programs that read
    /// certificate files. They expire with the task.
    #[arg(long)]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Parses `--credential NAME=VAR`.
fn credential_flag(flag: &str) -> Result<(String, String), CliError> {
    let (name, var) = flag
        .split_once('=')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .ok_or_else(|| err(format!("--credential {flag:?}: expected NAME=VAR")))?;
    let var_ok = var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !var.as_bytes()[0].is_ascii_digit();
    if !var_ok {
        return Err(err(format!(
            "--credential {flag:?}: {var:?} is not an environment variable name"
        )));
    }
    Ok((name.to_owned(), var.to_owned()))
}

/// Runs a `task` subcommand.
pub(super) async fn run_task(cmd: TaskCmd) -> Result<(), CliError> {
    let TaskCmd::Run(a) = cmd;
    let ttl = parse_duration(&a.ttl).map_err(|e| err(format!("--ttl: {e}")))?;
    let wanted = a
        .credentials
        .iter()
        .map(|c| credential_flag(c))
        .collect::<Result<Vec<_>, _>>()?;
    let socket = a.socket.path();
    if !socket.exists() {
        return Err(err(format!(
            "Workload API socket {} does not exist; is lanyard-agent running? (use --socket or SPIFFE_ENDPOINT_SOCKET)",
            socket.display()
        )));
    }
    let mut client = TaskIdentityClient::new(unix_channel(&socket).map_err(err)?);
    let resp = client
        .begin_task(with_header(BeginTaskRequest {
            spiffe_id: a.spiffe_id.unwrap_or_default(),
            task_type: a.task_type,
            intent: a.intent,
            tools: a.tools,
            destinations: a.destinations,
            data_sensitivity: a.sensitivity.unwrap_or_default(),
            ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            on_behalf_of: a.on_behalf_of.unwrap_or_default(),
            jwt_audiences: a.audiences,
            allow_partial: a.allow_partial,
            parent_task_id: String::new(),
            delegation_token: String::new(),
        }))
        .await
        .map_err(status_err)?
        .into_inner();
    eprintln!(
        "task {} begun: tools [{}], expires at {}",
        resp.task_id,
        resp.granted_tools.join(", "),
        lanyard_core::clock::format_rfc3339(lanyard_core::clock::from_unix_secs(
            u64::try_from(resp.expires_at).unwrap_or(0)
        ))
    );
    for d in &resp.denied {
        eprintln!("tool {} denied: {}", d.tool, d.reason);
    }
    if let Some(dir) = &a.write {
        let svid = resp
            .x509_svid
            .clone()
            .ok_or_else(|| {
                err("the agent returned no task SVID: this process does not match the entry in full (unix:path or unix:sha256); --write needs a runner the entry names")
            })?;
        write_files(
            dir,
            &X509svidResponse {
                svids: vec![svid],
                ..Default::default()
            },
        )?;
        if let Some(jwt) = &resp.jwt_svid {
            let p = dir.join("jwt.0");
            write_atomic(&p, jwt.svid.as_bytes(), 0o600)
                .map_err(|e| err(format!("{}: {e}", p.display())))?;
            outln!("Wrote {}", p.display());
        }
    }
    let mut env = Vec::with_capacity(wanted.len());
    for (name, var) in wanted {
        let c = super::credential::fetch(
            &socket,
            lanyard_proto::broker::GetCredentialRequest {
                name: name.clone(),
                task_id: resp.task_id.clone(),
                ..Default::default()
            },
        )
        .await?;
        eprintln!(
            "credential {name} in ${var} ({}, lease {})",
            super::credential::type_name(c.r#type),
            c.lease_id
        );
        env.push((var, c.credential));
    }
    let socket = std::path::absolute(&socket).unwrap_or(socket);
    let Some((program, args)) = a.command.split_first() else {
        return Err(err("a command to run is required after --"));
    };
    // exec keeps this process (PID and start time), so the command holds
    // the task; it finds the agent through SPIFFE_ENDPOINT_SOCKET.
    let e = std::process::Command::new(program)
        .args(args)
        .envs(env)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket.display()),
        )
        .env("LANYARD_TASK_ID", &resp.task_id)
        .exec();
    Err(err(format!("cannot run {program}: {e}")))
}
