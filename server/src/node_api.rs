//! `lanyard.server.v1.Node`: what agents call over mTLS.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::x509::{SvidError, SvidParams};
use lanyard_core::{EntryId, SpiffeId};
use lanyard_proto::server::node_server::Node;
use lanyard_proto::server::{
    AttestAgentRequest, AttestAgentResponse, BeginTaskRequest, BeginTaskResponse,
    DelegateTaskRequest, DelegateTaskResponse, EndTaskRequest, EndTaskResponse, RenewAgentRequest,
    RenewAgentResponse, ReportEnforcementRequest, ReportEnforcementResponse, RevokeHeldRequest,
    RevokeHeldResponse, SignJwtSvidRequest, SignJwtSvidResponse, SignResult, SignTaskSvidRequest,
    SignTaskSvidResponse, SignX509SvidsRequest, SignX509SvidsResponse, SyncRequest, SyncUpdate,
};
use lanyard_proto::types;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::agents::{AgentError, Agents};
use crate::attestation::AttestationError;
use crate::ca::Ca;
use crate::node_attest::{Attested, NodeAttestors};
use crate::policy::Policies;
use crate::registry::Registry;
use crate::store::{AgentRecord, StoreError};
use crate::tasks::{BeginInput, Caller, Tasks};
use crate::tls::{ClientSvid, PeerInfo};
use lanyard_core::audit::{Event, Kind};

