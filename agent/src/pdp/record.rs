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
    /// Takes one record, durably, before the decision is answered; an
    /// error means it could not be kept (the decision point then denies).
    /// Must not block for long: it runs on every call.
    fn record(&self, d: &DecisionRecord) -> Result<(), String>;

    /// Takes the record of a call's outcome (`tool.call`), durably; no
    /// default, so a wrapping sink cannot drop it unawares.
    fn record_call(
        &self,
        d: &DecisionRecord,
        o: &super::Outcome,
        now: SystemTime,
    ) -> Result<(), String>;
}

/// Writes each record to the durable audit queue (shipped to the
/// server's audit log), and as a `tracing` event.
pub struct QueueSink(pub crate::audit_queue::AuditQueue);

impl DecisionSink for QueueSink {
    fn record(&self, d: &DecisionRecord) -> Result<(), String> {
        TracingSink.record(d)?;
        self.0
            .append(audit_event(d))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn record_call(
        &self,
        d: &DecisionRecord,
        o: &super::Outcome,
        now: SystemTime,
    ) -> Result<(), String> {
        TracingSink.record_call(d, o, now)?;
        self.0
            .append(super::outcome::call_event(d, o, now))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The audit record of a decision.
pub fn audit_event(d: &DecisionRecord) -> lanyard_core::audit::Event {
    use lanyard_core::audit::{Event, Kind};
    let mut e = Event::new(
        Kind::ToolDecision,
        lanyard_core::clock::format_rfc3339_millis(d.time),
    )
    .actor(d.enforcement_point.clone())
    .subject(d.principal.clone())
    .task(d.task_id.clone())
    .reason(d.reason.clone())
    .details(serde_json::json!({"credential": d.credential}));
    e.tool = d.tool.clone();
    e.resource = d.resource.clone();
    e.decision = if d.allow { "allow" } else { "deny" }.to_owned();
    e.policy_ids = d.policy_ids.clone();
    e.correlation.decision_id = d.decision_id.clone();
    e
}

/// Writes each record as one `tracing` event (target `lanyard::decision`).
#[derive(Debug, Default)]
pub struct TracingSink;

impl DecisionSink for TracingSink {
    fn record(&self, d: &DecisionRecord) -> Result<(), String> {
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
        Ok(())
    }

    fn record_call(
        &self,
        d: &DecisionRecord,
        o: &super::Outcome,
        now: SystemTime,
    ) -> Result<(), String> {
        let e = super::outcome::call_event(d, o, now);
        tracing::info!(target: "lanyard::decision", decision_id = %d.decision_id, details = %e.details, "tool call outcome");
        Ok(())
    }
}
