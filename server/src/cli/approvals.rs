//! `approval list|show|approve|deny`: calls held for a person's approval.

use clap::Subcommand;
use lanyard_proto::admin::{
    AnswerApprovalRequest, ApprovalRequest, ConsoleLoginRequest, ListApprovalsRequest,
};
use lanyard_proto::types;

use super::out::time_text;
use super::*;

/// `approval` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApprovalCmd {
    /// Calls waiting for approval (with --all: answered, used and lapsed
    /// ones of the last hour too).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// One request in full: the task, its intent, the tool and arguments.
    Show {
        /// Approval ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve a held call: the same call (same task, tool, resource and
    /// arguments) is then allowed once.
    Approve {
        /// Approval ID.
        id: String,
        /// The declared approver answering (an `[[approver]]` name of the
        /// server's configuration).
        #[arg(long = "as", value_name = "NAME")]
        approver: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deny a held call.
    Deny {
        /// Approval ID.
        id: String,
        /// The declared approver answering.
        #[arg(long = "as", value_name = "NAME")]
        approver: String,
        /// Why (the caller is told).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `console` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConsoleCmd {
    /// A one-time link that signs in to the operator console (valid for
    /// five minutes, used once; the session lasts console_session_ttl).
    Login {
        /// Answer approvals as this declared approver (otherwise the
        /// session may look and release quarantines, not approve).
        #[arg(long = "as", value_name = "NAME")]
        approver: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) async fn run_console(cmd: ConsoleCmd) -> Result<(), CliError> {
    let ConsoleCmd::Login { approver, admin } = cmd;
    let r = client(&admin)
        .await?
        .console_login(ConsoleLoginRequest {
            approver: approver.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    match admin.output {
        Output::Json => outln!(
            "{}",
            json!({"url": r.url, "expires_in_seconds": r.expires_in_seconds})
        ),
        Output::Text => outln!("{}", r.url),
    }
    Ok(())
}

fn approval_json(a: &types::Approval) -> serde_json::Value {
    json!({
        "id": a.id, "state": a.state, "task_id": a.task_id, "principal": a.principal,
        "on_behalf_of": a.on_behalf_of, "task_type": a.task_type, "intent": a.intent,
        "action": a.action, "tool": a.tool, "resource": a.resource,
        "arguments_json": a.arguments_json, "arguments_sha256": a.arguments_sha256,
        "policy_ids": a.policy_ids, "approvers": a.approvers, "eligible": a.eligible,
        "created_at": a.created_at, "expires_at": a.expires_at,
        "answered_by": a.answered_by, "answered_at": a.answered_at, "reason": a.reason,
        "used_at": a.used_at, "enforcement_point": a.enforcement_point, "node": a.node,
    })
}

/// Text an agent wrote, shown on a terminal: control characters escaped so
/// that nothing it wrote can move the cursor or recolour the screen.
fn inert(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

fn approval_text(a: &types::Approval) -> String {
    let mut s = format!(
        "Approval ID   : {}\nState         : {}\nTool          : {}{}\nArguments     : {}\nTask          : {} ({})\nIntent        : {}\nPrincipal     : {}\nOn behalf of  : {}\nPolicies      : {}\nApprovers     : {} (eligible: {})\nCreated       : {}\nExpires       : {}\n",
        a.id,
        a.state,
        inert(&a.tool),
        if a.resource.is_empty() {
            String::new()
        } else {
            format!(" on {}", inert(&a.resource))
        },
        if a.arguments_json.is_empty() {
            "{}".to_owned()
        } else {
            inert(&a.arguments_json)
        },
        a.task_id,
        inert(&a.task_type),
        inert(&a.intent),
        a.principal,
        if a.on_behalf_of.is_empty() {
            "-".to_owned()
        } else {
            inert(&a.on_behalf_of)
        },
        a.policy_ids.join(", "),
        a.approvers.join(" and "),
        a.eligible.join(", "),
        time_text(a.created_at),
        time_text(a.expires_at),
    );
    if a.answered_at > 0 {
        s.push_str(&format!(
            "Answered      : {} by {}\n",
            time_text(a.answered_at),
            a.answered_by
        ));
    }
    if !a.reason.is_empty() {
        s.push_str(&format!("Reason        : {}\n", inert(&a.reason)));
    }
    if a.used_at > 0 {
        s.push_str(&format!("Used          : {}\n", time_text(a.used_at)));
    }
    s
}

fn print_approval(output: Output, a: &types::Approval) {
    match output {
        Output::Json => outln!("{}", approval_json(a)),
        Output::Text => out!("{}", approval_text(a)),
    }
}

pub(super) async fn run_approval(cmd: ApprovalCmd) -> Result<(), CliError> {
    match cmd {
        ApprovalCmd::List { all, admin } => {
            let r = client(&admin)
                .await?
                .list_approvals(ListApprovalsRequest { all })
                .await
                .map_err(status_err)?
                .into_inner();
            super::out::print_list(
                admin.output,
                "approvals",
                &r.approvals,
                if all {
                    "no approval requests"
                } else {
                    "no calls waiting for approval"
                },
                approval_json,
                approval_text,
            );
        }
        ApprovalCmd::Show { id, admin } => {
            let a = client(&admin)
                .await?
                .get_approval(ApprovalRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_approval(admin.output, &a);
        }
        ApprovalCmd::Approve {
            id,
            approver,
            reason,
            admin,
        } => answer(id, true, approver, reason, &admin).await?,
        ApprovalCmd::Deny {
            id,
            approver,
            reason,
            admin,
        } => answer(id, false, approver, reason, &admin).await?,
    }
    Ok(())
}

async fn answer(
    id: String,
    approve: bool,
    approver: String,
    reason: Option<String>,
    admin: &AdminArgs,
) -> Result<(), CliError> {
    let a = client(admin)
        .await?
        .answer_approval(AnswerApprovalRequest {
            id,
            approve,
            approver,
            reason: reason.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    match admin.output {
        Output::Json => outln!("{}", approval_json(&a)),
        Output::Text => outln!(
            "{} {} ({} on task {})",
            a.state,
            a.id,
            inert(&a.tool),
            a.task_id
        ),
    }
    Ok(())
}
