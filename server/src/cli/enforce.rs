//! `svid revoke` and `quarantine add|list|show|release|confirm`.

use clap::Subcommand;
use lanyard_proto::admin::{
    AddQuarantineRequest, ListQuarantinesRequest, QuarantineRequest, RevokeSvidRequest,
};
use lanyard_proto::types;

use super::out::time_text;
use super::*;

/// `svid` subcommands.
#[derive(Debug, Subcommand)]
pub enum SvidCmd {
    /// Revoke an X.509-SVID by serial, or every SVID of a SPIFFE ID issued
    /// up to now. Peers refuse it within a second (CRLs, AuthorizeToolCall,
    /// ValidateJWTSVID).
    Revoke {
        /// Serial number in hex (as `openssl x509 -serial` prints it).
        #[arg(required_unless_present_any = ["spiffe_id", "jwt_id"], conflicts_with_all = ["spiffe_id", "jwt_id"])]
        serial: Option<String>,
        /// Revoke every SVID issued for this SPIFFE ID so far.
        #[arg(long, conflicts_with = "jwt_id")]
        spiffe_id: Option<String>,
        /// Revoke one JWT-SVID by its ID (the `jti` claim).
        #[arg(long)]
        jwt_id: Option<String>,
        /// Why (shown in denials).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `quarantine` subcommands.
#[derive(Debug, Subcommand)]
pub enum QuarantineCmd {
    /// Quarantine a workload: its tasks and SVIDs are revoked, its calls
    /// refused, until released.
    Add {
        /// The workload's SPIFFE ID (every instance, or those on --node).
        #[arg(long, required_unless_present = "task", conflicts_with = "task")]
        spiffe_id: Option<String>,
        /// Only the instances on this node (agent SPIFFE ID).
        #[arg(long, requires = "spiffe_id")]
        node: Option<String>,
        /// The process instance holding this task.
        #[arg(long)]
        task: Option<String>,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List quarantines in force (--all: released ones too).
    List {
        /// Include released quarantines.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one quarantine.
    Show {
        /// Quarantine ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Release a quarantine: the workload is served again with fresh SVIDs
    /// (what was revoked stays revoked). Releasing a pending one dismisses it.
    Release {
        /// Quarantine ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put a pending quarantine in force (an entry-wide quarantine reported
    /// by one node waits for this, or for a second node's report).
    Confirm {
        /// Quarantine ID.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) fn revocation_json(r: &types::Revocation) -> serde_json::Value {
    json!({
        "kind": r.kind, "value": r.value, "revoked_at": r.revoked_at,
        "expires_at": r.expires_at, "reason": r.reason, "issuer": r.issuer,
    })
}

fn quarantine_json(q: &types::Quarantine) -> serde_json::Value {
    json!({
        "id": q.id, "spiffe_id": q.spiffe_id, "node": q.node, "task_id": q.task_id,
        "scope": q.scope, "scope_text": scope_text(q), "reason": q.reason, "source": q.source,
        "reported_by": q.reported_by, "created_at": q.created_at,
        "released_at": q.released_at, "released_by": q.released_by,
        "pending": q.pending,
    })
}

/// What a quarantine's scope holds, in words.
fn scope_text(q: &types::Quarantine) -> String {
    match q.scope.as_str() {
        "entry" => "entry: every process with this SPIFFE ID, on every node".to_owned(),
        "instance" if q.task_id.is_empty() => format!(
            "instance: every process with this SPIFFE ID on {}",
            if q.node.is_empty() {
                "its node"
            } else {
                &q.node
            }
        ),
        "instance" => "instance: the task's holder and its workload on its node (its pod on \
             Kubernetes, else its systemd unit, else its uid): forks and restarts there are \
             refused this SPIFFE ID"
            .to_owned(),
        other => other.to_owned(),
    }
}

fn quarantine_text(q: &types::Quarantine) -> String {
    let mut s = format!(
        "Quarantine ID : {}\nSPIFFE ID     : {}\nScope         : {}\nReason        : {}\nSource        : {}\nReported by   : {}\nCreated       : {}\n",
        q.id,
        q.spiffe_id,
        scope_text(q),
        q.reason,
        q.source,
        q.reported_by,
        time_text(q.created_at)
    );
    if q.pending {
        s.push_str(
            "State         : pending (one node's report; `quarantine confirm` puts it in force)\n",
        );
    }
    if !q.node.is_empty() {
        s.push_str(&format!("Node          : {}\n", q.node));
    }
    if !q.task_id.is_empty() {
        s.push_str(&format!("Task          : {}\n", q.task_id));
    }
    if q.released_at > 0 {
        s.push_str(&format!(
            "Released      : {} by {}\n",
            time_text(q.released_at),
            q.released_by
        ));
    }
    s
}

fn print_quarantine(output: Output, q: &types::Quarantine) {
    match output {
        Output::Json => outln!("{}", quarantine_json(q)),
        Output::Text => out!("{}", quarantine_text(q)),
    }
}

pub(super) async fn run_svid(cmd: SvidCmd) -> Result<(), CliError> {
    let SvidCmd::Revoke {
        serial,
        spiffe_id,
        jwt_id,
        reason,
        admin,
    } = cmd;
    let spiffe_id = optional_id("spiffe-id", spiffe_id.as_deref())?;
    let r = client(&admin)
        .await?
        .revoke_svid(RevokeSvidRequest {
            serial: serial.unwrap_or_default(),
            spiffe_id,
            reason: reason.unwrap_or_default(),
            jwt_id: jwt_id.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let rev = r.revocation.unwrap_or_default();
    match admin.output {
        Output::Json => outln!("{}", revocation_json(&rev)),
        Output::Text => outln!("revoked {} {} ({})", rev.kind, rev.value, rev.reason),
    }
    Ok(())
}

pub(super) async fn run_quarantine(cmd: QuarantineCmd) -> Result<(), CliError> {
    match cmd {
        QuarantineCmd::Add {
            spiffe_id,
            node,
            task,
            reason,
            admin,
        } => {
            let q = client(&admin)
                .await?
                .add_quarantine(AddQuarantineRequest {
                    spiffe_id: optional_id("spiffe-id", spiffe_id.as_deref())?,
                    node: optional_id("node", node.as_deref())?,
                    task_id: task.unwrap_or_default(),
                    reason,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_quarantine(admin.output, &q);
        }
        QuarantineCmd::List { all, admin } => {
            let r = client(&admin)
                .await?
                .list_quarantines(ListQuarantinesRequest { all })
                .await
                .map_err(status_err)?
                .into_inner();
            super::out::print_list(
                admin.output,
                "quarantines",
                &r.quarantines,
                "no quarantines",
                quarantine_json,
                quarantine_text,
            );
        }
        QuarantineCmd::Show { id, admin } => {
            let q = client(&admin)
                .await?
                .get_quarantine(QuarantineRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_quarantine(admin.output, &q);
        }
        QuarantineCmd::Release { id, admin } => {
            let q = client(&admin)
                .await?
                .release_quarantine(QuarantineRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_quarantine(admin.output, &q);
        }
        QuarantineCmd::Confirm { id, admin } => {
            let q = client(&admin)
                .await?
                .confirm_quarantine(QuarantineRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_quarantine(admin.output, &q);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_says_what_a_quarantine_holds() {
        let mut q = types::Quarantine {
            scope: "instance".into(),
            task_id: "t1".into(),
            ..Default::default()
        };
        let text = quarantine_text(&q);
        assert!(
            text.contains("its pod on Kubernetes, else its systemd unit, else its uid"),
            "{text}"
        );
        q.task_id.clear();
        q.node = "spiffe://td/node".into();
        assert!(
            quarantine_text(&q).contains("every process with this SPIFFE ID on spiffe://td/node")
        );
        q.scope = "entry".into();
        assert!(quarantine_text(&q).contains("on every node"));
        assert_eq!(quarantine_json(&q)["scope"], "entry");
    }
}
