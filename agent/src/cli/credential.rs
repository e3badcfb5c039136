//! `lanyard-agent credential get`: a credential from a provider for the
//! caller's task, for scripts. The calling process must hold the task, or
//! descend from the process that does (a script run by `task run`).

use clap::Subcommand;
use lanyard_proto::broker::credential_broker_client::CredentialBrokerClient;
use lanyard_proto::broker::{CredentialType, GetCredentialRequest, GetCredentialResponse};
use lanyard_uds::unix_channel;
use serde_json::json;

use super::out::outln;
use super::{CliError, Output, SocketArgs, err, status_err, with_header};

/// `credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Print a credential from provider NAME for this process's task
    /// (text: the credential alone on stdout, its expiry on stderr).
    Get {
        /// The credential provider.
        name: String,
        /// A scope wanted (repeatable) [default: all the provider allows].
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Where the credential will be used (policy's `context.target`).
        #[arg(long, default_value = "")]
        audience: String,
        /// Which task, when the caller holds several [default:
        /// LANYARD_TASK_ID, else the only one].
        #[arg(long, env = "LANYARD_TASK_ID", default_value = "")]
        task_id: String,
        #[command(flatten)]
        socket: SocketArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// A credential's type as printed.
pub(super) fn type_name(t: i32) -> &'static str {
    match CredentialType::try_from(t) {
        Ok(CredentialType::Bearer) => "bearer",
        Ok(CredentialType::TxnToken) => "txn_token",
        Ok(CredentialType::Secret) => "secret",
        _ => "unspecified",
    }
}

/// Asks the agent at `socket` for a credential.
pub(super) async fn fetch(
    socket: &std::path::Path,
    req: GetCredentialRequest,
) -> Result<GetCredentialResponse, CliError> {
    if !socket.exists() {
        return Err(err(format!(
            "Workload API socket {} does not exist; is lanyard-agent running? (use --socket or SPIFFE_ENDPOINT_SOCKET)",
            socket.display()
        )));
    }
    let name = req.name.clone();
    CredentialBrokerClient::new(unix_channel(socket).map_err(err)?)
        .get_credential(with_header(req))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| err(format!("credential {name}: {}", status_err(s))))
}

/// Runs a `credential` subcommand.
pub(super) async fn run_credential(cmd: CredentialCmd) -> Result<(), CliError> {
    let CredentialCmd::Get {
        name,
        scopes,
        audience,
        task_id,
        socket,
        output,
    } = cmd;
    let c = fetch(
        &socket.path(),
        GetCredentialRequest {
            name,
            scopes,
            audience,
            task_id,
            task_credential: None,
        },
    )
    .await?;
    let expires = lanyard_core::clock::format_rfc3339(lanyard_core::clock::from_unix_secs(
        u64::try_from(c.expires_at).unwrap_or(0),
    ));
    match output {
        Output::Json => outln!(
            "{}",
            json!({
                "credential": c.credential,
                "type": type_name(c.r#type),
                "expires_at": expires,
                "lease_id": c.lease_id,
                "scopes": c.scopes,
                "task_id": c.task_id,
            })
        ),
        Output::Text => {
            outln!("{}", c.credential);
            eprintln!(
                "{} credential for task {}, expires at {expires} (lease {})",
                type_name(c.r#type),
                c.task_id,
                c.lease_id
            );
        }
    }
    Ok(())
}
