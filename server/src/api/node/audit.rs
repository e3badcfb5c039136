//! The node API's side of the audit log: records for what agents cause
//! (issuance is on disk before a credential leaves), and `AppendAudit`,
//! through which agents ship the records of their own decisions.

use crate::tasks::TaskSvid;
use lanyard_core::SpiffeId;
use lanyard_core::audit::{Event, Kind};
use lanyard_core::task::TaskRecord;
use lanyard_proto::server::{AppendAuditRequest, AppendAuditResponse};
use tonic::Status;

use super::NodeApi;
use crate::audit::{Audit, AuditLogError};
use crate::tasks::BeginInput;

/// Most records in one `AppendAudit` call.
pub const MAX_SHIPPED: usize = 1000;
/// Largest record an agent may ship, bytes of JSON.
pub const MAX_SHIPPED_RECORD: usize = 16 * 1024;
/// The kinds an agent may ship: what happens on the node only.
const SHIPPED_KINDS: [Kind; 3] = [Kind::ToolDecision, Kind::CredentialServed, Kind::ToolCall];

/// The status for a call refused because its record could not be written.
pub(crate) fn unavailable(e: AuditLogError) -> Status {
    tracing::error!(%e, "audit log unavailable; refusing");
    Status::unavailable("audit log unavailable")
}

/// The record a refused task would get (filled in before the request is
/// handed over).
pub(crate) fn denied_task(audit: &Audit, agent: &SpiffeId, input: &BeginInput) -> Event {
    let spec = &input.spec;
    audit
        .event(Kind::TaskDenied)
        .actor(agent.to_string())
        .node(agent.to_string())
        .task(
            spec.parent_task_id
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
        )
        .details(serde_json::json!({
            "entry_id": input.entry_id,
            "task_type": spec.task_type,
            "tools": spec.tools,
            "data_sensitivity": spec.data_sensitivity,
            "ttl_seconds": spec.ttl.as_secs(),
            "on_behalf_of": spec.on_behalf_of.as_deref().unwrap_or_default(),
            "exe_sha256": input.caller.exe_sha256,
        }))
}

fn epoch_ok(e: &str) -> bool {
    (8..=64).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl NodeApi {
    /// Records `event` before the answer leaves; refuses the call if the
    /// record cannot be written.
    pub(crate) async fn audited(&self, event: Event) -> Result<(), Status> {
        self.audit
            .record(event)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Records a granted task (`begun`) and the task SVID signed for it.
    pub(crate) async fn audited_task(
        &self,
        agent: &SpiffeId,
        task: &TaskRecord,
        svid: Option<&TaskSvid>,
        begun: bool,
    ) -> Result<(), Status> {
        let g = &task.grant;
        let base = |kind| {
            let mut e = self
                .audit
                .event(kind)
                .actor(agent.to_string())
                .subject(g.spiffe_id.to_string())
                .node(agent.to_string())
                .task(g.task_id.to_string());
            e.task.chain = g.chain.iter().map(|a| a.task_id.to_string()).collect();
            e
        };
        let mut events = vec![];
        if begun {
            events.push(base(Kind::TaskBegun).details(serde_json::json!({
                "entry_id": task.entry_id.to_string(),
                "task_type": g.task_type,
                "tools": g.tools,
                "denied_tools": task.denied.iter().map(|(t, _)| t).collect::<Vec<_>>(),
                "data_sensitivity": g.data_sensitivity,
                "on_behalf_of": g.on_behalf_of,
                "not_after": g.not_after,
            })));
        }
        if let Some(svid) = svid {
            let serial = lanyard_core::x509::CertInfo::parse(&svid.cert_der)
                .map(|i| i.serial)
                .unwrap_or_default();
            events.push(
                base(Kind::SvidIssued)
                    .serial(serial)
                    .details(serde_json::json!({"entry_id": task.entry_id.to_string()})),
            );
        }
        self.audit
            .record_all(events)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// `AppendAudit`: records from `agent`'s durable queue.
    pub(crate) async fn append_audit_impl(
        &self,
        agent: &SpiffeId,
        req: AppendAuditRequest,
    ) -> Result<AppendAuditResponse, Status> {
        if !epoch_ok(&req.epoch) {
            return Err(Status::invalid_argument(
                "epoch must be 8 to 64 letters or digits",
            ));
        }
        if req.records.len() > MAX_SHIPPED {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_SHIPPED} records per call"
            )));
        }
        let mut records = Vec::with_capacity(req.records.len());
        for item in req.records {
            if item.seq == 0 || item.event_json.len() > MAX_SHIPPED_RECORD {
                return Err(Status::invalid_argument(format!(
                    "record {}: seq must be above 0 and the event at most {MAX_SHIPPED_RECORD} bytes",
                    item.seq
                )));
            }
            let event: Event = serde_json::from_str(&item.event_json).map_err(|e| {
                Status::invalid_argument(format!("record {}: not an audit event: {e}", item.seq))
            })?;
            if !SHIPPED_KINDS.contains(&event.kind) {
                return Err(Status::permission_denied(format!(
                    "record {}: agents may not ship {} records",
                    item.seq,
                    event.kind.as_str()
                )));
            }
            if event.origin.is_some() {
                return Err(Status::invalid_argument(format!(
                    "record {}: origin is set by the server",
                    item.seq
                )));
            }
            // Refused here, not in the writer: a record that cannot be
            // sealed (a fraction in its details) must not fail the group.
            lanyard_core::audit::seal("check", 1, &lanyard_core::audit::GENESIS, &event)
                .map_err(|e| Status::invalid_argument(format!("record {}: {e}", item.seq)))?;
            records.push((item.seq, event));
        }
        let acked_through = self
            .audit
            .append_shipped(agent.as_str(), &req.epoch, records)
            .await
            .map_err(unavailable)?;
        Ok(AppendAuditResponse { acked_through })
    }
}
