//! Prometheus metrics for both binaries: one registry per process, helpers
//! to register counters, gauges and histograms in it, a tower layer that
//! counts gRPC calls by method and status, and the HTTP endpoint
//! (`GET /metrics`, OpenMetrics text) served on `--metrics-bind`.

mod grpc;
mod parse;
mod serve;

use std::sync::{Arc, RwLock};

pub use grpc::{CallsLayer, code_name};
pub use parse::parse_exposition;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use serve::{CONTENT_TYPE, serve};

use prometheus_client::registry::Registry;

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;
/// Counters by labels.
pub type CounterFamily = Family<Labels, Counter>;
/// Gauges by labels.
pub type GaugeFamily = Family<Labels, Gauge>;
/// Latency histograms by labels.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A process's metrics registry; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// Registers a metric made elsewhere.
    pub fn add(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.register(name, help, metric);
    }

    /// A counter family named `name` (`_total` is appended on output).
    pub fn counters(&self, name: &str, help: &str) -> CounterFamily {
        let f = CounterFamily::default();
        self.register(name, help, f.clone());
        f
    }

    /// One counter.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.register(name, help, c.clone());
        c
    }

    /// A gauge family.
    pub fn gauges(&self, name: &str, help: &str) -> GaugeFamily {
        let f = GaugeFamily::default();
        self.register(name, help, f.clone());
        f
    }

    /// One gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// A histogram of seconds from 50 µs to about 3 s.
    pub fn latency(&self, name: &str, help: &str) -> Histogram {
        let h = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        self.register(name, help, h.clone());
        h
    }

    /// A latency histogram family.
    pub fn latencies(&self, name: &str, help: &str) -> HistogramFamily {
        fn make() -> Histogram {
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        }
        let f: HistogramFamily = Family::new_with_constructor(make as fn() -> Histogram);
        self.register(name, help, f.clone());
        f
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text() {
        let m = Metrics::default();
        let c = m.counters("lanyard_test_calls", "Calls.");
        c.get_or_create(&labels(&[("method", "Fetch"), ("code", "OK")]))
            .inc();
        m.gauge("lanyard_test_open", "Open.").set(3);
        m.latency("lanyard_test_seconds", "Latency.").observe(0.001);
        let text = m.render();
        assert!(
            text.contains("lanyard_test_calls_total{method=\"Fetch\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(text.contains("lanyard_test_open 3"), "{text}");
        assert!(text.contains("lanyard_test_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
