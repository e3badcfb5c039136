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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(id: &str, ep: &str, time: SystemTime) -> DecisionRecord {
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
            pending: false,
            approval_id: String::new(),
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
}
