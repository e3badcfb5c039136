//! One structured record per decision, handed to one interface: today a
//! `tracing` event; the audit log takes the same records.

use std::time::{Duration, SystemTime};

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
    /// Held for a person's approval (`allow` is false).
    pub pending: bool,
    /// The approval request, when the call needed one.
    pub approval_id: String,
}

impl DecisionRecord {
    /// `allow`, `deny` or `pending`.
    pub fn decision(&self) -> &'static str {
        if self.allow {
            "allow"
        } else if self.pending {
            "pending"
        } else {
            "deny"
        }
    }
}

/// Where decision records go.
pub trait DecisionSink: Send + Sync {
    /// Takes one record, durably, before the decision is answered; an
    /// error means it could not be kept (the decision point then denies).
    /// Must not block for long: it runs on every call.
    fn record(&self, d: &DecisionRecord) -> Result<(), String>;

    /// Takes the record of a call's outcome (`tool.call`), durably; no
    /// default, so a wrapping sink cannot drop it unawares.
    fn record_call(&self, d: &DecisionRecord, o: &Outcome, now: SystemTime) -> Result<(), String>;
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

    fn record_call(&self, d: &DecisionRecord, o: &Outcome, now: SystemTime) -> Result<(), String> {
        TracingSink.record_call(d, o, now)?;
        self.0
            .append(call_event(d, o, now))
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
    .details(if d.approval_id.is_empty() {
        serde_json::json!({"credential": d.credential})
    } else {
        serde_json::json!({"credential": d.credential, "approval_id": d.approval_id})
    });
    e.tool = d.tool.clone();
    e.resource = d.resource.clone();
    e.decision = d.decision().to_owned();
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
            decision = d.decision(),
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

    fn record_call(&self, d: &DecisionRecord, o: &Outcome, now: SystemTime) -> Result<(), String> {
        let e = call_event(d, o, now);
        tracing::info!(target: "lanyard::decision", decision_id = %d.decision_id, details = %e.details, "tool call outcome");
        Ok(())
    }
}

/// Longest method and error texts kept.
const MAX_METHOD: usize = 256;
const MAX_ERROR: usize = 1024;

/// The outcome an enforcement point reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Where the call went (the gateway's upstream).
    pub upstream: String,
    /// What was called (`tools/call`, `GET /contacts/42`).
    pub method: String,
    /// The upstream's HTTP status, 0 when it was not reached.
    pub status: u32,
    /// Bytes of the request body, and of the answer.
    pub bytes_in: u64,
    /// Bytes of the answer.
    pub bytes_out: u64,
    /// Arrival to the end of the answer.
    pub latency: Duration,
    /// Why it failed, if it did.
    pub error: String,
}

impl Outcome {
    /// Checks the lengths the record keeps.
    pub fn check(&self) -> Result<(), String> {
        if self.method.len() > MAX_METHOD || self.upstream.len() > MAX_METHOD {
            return Err(format!("method and upstream: at most {MAX_METHOD} bytes"));
        }
        if self.error.len() > MAX_ERROR {
            return Err(format!("error: at most {MAX_ERROR} bytes"));
        }
        Ok(())
    }
}

/// The `tool.call` audit record: the decision and its outcome.
pub fn call_event(d: &DecisionRecord, o: &Outcome, now: SystemTime) -> lanyard_core::audit::Event {
    use lanyard_core::audit::Kind;
    let mut e = audit_event(d);
    e.kind = Kind::ToolCall;
    e.time = lanyard_core::clock::format_rfc3339_millis(now);
    e.details = serde_json::json!({
        "credential": d.credential,
        "upstream": o.upstream,
        "method": o.method,
        "status": o.status,
        "bytes_in": o.bytes_in,
        "bytes_out": o.bytes_out,
        "latency_us": u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX),
        "error": o.error,
        "decided_at": lanyard_core::clock::format_rfc3339_millis(d.time),
    });
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_carries_the_decision_and_the_outcome() {
        let now = SystemTime::now();
        let o = Outcome {
            upstream: "crm".into(),
            method: "tools/call".into(),
            status: 200,
            bytes_in: 10,
            bytes_out: 20,
            latency: Duration::from_micros(1500),
            error: String::new(),
        };
        let e = call_event(&crate::pdp::outcome::tests::rec("d1", "ep", now), &o, now);
        assert_eq!(e.kind.as_str(), "tool.call");
        assert_eq!(e.decision, "allow");
        assert_eq!(e.correlation.decision_id, "d1");
        assert_eq!(e.details["status"], 200);
        assert_eq!(e.details["latency_us"], 1500);
        assert_eq!(e.details["upstream"], "crm");
    }
}
