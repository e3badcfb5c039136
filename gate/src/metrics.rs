//! The gateway's Prometheus metrics.

use lanyard_metrics::{Counter, CounterFamily, HistogramFamily, Metrics, labels};

/// Every metric the gateway keeps.
#[derive(Clone)]
pub struct GateMetrics {
    /// The registry (rendered on `/metrics`).
    pub registry: Metrics,
    /// Calls by upstream, Lanyard tool and decision (`allow`, `deny`,
    /// `pass` for lifecycle messages, `refused` before any decision).
    pub calls: CounterFamily,
    /// Upstream latency to the answer's head, by upstream.
    pub upstream_seconds: HistogramFamily,
    /// Upstream failures (timeout, refused, TLS), by upstream.
    pub upstream_errors: CounterFamily,
    /// Successful configuration reloads.
    pub reloads: Counter,
}

impl GateMetrics {
    /// Registers them in `registry`.
    pub fn new(registry: Metrics) -> Self {
        Self {
            calls: registry.counters(
                "lanyard_gate_calls",
                "Calls through the gateway by upstream, tool and decision",
            ),
            upstream_seconds: registry.latencies(
                "lanyard_gate_upstream_seconds",
                "Time to the upstream's answer head, by upstream",
            ),
            upstream_errors: registry.counters(
                "lanyard_gate_upstream_errors",
                "Upstream calls that failed (timeout, connection, TLS), by upstream",
            ),
            reloads: registry.counter("lanyard_gate_reloads", "Configuration reloads applied"),
            registry,
        }
    }

    /// Counts one call.
    pub fn call(&self, upstream: &str, tool: &str, decision: &str) {
        self.calls
            .get_or_create(&labels(&[
                ("upstream", upstream),
                ("tool", tool),
                ("decision", decision),
            ]))
            .inc();
    }
}
