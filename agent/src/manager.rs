//! The agent's background component: one task that owns the connection to
//! the server, applies the pushed entries and bundle, obtains and rotates
//! X.509-SVIDs, renews the agent's own SVID, and publishes [`Snapshot`]s.
//! When the server is unreachable it keeps serving what it holds and retries
//! with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_core::clock::{Clock, from_unix_secs};
use lanyard_core::rotation::{renew_at, retry_delay};
use lanyard_core::tls::SpiffeServerVerifier;
use lanyard_core::x509::{CertInfo, SvidKey};
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TrustDomain};
use lanyard_proto::server::node_client::NodeClient;
use lanyard_proto::server::{
    RenewAgentRequest, SignX509SvidsRequest, SvidCsr, SyncRequest, SyncUpdate,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::cache::{CachedSvid, EntrySet, Snapshot};
use crate::creds::{AgentIdentity, ClientCert, Credentials};
use crate::server_client::{node_client, tls_config};
use crate::storage::AgentStorage;

/// Most CSRs sent in one call.
const BATCH: usize = 500;
/// First retry delay after a failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Deadline for one signing call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// SVIDs due within this window of the one that triggered a renewal are
/// renewed in the same batch: one signing call and one snapshot instead of
/// many (jitter spreads renewals; this gathers them back into rounds).
const RENEW_BATCH_WINDOW: Duration = Duration::from_secs(1);

/// A uniformly random sample in [-1, 1] for rotation jitter.
pub fn jitter_sample() -> f64 {
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.0;
    }
    f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX) * 2.0 - 1.0
}

struct Failure {
    attempts: u32,
    next_try: SystemTime,
}

/// The SVID manager.
pub struct Manager {
    pub(crate) server: String,
    pub(crate) td: TrustDomain,
    pub(crate) creds: Arc<Credentials>,
    pub(crate) storage: AgentStorage,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) publish: watch::Sender<Arc<Snapshot>>,
    entries: Arc<EntrySet>,
    svids: HashMap<EntryId, Arc<CachedSvid>>,
    failures: HashMap<EntryId, Failure>,
    bundle: Arc<Vec<Vec<u8>>>,
    jwt_authorities: Arc<Vec<lanyard_core::jwt::JwtAuthority>>,
    /// Tainted authority IDs from the bundle.
    tainted: Arc<Vec<String>>,
    /// Subject key IDs of the CAs in the bundle.
    bundle_ids: std::collections::HashSet<String>,
    bundle_sequence: u64,
    /// The current server client, shared with the Workload API for
    /// JWT-SVID signing.
    client_tx: watch::Sender<Option<NodeClient<Channel>>>,
    synced: bool,
    agent_renew_at: Option<SystemTime>,
    agent_failures: u32,
}

enum Next {
    /// Connect again after a backoff.
    Reconnect,
    /// Connect again at once (the agent SVID was renewed).
    Renewed,
    /// Shut down.
    Stop,
}

impl Manager {
    /// A manager publishing into `publish`.
    pub fn new(
        server: String,
        td: TrustDomain,
        creds: Arc<Credentials>,
        storage: AgentStorage,
        clock: Arc<dyn Clock>,
        publish: watch::Sender<Arc<Snapshot>>,
    ) -> Self {
        let bundle = lanyard_core::tls::X509BundleSource::x509_authorities(creds.as_ref());
        Self {
            server,
            td,
            creds,
            storage,
            clock,
            publish,
            entries: Arc::new(EntrySet::new(Vec::new())),
            svids: HashMap::new(),
            failures: HashMap::new(),
            bundle,
            jwt_authorities: Arc::new(Vec::new()),
            tainted: Arc::new(Vec::new()),
            bundle_ids: std::collections::HashSet::new(),
            bundle_sequence: 0,
            client_tx: watch::channel(None).0,
            synced: false,
            agent_renew_at: None,
            agent_failures: 0,
        }
    }

    /// Follows the manager's current server client.
    pub fn client_handle(&self) -> watch::Receiver<Option<NodeClient<Channel>>> {
        self.client_tx.subscribe()
    }

