//! One structured record per decision, handed to one interface: today a
//! `tracing` event; the audit log takes the same records.

use std::time::SystemTime;

/// A tool-call decision, allow or deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// Random ID, returned to the enforcement point.
    pub decision_id: String,
    /// When it was decided.
    pub time: SystemTime,
    /// Allowed.
    pub allow: bool,
    /// Why (the deciding policies' reasons, or the failed check).
    pub reason: String,
    /// The deciding Cedar policies.
    pub policy_ids: Vec<String>,
    /// The credential's task, if it carries one.
    pub task_id: String,
    /// The credential holder's SPIFFE ID (empty when it did not validate).
    pub principal: String,
    /// The tool called.
    pub tool: String,
    /// What it was called on.
    pub resource: String,
    /// The enforcement point that asked.
    pub enforcement_point: String,
    /// `x509` or `jwt`.
    pub credential: &'static str,
}

/// Where decision records go.
pub trait DecisionSink: Send + Sync {
    /// Takes one record. Must not block for long: it runs on every call.
    fn record(&self, d: &DecisionRecord);
}

/// Writes each record as one `tracing` event (target `lanyard::decision`).
#[derive(Debug, Default)]
pub struct TracingSink;

impl DecisionSink for TracingSink {
    fn record(&self, d: &DecisionRecord) {
        tracing::info!(
            target: "lanyard::decision",
            decision_id = %d.decision_id,
            time = %lanyard_core::clock::format_rfc3339(d.time),
            decision = if d.allow { "allow" } else { "deny" },
            reason = %d.reason,
            policy_ids = ?d.policy_ids,
            task_id = %d.task_id,
            principal = %d.principal,
            tool = %d.tool,
            resource = %d.resource,
            enforcement_point = %d.enforcement_point,
            credential = d.credential,
            "tool call decision"
        );
    }
}
