//! What became of a call after its decision: an enforcement point in the
//! path (lanyard-gate) asks with `outcome_follows`, forwards the call, and
//! reports the upstream's status, the bytes each way and the latency. The
//! decision is kept here until then, so the one `tool.call` record carries
//! the decision as this agent made it (the reporter cannot change the
//! task, principal or verdict), and only once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::record::DecisionRecord;

/// How long a decision waits for its outcome.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(600);
/// Most decisions waiting at once; past it the oldest is dropped (its
/// decision record was kept; only the outcome record is lost, and said).
const MAX_WAITING: usize = 65_536;
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

/// Decisions waiting for their outcome, by decision ID.
#[derive(Default)]
pub struct Waiting(Mutex<HashMap<String, DecisionRecord>>);

impl Waiting {
    /// Keeps `d` until its outcome comes or [`OUTCOME_WAIT`] passes.
    pub fn keep(&self, d: &DecisionRecord, now: SystemTime) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_WAITING {
            all.retain(|_, r| !expired(r, now));
        }
        if all.len() >= MAX_WAITING
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, r)| r.time)
                .map(|(k, _)| k.clone())
        {
            tracing::warn!(decision_id = %oldest, "too many calls waiting for their outcome; the oldest will have no tool.call record");
            all.remove(&oldest);
        }
        all.insert(d.decision_id.clone(), d.clone());
    }

    /// Takes the decision `id` made for `ep`, once.
    pub fn take(&self, id: &str, ep: &str, now: SystemTime) -> Option<DecisionRecord> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let d = all.get(id)?;
        if d.enforcement_point != ep {
            return None;
        }
        let d = all.remove(id)?;
        (!expired(&d, now)).then_some(d)
    }

    /// How many wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn expired(d: &DecisionRecord, now: SystemTime) -> bool {
    now.duration_since(d.time).unwrap_or_default() > OUTCOME_WAIT
}

/// The `tool.call` audit record: the decision and its outcome.
pub fn call_event(d: &DecisionRecord, o: &Outcome, now: SystemTime) -> lanyard_core::audit::Event {
    use lanyard_core::audit::Kind;
    let mut e = super::record::audit_event(d);
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

    fn rec(id: &str, ep: &str, time: SystemTime) -> DecisionRecord {
        DecisionRecord {
            decision_id: id.into(),
            time,
            allow: true,
            reason: "ok".into(),
            policy_ids: vec![],
            task_id: "t".into(),
            principal: "spiffe://example.org/a".into(),
            tool: "crm.read".into(),
            resource: String::new(),
            enforcement_point: ep.into(),
            credential: "x509",
        }
    }

    #[test]
    fn an_outcome_is_taken_once_by_the_enforcement_point_that_asked() {
        let w = Waiting::default();
        let now = SystemTime::now();
        w.keep(&rec("d1", "spiffe://example.org/gate", now), now);
        assert!(w.take("d1", "spiffe://example.org/other", now).is_none());
        assert!(w.take("d1", "spiffe://example.org/gate", now).is_some());
        assert!(w.take("d1", "spiffe://example.org/gate", now).is_none());
        assert!(w.take("nope", "spiffe://example.org/gate", now).is_none());
    }

    #[test]
    fn a_decision_waits_at_most_ten_minutes() {
        let w = Waiting::default();
        let then = SystemTime::now();
        w.keep(&rec("d1", "ep", then), then);
        let later = then + OUTCOME_WAIT + Duration::from_secs(1);
        assert!(w.take("d1", "ep", later).is_none());
        assert_eq!(w.len(), 0);
    }

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
        let e = call_event(&rec("d1", "ep", now), &o, now);
        assert_eq!(e.kind.as_str(), "tool.call");
        assert_eq!(e.decision, "allow");
        assert_eq!(e.correlation.decision_id, "d1");
        assert_eq!(e.details["status"], 200);
        assert_eq!(e.details["latency_us"], 1500);
        assert_eq!(e.details["upstream"], "crm");
    }
}
