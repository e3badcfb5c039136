//! What the node API's files share about the audit log: the status of a
//! call refused because its record could not be written, and the record
//! of a refused task.

use lanyard_core::SpiffeId;
use lanyard_core::audit::{Event, Kind};
use tonic::Status;

use crate::audit::{Audit, AuditLogError};
use crate::tasks::BeginInput;

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
        .task(spec.parent_task_id.clone())
        .details(serde_json::json!({
            "entry_id": input.entry_id,
            "task_type": spec.task_type,
            "tools": spec.tools,
            "data_sensitivity": spec.data_sensitivity,
            "ttl_seconds": spec.ttl_seconds,
            "on_behalf_of": spec.on_behalf_of,
            "exe_sha256": input.caller.exe_sha256,
        }))
}