/// Most CSRs in one `SignX509Svids` call.
pub const MAX_BATCH: usize = 1000;
/// Most audiences in one JWT-SVID.
pub use lanyard_core::jwt::MAX_AUDIENCES;

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

    fn signed(&self, kind: &str, started: std::time::Instant) {
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
struct StreamGauge(lanyard_metrics::Gauge);

impl StreamGauge {
    fn open(g: &lanyard_metrics::Gauge) -> Self {
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
fn attestor_label(method: &str) -> &'static str {
    match method {
        "join_token" => "join_token",
        "k8s_psat" => "k8s_psat",
        _ => "unknown",
    }
}

/// A short, bounded label for why an attestation was refused.
fn refusal_reason(e: &NodeError) -> &'static str {
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

/// Lifetimes the server applies.
#[derive(Debug, Clone, Copy)]
pub struct IssuanceSettings {
    /// X.509-SVID TTL for entries that do not set one.
    pub default_x509_svid_ttl: Duration,
    /// JWT-SVID TTL for entries that do not set one.
    pub default_jwt_svid_ttl: Duration,
    /// TTL of agent SVIDs.
    pub agent_svid_ttl: Duration,
}

/// Why a node API call failed. Mapped to a status in one place below.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No client certificate on a call that needs one.
    #[error("an agent SVID (client certificate) is required")]
    NoClientCert,
    /// The agent record refused the call (unknown, banned, superseded).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The client SVID expired, or its CA left the bundle, after the TLS
    /// handshake that admitted the connection.
    #[error("agent SVID {0} is no longer valid: {1}")]
    SvidNoLongerValid(String, &'static str),
    /// Join-token attestation failed.
    #[error("attestation failed: {0}")]
    Attestation(#[from] AttestationError),
    /// A CSR or certificate problem.
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// Too many CSRs.
    #[error("at most {MAX_BATCH} CSRs per call")]
    BatchTooLarge,
    /// The entry is not the caller's.
    #[error("entry {0:?} is not authorized for agent {1}")]
    NotAuthorized(String, String),
    /// The JWT request is invalid.
    #[error("{0}")]
    BadJwtRequest(String),
    /// JWT signing failed.
    #[error("JWT signing failed: {0}")]
    Jwt(#[from] lanyard_core::jwt::JwtError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match &e {
            NodeError::NoClientCert => Status::unauthenticated(e.to_string()),
            NodeError::Attestation(AttestationError::Store(_))
            | NodeError::Store(_)
            | NodeError::Agent(AgentError::Store(_)) => {
                tracing::error!(err = %e, "node API internal error");
                Status::internal("internal error")
            }
            NodeError::Agent(AgentError::Contended(_)) => Status::aborted(e.to_string()),
            NodeError::Agent(_) | NodeError::SvidNoLongerValid(..) => {
                tracing::info!(err = %e, "agent refused");
                Status::permission_denied(e.to_string())
            }
            NodeError::Attestation(_) => {
                tracing::info!(err = %e, "attestation refused");
                Status::permission_denied(e.to_string())
            }
            NodeError::Svid(SvidError::Issue(_) | SvidError::Crypto(_)) => {
                tracing::error!(err = %e, "signing failed");
                Status::internal("signing failed")
            }
            NodeError::NotAuthorized(..) => Status::permission_denied(e.to_string()),
            NodeError::Jwt(_) => {
                tracing::error!(err = %e, "JWT signing failed");
                Status::internal("signing failed")
            }
            NodeError::Svid(_) | NodeError::BatchTooLarge | NodeError::BadJwtRequest(_) => {
                Status::invalid_argument(e.to_string())
            }
        }
    }
}

/// The Node service.
#[derive(Clone)]
pub struct NodeApi {
    pub(crate) ca: Ca,
    pub(crate) registry: Registry,
    pub(crate) agents: Agents,
    pub(crate) attestors: NodeAttestors,
    pub(crate) tasks: Tasks,
    pub(crate) policies: Policies,
    pub(crate) enforce: crate::enforce::Enforcement,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: IssuanceSettings,
    /// Turns true when the server shuts down; open streams end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// What was signed.
    pub(crate) metrics: Arc<Metrics>,
    /// Where issuance and attestation are recorded.
    pub(crate) audit: crate::audit::Audit,
}

fn bundle_msg(ca: &Ca) -> types::Bundle {
    ca.snapshot().to_proto(ca.trust_domain())
}

fn svid_msg(
    id: &SpiffeId,
    chain: Vec<Vec<u8>>,
    not_after: std::time::SystemTime,
) -> types::X509Svid {
    types::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: chain,
        expires_at: i64::try_from(unix_secs(not_after)).unwrap_or(i64::MAX),
    }
}

impl NodeApi {
    /// Identifies the calling agent from its verified client certificate,
    /// on every call: the certificate must still be valid now (not only at
    /// the handshake) and its CA still in the bundle.
    async fn authenticate<T: Sync>(
        &self,
        req: &Request<T>,
    ) -> Result<(AgentRecord, ClientSvid), NodeError> {
        let client = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.client.clone())
            .ok_or(NodeError::NoClientCert)??;
        if self.clock.now() >= client.not_after {
            return Err(NodeError::SvidNoLongerValid(
                client.serial,
                "it has expired",
            ));
        }
        let snap = self.ca.snapshot();
        if !client
            .issuer
            .as_ref()
            .is_some_and(|i| snap.authority_ids.iter().any(|a| a == i))
        {
            return Err(NodeError::SvidNoLongerValid(
                client.serial,
                "its CA is no longer in the trust bundle",
            ));
        }
        let agent = self
            .agents
            .authenticate(&client.spiffe_id, &client.serial)
            .await?;
        self.registry.note_node(&agent);
        Ok((agent, client))
    }

    /// Checks the node's evidence with the attestor it names and signs the
    /// agent's SVID.
    async fn attest(
        &self,
        req: &AttestAgentRequest,
    ) -> Result<(Attested, lanyard_core::x509::IssuedSvid), NodeError> {
        // Check the CSR before spending the evidence, so a bad CSR does not
        // burn a join token.
        lanyard_core::x509::parse_csr_public_key(&req.csr)?;
        let attestor = self.attestors.get(&req.attestor)?;
        let data = if attestor.name() == "join_token" && req.attestation_data.is_empty() {
            req.join_token.as_bytes()
        } else {
            &req.attestation_data
        };
        let node = attestor.attest(data).await?;
        lanyard_core::agent_id::check_agent_id(&node.agent_id, self.ca.trust_domain())
            .map_err(AttestationError::from)?;
        self.agents.check_not_banned(&node.agent_id).await?;
        let svid = self.sign_agent(&node.agent_id, &req.csr)?;
        Ok((node, svid))
    }

    /// A refused attestation: counted by attestor and reason, recorded in
    /// the audit log (with the agent ID once known), answered as a status.
    async fn attestation_refused(
        &self,
        method: &str,
        agent_id: Option<&SpiffeId>,
        err: NodeError,
    ) -> Status {
        self.metrics
            .prom
            .attestation_failures
            .get_or_create(&lanyard_metrics::labels(&[
                ("attestor", attestor_label(method)),
                ("reason", refusal_reason(&err)),
            ]))
            .inc();
        let mut event = self
            .audit
            .event(Kind::NodeRefused)
            .reason(err.to_string())
            .details(serde_json::json!({"method": method}));
        if let Some(id) = agent_id {
            event = event.subject(id.to_string());
        }
        self.audit.note(event).await;
        err.into()
    }

    fn sign_agent(
        &self,
        id: &SpiffeId,
        csr: &[u8],
    ) -> Result<lanyard_core::x509::IssuedSvid, NodeError> {
        let params = SvidParams {
            spiffe_id: id.clone(),
            dns_names: vec![],
            ttl: self.settings.agent_svid_ttl,
            extensions: vec![],
        };
        let started = std::time::Instant::now();
        let svid = self
            .ca
            .snapshot()
            .active
            .sign_x509_svid(csr, &params, self.clock.now())?;
        self.metrics.signed("agent", started);
        Ok(svid)
    }

    fn sync_update(&self, agent: &SpiffeId) -> SyncUpdate {
        let policy = self.policies.enforced();
        SyncUpdate {
            entries: self
                .registry
                .for_agent(agent)
                .iter()
                .map(types::Entry::from)
                .collect(),
            bundle: Some(bundle_msg(&self.ca)),
            ended_task_ids: self.tasks.ended_for(agent),
            policy_version: policy.as_ref().map_or(0, |p| p.record.version),
            policy_text: policy.map(|p| p.record.text.clone()).unwrap_or_default(),
            revocations: vec![],
            revocations_reset: false,
            crls: self.enforce.revocations.crls(),
            quarantines: self
                .enforce
                .quarantines
                .in_force()
                .iter()
                .map(crate::admin_enforce::quarantine_msg)
                .collect(),
            sensitivity_levels: self.tasks.levels().as_slice().to_vec(),
        }
    }

    /// The entry `entry_id` if `agent` is its parent.
    fn owned_entry(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
    ) -> Result<lanyard_core::RegistrationEntry, NodeError> {
        EntryId::new(entry_id)
            .ok()
            .and_then(|id| self.registry.get(id.as_str()))
            .filter(|e| self.registry.owns(agent, e))
            .ok_or_else(|| NodeError::NotAuthorized(entry_id.to_owned(), agent.to_string()))
    }

    fn sign_one(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
        csr: &[u8],
    ) -> Result<(types::X509Svid, Event), String> {
        let entry = self
            .owned_entry(agent, entry_id)
            .map_err(|e| e.to_string())?;
        let params = SvidParams {
            spiffe_id: entry.spiffe_id.clone(),
            dns_names: entry.dns_names.clone(),
            ttl: entry
                .x509_ttl
                .unwrap_or(self.settings.default_x509_svid_ttl),
            extensions: vec![],
        };
        let snap = self.ca.snapshot();
        let started = std::time::Instant::now();
        let svid = snap
            .active
            .sign_x509_svid(csr, &params, self.clock.now())
            .map_err(|e| e.to_string())?;
        self.metrics.signed("x509", started);
        self.metrics
            .x509_svids_signed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%agent, spiffe_id = %entry.spiffe_id, serial = %svid.serial, "signed X.509-SVID");
        // Recorded (batched, off this path) so that revoking the SPIFFE ID
        // reaches this serial without the holder's agent.
        self.enforce
            .revocations
            .issued()
            .note(crate::enforce::IssuedSvid {
                serial: svid.serial.clone(),
                spiffe_id: entry.spiffe_id.to_string(),
                task_id: None,
                issuer: snap.active.info().subject_key_id.clone(),
                issued_at: unix_secs(self.clock.now()),
                not_after: unix_secs(svid.not_after),
            });
        let event = self
            .audit
            .event(Kind::SvidIssued)
            .actor(agent.to_string())
            .subject(entry.spiffe_id.to_string())
            .node(agent.to_string())
            .serial(svid.serial.clone())
            .details(serde_json::json!({
                "entry_id": entry.id.to_string(),
                "ttl_seconds": params.ttl.as_secs(),
            }));
        Ok((
            svid_msg(&entry.spiffe_id, vec![svid.cert_der], svid.not_after),
            event,
        ))
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeApi {
    #[instrument(skip_all)]
    async fn append_audit(
        &self,
        req: Request<lanyard_proto::server::AppendAuditRequest>,
    ) -> Result<Response<lanyard_proto::server::AppendAuditResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        self.append_audit_impl(&agent.spiffe_id, req.into_inner())
            .await
            .map(Response::new)
    }

    #[instrument(skip_all)]
    async fn attest_agent(
        &self,
        req: Request<AttestAgentRequest>,
    ) -> Result<Response<AttestAgentResponse>, Status> {
        let req = req.into_inner();
        let method = if req.attestor.is_empty() {
            "join_token".to_owned()
        } else {
            req.attestor.chars().take(64).collect()
        };
        let (node, svid) = match self.attest(&req).await {
            Ok(v) => v,
            Err(e) => return Err(self.attestation_refused(&method, None, e).await),
        };
        let agent_id = node.agent_id.clone();
        if let Err(e) = self
            .agents
            .attested(
                &agent_id,
                &method,
                &svid.serial,
                unix_secs(svid.not_after),
                &node,
            )
            .await
        {
            return Err(self
                .attestation_refused(&method, Some(&agent_id), e.into())
                .await);
        }
        tracing::info!(%agent_id, %method, serial = %svid.serial, "agent attested");
        self.audited(
            self.audit
                .event(Kind::NodeAttested)
                .actor(agent_id.to_string())
                .subject(agent_id.to_string())
                .serial(svid.serial.clone())
                .details(serde_json::json!({
                    "method": method,
                    "selectors": node.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
        )
        .await?;
        Ok(Response::new(AttestAgentResponse {
            svid: Some(svid_msg(&agent_id, vec![svid.cert_der], svid.not_after)),
            bundle: Some(bundle_msg(&self.ca)),
        }))
    }

    #[instrument(skip_all)]
    async fn renew_agent(
        &self,
        req: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        let (agent, client) = self.authenticate(&req).await?;
        let svid = self.sign_agent(&agent.spiffe_id, &req.get_ref().csr)?;
        // Written only if the record is still the one authenticated against
        // (or a compatible renewal): a concurrent ban or eviction wins.
        let agent = self
            .agents
            .renewed(
                agent,
                &client.serial,
                &svid.serial,
                unix_secs(svid.not_after),
            )
            .await
            .map_err(NodeError::from)?;
        tracing::info!(agent_id = %agent.spiffe_id, serial = %svid.serial, "agent SVID renewed");
        self.audited(
            self.audit
                .event(Kind::AgentRenewed)
                .actor(agent.spiffe_id.to_string())
                .subject(agent.spiffe_id.to_string())
                .serial(svid.serial.clone()),
        )
        .await?;
        Ok(Response::new(RenewAgentResponse {
            svid: Some(svid_msg(
                &agent.spiffe_id,
                vec![svid.cert_der],
                svid.not_after,
            )),
        }))
    }

    type SyncStream = SyncStream;

    #[instrument(skip_all)]
    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let (agent, client) = self.authenticate(&req).await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        let mut entries = self.registry.subscribe();
        let mut bundle = self.ca.subscribe();
        let mut agents = self.agents.subscribe();
        let mut tasks = self.tasks.subscribe();
        let mut policies = self.policies.subscribe();
        let mut revocations = self.enforce.revocations.subscribe();
        let mut quarantines = self.enforce.quarantines.subscribe();
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            let _open = StreamGauge::open(&api.metrics.prom.sync_streams);
            let id = agent.spiffe_id;
            let mut last: Option<SyncUpdate> = None;
            // The revocation log position last sent: later updates carry
            // only what was added since (agents drop entries once they
            // expire).
            let mut sent: Option<u64> = None;
            loop {
                // Re-check the agent on every wake-up: an evicted or banned
                // agent's stream ends with an error (authenticated against
                // the store when the stream opened; changes since come from
                // this server's ban/evict calls and the change feed).
                if api.agents.is_gone(&id) {
                    let _ = tx
                        .send(Err(Status::permission_denied(format!(
                            "agent {id} has been evicted or banned"
                        ))))
                        .await;
                    return;
                }
                // The stream outlives no certificate: once the SVID that
                // opened it expires or its CA leaves the bundle, it ends and
                // the agent reconnects with its renewed SVID.
                let snap = api.ca.snapshot();
                let issuer_ok = client
                    .issuer
                    .as_ref()
                    .is_some_and(|i| snap.authority_ids.iter().any(|a| a == i));
                if api.clock.now() >= client.not_after || !issuer_ok {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the agent SVID that opened this stream is no longer valid; reconnect",
                        )))
                        .await;
                    return;
                }
                let until_expiry = client
                    .not_after
                    .duration_since(api.clock.now())
                    .unwrap_or_default();
                let update = api.sync_update(&id);
                let delta = api.enforce.revocations.delta(sent);
                if last.as_ref() != Some(&update) || delta.reset || !delta.items.is_empty() {
                    let mut msg = update.clone();
                    msg.revocations = delta.items.iter().map(types::Revocation::from).collect();
                    msg.revocations_reset = delta.reset;
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(update);
                }
                sent = Some(delta.seq);
                tokio::select! {
                    r = entries.changed() => if r.is_err() { return },
                    r = bundle.changed() => if r.is_err() { return },
                    r = agents.changed() => if r.is_err() { return },
                    r = tasks.changed() => if r.is_err() { return },
                    r = policies.changed() => if r.is_err() { return },
                    r = revocations.changed() => if r.is_err() { return },
                    r = quarantines.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(until_expiry) => {}
                    () = tx.closed() => return,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all)]
    async fn sign_x509_svids(
        &self,
        req: Request<SignX509SvidsRequest>,
    ) -> Result<Response<SignX509SvidsResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let csrs = req.into_inner().csrs;
        if csrs.len() > MAX_BATCH {
            return Err(NodeError::BatchTooLarge.into());
        }
        let mut events = Vec::new();
        let results = csrs
            .into_iter()
            .map(|item| match self.sign_one(&agent.spiffe_id, &item.entry_id, &item.csr) {
                Ok((svid, event)) => {
                    events.push(event);
                    SignResult {
                        entry_id: item.entry_id,
                        svid: Some(svid),
                        error: String::new(),
                    }
                }
                Err(error) => {
                    tracing::info!(agent_id = %agent.spiffe_id, entry_id = %item.entry_id, %error, "refused to sign");
                    SignResult {
                        entry_id: item.entry_id,
                        svid: None,
                        error,
                    }
                }
            })
            .collect();
        // No SVID leaves before its issuance is on disk.
        if !events.is_empty() {
            self.audit
                .record_all(events)
                .await
                .map_err(crate::node_events::unavailable)?;
        }
        Ok(Response::new(SignX509SvidsResponse { results }))
    }

    #[instrument(skip_all)]
    async fn sign_jwt_svid(
        &self,
        req: Request<SignJwtSvidRequest>,
    ) -> Result<Response<SignJwtSvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(NodeError::BadJwtRequest("audience must be specified".into()).into());
        }
        crate::tasks::check_audiences(&req.audience).map_err(NodeError::BadJwtRequest)?;
        let entry = self.owned_entry(&agent.spiffe_id, &req.entry_id)?;
        let ttl = entry.jwt_ttl.unwrap_or(self.settings.default_jwt_svid_ttl);
        let started = std::time::Instant::now();
        let minted = self
            .ca
            .snapshot()
            .jwt_active
            .sign_svid(
                &entry.spiffe_id,
                &req.audience,
                ttl,
                self.clock.now(),
                serde_json::Map::new(),
            )
            .map_err(NodeError::from)?;
        self.metrics.signed("jwt", started);
        self.metrics
            .jwt_svids_signed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(agent_id = %agent.spiffe_id, spiffe_id = %entry.spiffe_id, jti = %minted.jti, "signed JWT-SVID");
        let mut e = self
            .audit
            .event(Kind::JwtIssued)
            .actor(agent.spiffe_id.to_string())
            .subject(entry.spiffe_id.to_string())
            .node(agent.spiffe_id.to_string())
            .details(serde_json::json!({"audience": req.audience, "ttl_seconds": ttl.as_secs()}));
        e.correlation.jti = minted.jti.clone();
        self.audited(e).await?;
        let secs = |t| i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
        Ok(Response::new(SignJwtSvidResponse {
            token: minted.token,
            issued_at: secs(minted.issued_at),
            expires_at: secs(minted.expires_at),
        }))
    }

    #[instrument(skip_all)]
    async fn begin_task(
        &self,
        req: Request<BeginTaskRequest>,
    ) -> Result<Response<BeginTaskResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let input = BeginInput {
            entry_id: req.entry_id,
            candidates: req.candidate_entry_ids,
            spec: req
                .spec
                .ok_or_else(|| Status::invalid_argument("spec is required"))?,
            csr: req.csr,
            jwt_audiences: req.jwt_audiences,
            caller: Caller {
                agent_id: Some(agent.spiffe_id.clone()),
                selectors: req.selectors,
                exe_path: req.exe_path,
                exe_sha256: req.exe_sha256,
            },
        };
        let denied_as = crate::node_events::denied_task(&self.audit, &agent.spiffe_id, &input);
        // Policy evaluation and signing take tens of microseconds: inline.
        let (record, minted) = match self.tasks.begin(&agent.spiffe_id, input).await {
            Ok(v) => v,
            Err(e) => {
                if let crate::tasks::TaskServiceError::Denied(why) = &e {
                    self.audit.note(denied_as.reason(why.clone())).await;
                }
                return Err(e.into());
            }
        };
        self.audited_task(&agent.spiffe_id, &record, minted.svid.as_ref(), true)
            .await?;
        let (jwt, jwt_expires_at) = minted.jwt.unwrap_or_default();
        Ok(Response::new(BeginTaskResponse {
            task: Some(types::TaskInfo::from(&record)),
            svid: minted.svid,
            jwt,
            jwt_expires_at: i64::try_from(jwt_expires_at).unwrap_or(i64::MAX),
        }))
    }

    #[instrument(skip_all)]
    async fn sign_task_svid(
        &self,
        req: Request<SignTaskSvidRequest>,
    ) -> Result<Response<SignTaskSvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let minted = self
            .tasks
            .sign(
                &agent.spiffe_id,
                &req.task_id,
                &req.csr,
                &req.jwt_audiences,
                &req.exe_sha256,
            )
            .await?;
        if let Ok(record) = self.tasks.get(&req.task_id).await {
            self.audited_task(&agent.spiffe_id, &record, minted.svid.as_ref(), false)
                .await?;
        }
        let (jwt, jwt_expires_at) = minted.jwt.unwrap_or_default();
        Ok(Response::new(SignTaskSvidResponse {
            svid: minted.svid,
            jwt,
            jwt_expires_at: i64::try_from(jwt_expires_at).unwrap_or(i64::MAX),
        }))
    }

    #[instrument(skip_all)]
    async fn end_task(
        &self,
        req: Request<EndTaskRequest>,
    ) -> Result<Response<EndTaskResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let reason = if req.reason.is_empty() {
            "ended".to_owned()
        } else {
            req.reason.chars().take(128).collect()
        };
        self.tasks
            .end(
                Some(&agent.spiffe_id),
                &req.task_id,
                lanyard_core::task::TaskState::Ended,
                &reason,
            )
            .await?;
        Ok(Response::new(EndTaskResponse {}))
    }

    #[instrument(skip_all)]
    async fn delegate_task(
        &self,
        req: Request<DelegateTaskRequest>,
    ) -> Result<Response<DelegateTaskResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let caller = Caller {
            agent_id: Some(agent.spiffe_id.clone()),
            selectors: req.selectors,
            exe_path: req.exe_path,
            exe_sha256: req.exe_sha256,
        };
        let tools = req.tools.clone();
        let (token, expires_at) = self
            .tasks
            .delegate(
                &agent.spiffe_id,
                &req.task_id,
                &req.to_spiffe_id,
                req.tools,
                req.ttl_seconds,
                &caller,
            )
            .await?;
        self.audited(
            self.audit
                .event(Kind::TaskDelegated)
                .actor(agent.spiffe_id.to_string())
                .subject(req.to_spiffe_id.clone())
                .node(agent.spiffe_id.to_string())
                .task(req.task_id.clone())
                .details(serde_json::json!({"tools": tools, "token_expires_at": expires_at})),
        )
        .await?;
        Ok(Response::new(DelegateTaskResponse {
            token,
            expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
        }))
    }

    #[instrument(skip_all)]
    async fn report_enforcement(
        &self,
        req: Request<ReportEnforcementRequest>,
    ) -> Result<Response<ReportEnforcementResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let denials = req.into_inner().denials;
        if denials.len() > MAX_BATCH {
            return Err(NodeError::BatchTooLarge.into());
        }
        self.enforce
            .report_denials(&agent.spiffe_id, denials)
            .await
            .map_err(|e| {
                tracing::error!(err = %e, "cannot record reported denials");
                Status::internal("cannot record the report")
            })?;
        Ok(Response::new(ReportEnforcementResponse {}))
    }

    #[instrument(skip_all)]
    async fn revoke_held(
        &self,
        req: Request<RevokeHeldRequest>,
    ) -> Result<Response<RevokeHeldResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        if req.certs.len() > MAX_BATCH {
            return Err(NodeError::BatchTooLarge.into());
        }
        let reason: String = if req.reason.is_empty() {
            "revoked by its agent".into()
        } else {
            req.reason.chars().take(256).collect()
        };
        let snap = self.ca.snapshot();
        let now = self.clock.now();
        let owned = self.registry.for_agent(&agent.spiffe_id);
        let mut items = Vec::new();
        for der in &req.certs {
            // Only SVIDs this CA set issued for one of the agent's entries:
            // an agent cannot revoke another node's workloads.
            let id = lanyard_core::x509::validate_x509_svid(
                std::slice::from_ref(der),
                self.ca.trust_domain(),
                &snap.authorities,
                lanyard_core::x509::PeerUsage::Client,
                now,
            )
            .map_err(|e| Status::invalid_argument(format!("certificate: {e}")))?;
            if !owned.iter().any(|e| e.spiffe_id == id) {
                return Err(Status::permission_denied(format!(
                    "{id} is not an identity of this agent's entries"
                )));
            }
            let info = lanyard_core::x509::CertInfo::parse(der)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            items.push(lanyard_core::revocation::Revocation {
                kind: lanyard_core::revocation::RevokedKind::Serial,
                value: info.serial,
                revoked_at: unix_secs(now),
                expires_at: unix_secs(info.not_after),
                reason: reason.clone(),
                issuer: info.authority_key_id,
            });
        }
        let n = self.enforce.revocations.revoke(items).await.map_err(|e| {
            tracing::error!(err = %e, "cannot store revocations");
            Status::internal("cannot store the revocations")
        })?;
        Ok(Response::new(RevokeHeldResponse {
            revoked: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }
}
