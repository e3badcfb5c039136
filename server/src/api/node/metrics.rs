//! The node API's metrics.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Counters of what the server signed, for tests and tools.
#[derive(Debug)]
pub struct Metrics {
    /// X.509-SVIDs signed for workloads.
    pub x509_svids_signed: std::sync::atomic::AtomicU64,
    /// JWT-SVIDs signed.
    pub jwt_svids_signed: std::sync::atomic::AtomicU64,
    /// The Prometheus side: what operators scrape.
    pub prom: NodeMetrics,
}

/// The node API's Prometheus metrics.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// SVIDs signed, by kind (`x509`, `jwt`, `agent`).
    pub signed: lanyard_metrics::CounterFamily,
    /// Signing latency, by kind.
    pub signing: lanyard_metrics::HistogramFamily,
    /// Refused node attestations, by attestor and reason.
    pub attestation_failures: lanyard_metrics::CounterFamily,
    /// Open Sync streams: the agents connected to this server.
    pub sync_streams: lanyard_metrics::Gauge,
}

impl Metrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &lanyard_metrics::Metrics) -> Self {
        Self {
            x509_svids_signed: Default::default(),
            jwt_svids_signed: Default::default(),
            prom: NodeMetrics {
                signed: registry.counters(
                    "lanyard_server_svids_signed",
                    "SVIDs signed, by kind (x509, jwt, agent)",
                ),
                signing: registry.latencies(
                    "lanyard_server_signing_seconds",
                    "Time to sign one SVID, by kind",
                ),
                attestation_failures: registry.counters(
                    "lanyard_server_attestation_failures",
                    "Refused node attestations, by attestor and reason",
                ),
                sync_streams: registry.gauge(
                    "lanyard_server_sync_streams",
                    "Open Sync streams (agents connected to this server)",
                ),
            },
        }
    }

    pub(super) fn signed(&self, kind: &str, started: std::time::Instant) {
        let l = lanyard_metrics::labels(&[("kind", kind)]);
        self.prom.signed.get_or_create(&l).inc();
        self.prom
            .signing
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&lanyard_metrics::Metrics::default())
    }
}

/// Counts an open stream until dropped.
pub(super) struct StreamGauge(lanyard_metrics::Gauge);

impl StreamGauge {
    pub(super) fn open(g: &lanyard_metrics::Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The attestor's name as a label (names no server knows are one label).
pub(super) fn attestor_label(method: &str) -> &'static str {
    match method {
        "join_token" => "join_token",
        "k8s_psat" => "k8s_psat",
        _ => "unknown",
    }
}

/// A short, bounded label for why an attestation was refused.
pub(super) fn refusal_reason(e: &NodeError) -> &'static str {
    match e {
        NodeError::Attestation(a) => match a {
            AttestationError::UnknownToken => "unknown_token",
            AttestationError::Expired => "expired_token",
            AttestationError::Malformed => "malformed",
            AttestationError::AgentId(_) | AttestationError::CollidesWithEntry(_) => "agent_id",
            AttestationError::UnknownAttestor(..) => "unknown_attestor",
            AttestationError::Refused(why) => crate::node_attest::reason_class(why),
            _ => "internal",
        },
        NodeError::Agent(AgentError::Banned(_)) => "banned",
        NodeError::Agent(AgentError::Replayed(_)) => "replayed",
        NodeError::Svid(_) => "bad_csr",
        _ => "internal",
    }
}