    fn client(&self) -> Option<NodeClient<Channel>> {
        let server_id = self.td.id_with_segments(["lanyard", "server"]).ok()?;
        let verifier = Arc::new(SpiffeServerVerifier::new(server_id, self.creds.clone()));
        let tls = tls_config(verifier, Some(Arc::new(ClientCert(self.creds.clone())))).ok()?;
        node_client(&self.server, tls).ok()
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut attempt = 0u32;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.session(&mut shutdown, &mut attempt).await {
                Next::Stop => return,
                Next::Renewed => continue,
                Next::Reconnect => {}
            }
            let delay = retry_delay(
                attempt,
                BACKOFF_BASE,
                BACKOFF_MAX,
                SystemTime::UNIX_EPOCH,
                from_unix_secs(u64::MAX / 4),
            );
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// One connection to the server: sync stream plus SVID upkeep.
    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>, attempt: &mut u32) -> Next {
        let Some(identity) = self.creds.identity() else {
            tracing::error!("agent has no SVID; restart it with a new --join-token");
            return Next::Reconnect;
        };
        if self.agent_renew_at.is_none() {
            self.agent_renew_at = Some(renew_at(
                self.clock
                    .now()
                    .clamp(identity.not_before, identity.not_after),
                identity.not_after,
                jitter_sample(),
            ));
        }
        let Some(mut client) = self.client() else {
            return Next::Reconnect;
        };
        self.client_tx.send_replace(Some(client.clone()));
        let mut stream = match client.sync(SyncRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), server = %self.server, "cannot open sync stream; serving cached SVIDs");
                return Next::Reconnect;
            }
        };
        tracing::info!(server = %self.server, agent_id = %identity.spiffe_id, "connected to server");
        loop {
            let deadline = self.next_deadline();
            let wait = deadline
                .duration_since(self.clock.now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(update)) => {
                        *attempt = 0;
                        self.apply(update);
                        self.reconcile(&mut client).await;
                    }
                    Ok(None) => {
                        tracing::warn!("server closed the sync stream");
                        return Next::Reconnect;
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "sync stream failed; serving cached SVIDs");
                        return Next::Reconnect;
                    }
                },
                () = tokio::time::sleep(wait) => {
                    if self.agent_renew_at.is_some_and(|t| self.clock.now() >= t)
                        && self.renew_agent(&mut client).await
                    {
                        // Reconnect so the server sees the new SVID.
                        *attempt = 0;
                        return Next::Renewed;
                    }
                    self.reconcile(&mut client).await;
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return Next::Stop,
            }
        }
    }

    fn next_deadline(&self) -> SystemTime {
        let far = self.clock.now() + Duration::from_secs(3600);
        let svids = self.svids.values().map(|s| s.renew_at);
        let failures = self.failures.values().map(|f| f.next_try);
        svids
            .chain(failures)
            .chain(self.agent_renew_at)
            .fold(far, SystemTime::min)
    }

    fn apply(&mut self, update: SyncUpdate) {
        let mut entries = Vec::with_capacity(update.entries.len());
        for msg in update.entries {
            let id = msg.id.clone();
            match RegistrationEntry::try_from(msg) {
                Ok(e) => entries.push(e),
                Err(err) => {
                    tracing::warn!(entry_id = %id, %err, "ignoring invalid entry from server")
                }
            }
        }
        self.entries = Arc::new(EntrySet::new(entries));
        if let Some(b) = update
            .bundle
            .filter(|b| b.sequence != self.bundle_sequence || *self.bundle != b.x509_authorities)
        {
            {
                self.bundle_sequence = b.sequence;
                self.bundle_ids = b
                    .x509_authorities
                    .iter()
                    .filter_map(|c| CertInfo::parse(c).ok())
                    .map(|i| i.subject_key_id)
                    .collect();
                self.tainted = Arc::new(b.tainted_key_ids);
                self.bundle = Arc::new(b.x509_authorities);
                self.jwt_authorities =
                    Arc::new(b.jwt_authorities.into_iter().map(Into::into).collect());
                self.creds.set_bundle(self.bundle.clone());
                if let Err(err) = self.storage.save_bundle(&self.bundle) {
                    tracing::warn!(%err, "cannot persist trust bundle");
                }
                tracing::info!(
                    sequence = self.bundle_sequence,
                    authorities = self.bundle.len(),
                    "trust bundle updated"
                );
            }
        }
        // The agent's own SVID follows the same rule as the workloads': one
        // signed by a tainted CA (or one that left the bundle) is renewed at
        // once, before the CA is revoked and the server refuses it.
        if let Some(id) = self.creds.identity()
            && !self.issuer_ok(id.issuer_id.as_deref())
        {
            tracing::warn!(issuer = ?id.issuer_id, "agent SVID signed by a tainted or removed CA; renewing now");
            self.agent_renew_at = Some(self.clock.now());
        }
        self.synced = true;
        let live: std::collections::HashSet<&EntryId> =
            self.entries.iter().map(|e| &e.id).collect();
        self.svids.retain(|id, _| live.contains(id));
        self.failures.retain(|id, _| live.contains(id));
        self.publish_snapshot();
    }

    fn publish_snapshot(&self) {
        let mut snap = Snapshot::empty(self.td.clone());
        snap.entries = self.entries.clone();
        snap.svids = self.svids.clone();
        snap.bundle = self.bundle.clone();
        snap.jwt_authorities = self.jwt_authorities.clone();
        snap.tainted = self.tainted.clone();
        snap.bundle_sequence = self.bundle_sequence;
        snap.synced = self.synced;
        self.publish.send_replace(Arc::new(snap));
    }

    /// True when an SVID signed by `issuer` may still be served: the CA is
    /// in the bundle and not tainted.
    fn issuer_ok(&self, issuer: Option<&str>) -> bool {
        match issuer {
            Some(i) => self.bundle_ids.contains(i) && !self.tainted.iter().any(|t| t == i),
            None => true,
        }
    }

    fn due(&self, now: SystemTime) -> Vec<RegistrationEntry> {
        self.entries
            .iter()
            // Task-bound entries get SVIDs only inside a task.
            .filter(|e| !e.require_task)
            .filter(|e| match self.svids.get(&e.id) {
                None => true,
                Some(s) => {
                    s.entry_revision != e.revision
                        || now + RENEW_BATCH_WINDOW >= s.renew_at
                        || !self.issuer_ok(s.issuer_id.as_deref())
                }
            })
            .filter(|e| self.failures.get(&e.id).is_none_or(|f| now >= f.next_try))
            .cloned()
            .collect()
    }

    fn fail(&mut self, id: &EntryId, now: SystemTime) {
        let expires = self
            .svids
            .get(id)
            .map_or(now + BACKOFF_MAX, |s| s.not_after);
        let f = self.failures.entry(id.clone()).or_insert(Failure {
            attempts: 0,
            next_try: now,
        });
        f.next_try = now + retry_delay(f.attempts, BACKOFF_BASE, BACKOFF_MAX, now, expires);
        f.attempts = f.attempts.saturating_add(1);
    }

    /// Obtains SVIDs for every entry that has none, changed, or is due for
    /// rotation. On failure the still-valid SVID is kept and the entry is
    /// retried with backoff.
    async fn reconcile(&mut self, client: &mut NodeClient<Channel>) {
        let now = self.clock.now();
        let due = self.due(now);
        if due.is_empty() {
            return;
        }
        for chunk in due.chunks(BATCH) {
            let mut keys = HashMap::new();
            let mut csrs = Vec::with_capacity(chunk.len());
            for e in chunk {
                let key = match SvidKey::generate() {
                    Ok(k) => k,
                    Err(err) => {
                        tracing::error!(%err, "key generation failed");
                        continue;
                    }
                };
                match key.csr(&e.spiffe_id) {
                    Ok(csr) => {
                        csrs.push(SvidCsr {
                            entry_id: e.id.to_string(),
                            csr,
                        });
                        keys.insert(e.id.to_string(), (key, e.clone()));
                    }
                    Err(err) => tracing::error!(%err, "CSR creation failed"),
                }
            }
            let call = client.sign_x509_svids(SignX509SvidsRequest { csrs });
            let resp = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), count = chunk.len(), "SVID signing failed; keeping current SVIDs");
                    chunk.iter().for_each(|e| self.fail(&e.id, now));
                    continue;
                }
                Err(_) => {
                    tracing::warn!(
                        count = chunk.len(),
                        "SVID signing timed out; keeping current SVIDs"
                    );
                    chunk.iter().for_each(|e| self.fail(&e.id, now));
                    continue;
                }
            };
            for r in resp.results {
                let Some((key, entry)) = keys.remove(&r.entry_id) else {
                    continue;
                };
                match r
                    .svid
                    .ok_or(r.error)
                    .and_then(|s| self.accept(&entry, key, s.cert_chain))
                {
                    Ok(svid) => {
                        tracing::debug!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "SVID issued");
                        self.failures.remove(&entry.id);
                        self.svids.insert(entry.id.clone(), Arc::new(svid));
                    }
                    Err(err) => {
                        tracing::warn!(entry_id = %entry.id, %err, "server refused SVID");
                        self.fail(&entry.id, now);
                    }
                }
            }
            for (_, (_, e)) in keys {
                self.fail(&e.id, now);
            }
        }
        self.publish_snapshot();
    }

    /// Checks a signed SVID before caching it.
    fn accept(
        &self,
        entry: &RegistrationEntry,
        key: SvidKey,
        chain: Vec<Vec<u8>>,
    ) -> Result<CachedSvid, String> {
        let leaf = chain.first().ok_or("empty certificate chain")?;
        let info = CertInfo::parse(leaf).map_err(|e| e.to_string())?;
        if info.uri_sans.len() != 1 || info.uri_sans[0] != entry.spiffe_id.as_str() {
            return Err(format!("SVID has URI SANs {:?}", info.uri_sans));
        }
        if info.spki_der != key.spki_der() {
            return Err("SVID does not carry the requested key".into());
        }
        Ok(CachedSvid {
            entry_id: entry.id.clone(),
            spiffe_id: SpiffeId::new(&info.uri_sans[0]).map_err(|e| e.to_string())?,
            key_pkcs8: key.pkcs8_der(),
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
            // Half of the lifetime left on receipt: the backdated part of
            // the validity window does not count.
            renew_at: renew_at(
                self.clock.now().clamp(info.not_before, info.not_after),
                info.not_after,
                jitter_sample(),
            ),
            entry_revision: entry.revision,
            issuer_id: info.authority_key_id,
            hint: entry.hint.clone(),
            chain,
        })
    }

    /// Renews the agent's own SVID; true when it was replaced.
    async fn renew_agent(&mut self, client: &mut NodeClient<Channel>) -> bool {
        let now = self.clock.now();
        let result = async {
            let id = self.creds.identity().ok_or("no agent identity")?;
            let key = SvidKey::generate().map_err(|e| e.to_string())?;
            let csr = key.csr(&id.spiffe_id).map_err(|e| e.to_string())?;
            let resp =
                tokio::time::timeout(CALL_TIMEOUT, client.renew_agent(RenewAgentRequest { csr }))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|s| s.message().to_string())?
                    .into_inner();
            let chain = resp.svid.ok_or("empty response")?.cert_chain;
            let identity = AgentIdentity::new(chain, key.pkcs8_der()).map_err(|e| e.to_string())?;
            self.storage
                .save_svid(&identity.chain, &identity.key_pkcs8)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(identity)
        }
        .await;
        match result {
            Ok(identity) => {
                tracing::info!(agent_id = %identity.spiffe_id, not_after = ?identity.not_after, "agent SVID renewed");
                self.agent_renew_at = Some(renew_at(
                    now.clamp(identity.not_before, identity.not_after),
                    identity.not_after,
                    jitter_sample(),
                ));
                self.agent_failures = 0;
                self.creds.set_identity(Some(Arc::new(identity)));
                true
            }
            Err(err) => {
                let expires = self.creds.identity().map_or(now, |i| i.not_after);
                let delay =
                    retry_delay(self.agent_failures, BACKOFF_BASE, BACKOFF_MAX, now, expires);
                self.agent_failures = self.agent_failures.saturating_add(1);
                self.agent_renew_at = Some(now + delay);
                tracing::warn!(%err, retry_in = ?delay, "agent SVID renewal failed");
                false
            }
        }
    }
}
