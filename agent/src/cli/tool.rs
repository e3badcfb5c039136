//! `tool check`: one tool-call decision, asked of the node agent the way an
//! enforcement point (a tool server, a gateway) asks it, for scripts and
//! for trying policies. Exit status: 0 allowed, 1 denied, 2 no decision.

use std::path::PathBuf;

use clap::Subcommand;
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallRequest, AuthorizeToolCallResponse, X509Chain};
use lanyard_uds::unix_channel;
use serde_json::json;

use super::out::outln;
use super::{CliError, Output, SocketArgs, err, with_header};

/// `tool` subcommands.
#[derive(Debug, Subcommand)]
pub enum ToolCmd {
    /// Decide one tool call for a workload's credential, as an enforcement
    /// point does (AuthorizeToolCall); prints the decision, its reason and
    /// the deciding policies. Exit status: 0 allowed, 1 denied, 2 no
    /// decision (an error). The caller must be an enforcement point: an
    /// entry with --enforcement-point that its selectors match.
    Check {
        #[command(flatten)]
        socket: SocketArgs,
        /// The tool called, e.g. crm.read.
        #[arg(long)]
        tool: String,
        /// What the call acts on, e.g. account/42.
        #[arg(long, default_value = "")]
        resource: String,
        /// The call's arguments, a JSON object (policies read it as
        /// `context.call`).
        #[arg(long)]
        context: Option<String>,
        /// The calling workload's X.509-SVID: a PEM file, leaf first (as
        /// `api fetch x509 --write` writes it).
        #[arg(long, required_unless_present = "jwt", conflicts_with = "jwt")]
        svid: Option<PathBuf>,
        /// The calling workload's JWT-SVID (`@FILE` reads it from a file).
        #[arg(long)]
        jwt: Option<String>,
        /// The audience a JWT-SVID must carry [default: this enforcement
        /// point's SPIFFE ID].
        #[arg(long)]
        audience: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Runs a `tool` subcommand.
pub(super) async fn run_tool(cmd: ToolCmd) -> Result<(), CliError> {
    let ToolCmd::Check {
        socket,
        tool,
        resource,
        context,
        svid,
        jwt,
        audience,
        output,
    } = cmd;
    let two = |e: CliError| e.with_exit(2);
    let credential = match (svid, jwt) {
        (Some(path), _) => {
            let pem = std::fs::read(&path)
                .map_err(|e| err(format!("--svid {}: {e}", path.display())).with_exit(2))?;
            let certs = lanyard_core::x509::pem_to_der_certs(&pem)
                .map_err(|e| err(format!("--svid {}: {e}", path.display())).with_exit(2))?;
            if certs.is_empty() {
                return Err(err(format!(
                    "--svid {}: no certificate in the file",
                    path.display()
                ))
                .with_exit(2));
            }
            Credential::X509Chain(X509Chain { certs })
        }
        (None, Some(token)) => {
            let token = match token.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| err(format!("--jwt @{file}: {e}")).with_exit(2))?,
                None => token,
            };
            Credential::JwtSvid(token.trim().to_owned())
        }
        (None, None) => return Err(err("pass --svid FILE or --jwt TOKEN").with_exit(2)),
    };
    if let Some(c) = &context
        && !serde_json::from_str::<serde_json::Value>(c).is_ok_and(|v| v.is_object())
    {
        return Err(
            err("--context must be a JSON object, e.g. '{\"to\": \"bob@example.com\"}'")
                .with_exit(2),
        );
    }
    let path = socket.path();
    if !path.exists() {
        return Err(err(format!(
            "Workload API socket {} does not exist; is lanyard-agent running? (use --socket or SPIFFE_ENDPOINT_SOCKET)",
            path.display()
        ))
        .with_exit(2));
    }
    let channel = unix_channel(&path).map_err(|e| two(err(e)))?;
    let r = TaskIdentityClient::new(channel)
        .authorize_tool_call(with_header(AuthorizeToolCallRequest {
            credential: Some(credential),
            tool,
            resource,
            context_json: context.unwrap_or_default(),
            audience: audience.unwrap_or_default(),
            ..Default::default()
        }))
        .await
        .map_err(|s| two(refusal(&s)))?
        .into_inner();
    print_decision(output, &r);
    if r.allow {
        Ok(())
    } else {
        Err(CliError::denied())
    }
}

/// Why the agent gave no decision, in words.
fn refusal(s: &tonic::Status) -> CliError {
    if s.code() == tonic::Code::PermissionDenied && s.message().contains("enforcement point") {
        return err(
            "this process is not an enforcement point, so the agent does not decide tool calls for it: register an entry with --enforcement-point that it matches, e.g. `lanyard-server entry create --spiffe-id spiffe://TD/tool/cli --parent-id AGENT_ID --selector unix:uid:$(id -u) --enforcement-point`",
        );
    }
    err(format!("{:?}: {}", s.code(), s.message()))
}

fn print_decision(output: Output, r: &AuthorizeToolCallResponse) {
    match output {
        Output::Json => outln!(
            "{}",
            json!({
                "allow": r.allow, "reason": r.reason, "policy_ids": r.policy_ids,
                "decision_id": r.decision_id, "task_id": r.task_id, "principal": r.principal,
            })
        ),
        Output::Text => {
            outln!(
                "{} {}{}",
                if r.allow { "ALLOW" } else { "DENY " },
                r.reason,
                if r.policy_ids.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", r.policy_ids.join(", "))
                }
            );
            outln!(
                "(principal {}, task {}, decision {})",
                r.principal,
                if r.task_id.is_empty() {
                    "none"
                } else {
                    &r.task_id
                },
                r.decision_id
            );
        }
    }
}
