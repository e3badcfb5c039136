//! The agent's Prometheus metrics, served on `--metrics-bind`: Workload API
//! and TaskIdentity calls by method and status, tool-call decisions by
//! outcome, and, sampled every few seconds, the SVIDs and entries it
//! holds, the tasks it holds, the bytes in its JWT-SVID cache and the
//! audit records waiting for the server.

use std::sync::Arc;
use std::time::Duration;

use lanyard_metrics::{CounterFamily, Gauge, Metrics};
use tokio::sync::watch;

use crate::cache::Snapshot;
use crate::pdp::{DecisionRecord, DecisionSink};

/// How often the gauges are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Counts decisions, then hands them on.
pub struct CountingSink {
    inner: Arc<dyn DecisionSink>,
    decisions: CounterFamily,
}

impl CountingSink {
    /// Wraps `inner`, counting into `decisions`.
    pub fn new(inner: Arc<dyn DecisionSink>, decisions: CounterFamily) -> Self {
        Self { inner, decisions }
    }
}

impl DecisionSink for CountingSink {
    fn record(&self, d: &DecisionRecord) -> Result<(), String> {
        let r = self.inner.record(d);
        let decision = match (&r, d.allow) {
            (Err(_), _) => "deny",
            (Ok(()), true) => "allow",
            (Ok(()), false) => "deny",
        };
        self.decisions
            .get_or_create(&lanyard_metrics::labels(&[("decision", decision)]))
            .inc();
        r
    }

    fn record_call(
        &self,
        d: &DecisionRecord,
        o: &crate::pdp::Outcome,
        now: std::time::SystemTime,
    ) -> Result<(), String> {
        self.inner.record_call(d, o, now)
    }
}

/// What the agent reports.
pub struct AgentMetrics {
    /// The registry.
    pub registry: Metrics,
    /// Calls on the agent socket.
    pub calls: CounterFamily,
    /// Tool-call decisions.
    pub decisions: CounterFamily,
    svids: Gauge,
    entries: Gauge,
    tasks: Gauge,
    jwt_cache_bytes: Gauge,
    audit_waiting: Gauge,
    header_buffered_bytes: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let r = Metrics::default();
        Self {
            calls: r.counters(
                "lanyard_agent_api_calls",
                "Workload API and TaskIdentity calls, by method and status",
            ),
            decisions: r.counters(
                "lanyard_agent_decisions",
                "AuthorizeToolCall decisions, by outcome (allow, deny)",
            ),
            svids: r.gauge("lanyard_agent_svids", "X.509-SVIDs held for workloads"),
            entries: r.gauge(
                "lanyard_agent_entries",
                "Registration entries authorized for this node",
            ),
            tasks: r.gauge(
                "lanyard_agent_tasks",
                "Tasks held by workloads on this node",
            ),
            jwt_cache_bytes: r.gauge("lanyard_agent_jwt_cache_bytes", "Bytes of JWT-SVIDs cached"),
            audit_waiting: r.gauge(
                "lanyard_agent_audit_queue_records",
                "Decision records queued for the server's audit log",
            ),
            header_buffered_bytes: r.gauge(
                "lanyard_agent_header_buffered_bytes",
                "Bytes held for incomplete HTTP/2 frames and header blocks on the socket",
            ),
            registry: r,
        }
    }
}

fn set(g: &Gauge, v: usize) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

impl AgentMetrics {
    /// Samples the gauges every few seconds until `stop`.
    pub async fn sample(
        self: Arc<Self>,
        state: watch::Receiver<Arc<Snapshot>>,
        jwt: Arc<crate::jwt_cache::JwtCache>,
        queue: crate::audit_queue::AuditQueue,
        headers: Arc<lanyard_uds::HeaderBudget>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            {
                let snap = state.borrow().clone();
                set(&self.svids, snap.svids.len());
                set(&self.entries, snap.entries.len());
                set(&self.tasks, snap.tasks.len());
            }
            set(&self.jwt_cache_bytes, jwt.bytes());
            set(&self.header_buffered_bytes, headers.held());
            set(
                &self.audit_waiting,
                usize::try_from(queue.waiting()).unwrap_or(usize::MAX),
            );
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
