//! `SpiffeWorkloadAPI` on the agent's unix socket, following the SPIFFE
//! Workload API specification's status codes and texts.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_core::Selector;
use lanyard_core::clock::Clock;
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::attestor::{AttestError, PeerCred, WorkloadAttestor};
use crate::cache::{CachedSvid, Identities, Snapshot};
use crate::jwt_cache::{JwtCache, JwtFetchError};
use crate::listener::ConnInfo;

/// The metadata key every Workload API request must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How long a connection's attestation is reused for further calls on the
/// same connection, as long as the same process instance (PID and start
/// time) is behind it.
pub const ATTESTATION_REUSE: Duration = Duration::from_secs(1);

/// A connection's latest attestation.
#[derive(Clone)]
pub(crate) struct ConnAttestation {
    pid: i32,
    started: u64,
    at: std::time::Instant,
    selectors: Arc<Vec<Selector>>,
}

/// Why a Workload API call failed. Mapped to a status in one place below,
/// with the texts SPIFFE clients match on.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Missing or wrong `workload.spiffe.io` metadata.
    #[error("security header missing from request")]
    MissingHeader,
    /// No entry matches the caller.
    #[error("no identity issued")]
    NoIdentity,
    /// The caller's credentials are unavailable (not a unix socket peer).
    #[error("caller credentials are unavailable")]
    NoPeer,
    /// Attestation failed.
    #[error("workload attestation failed: {0}")]
    Attestation(#[from] AttestError),
    /// A required request field is empty.
    #[error("{0} must be specified")]
    Required(&'static str),
    /// Too many audiences, or one empty or too long.
    #[error(
        "at most 32 audiences of 1 to {} bytes each",
        lanyard_core::jwt::MAX_AUDIENCE_LEN
    )]
    BadAudience,
    /// The requested SPIFFE ID is not one of the caller's.
    #[error("no identity issued for {0}")]
    NotYours(String),
    /// A JWT-SVID could not be obtained.
    #[error("{0}")]
    JwtFetch(#[from] JwtFetchError),
    /// A JWT-SVID did not validate.
    #[error("{0}")]
    InvalidJwt(#[from] lanyard_core::jwt::JwtError),
    /// The agent is shutting down.
    #[error("agent is shutting down")]
    ShuttingDown,
    /// The agent has not received its entries from the server yet.
    #[error("the agent has not synchronised with the server yet; retry")]
    NotSynced,
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Self {
        match &e {
            WorkloadError::MissingHeader => Status::invalid_argument(e.to_string()),
            WorkloadError::NoIdentity => Status::permission_denied(e.to_string()),
            WorkloadError::NoPeer => Status::internal(e.to_string()),
            WorkloadError::Attestation(err) => {
                tracing::warn!(%err, "workload attestation failed");
                Status::unavailable(e.to_string())
            }
            WorkloadError::Required(_)
            | WorkloadError::InvalidJwt(_)
            | WorkloadError::BadAudience
            | WorkloadError::JwtFetch(JwtFetchError::Invalid(_)) => {
                Status::invalid_argument(e.to_string())
            }
            WorkloadError::NotYours(_) | WorkloadError::JwtFetch(JwtFetchError::Refused(_)) => {
                Status::permission_denied(e.to_string())
            }
            WorkloadError::JwtFetch(_) => Status::unavailable(e.to_string()),
            WorkloadError::ShuttingDown | WorkloadError::NotSynced => {
                Status::unavailable(e.to_string())
            }
        }
    }
}

/// The Workload API service.
#[derive(Clone)]
pub struct WorkloadApi {
    pub(crate) cache: watch::Receiver<Arc<Snapshot>>,
    pub(crate) attestor: Arc<dyn WorkloadAttestor>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) jwt: Arc<JwtCache>,
    /// Attestations by connection, reused for [`ATTESTATION_REUSE`].
    pub(crate) attested: Arc<std::sync::Mutex<HashMap<u64, ConnAttestation>>>,
}

fn check_header<T>(req: &Request<T>) -> Result<(), WorkloadError> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(WorkloadError::MissingHeader),
    }
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// A still-fresh attestation of the same process on this connection.
    fn reuse(&self, conn: u64, pid: Option<i32>) -> Option<Arc<Vec<Selector>>> {
        let pid = pid?;
        let cached = self
            .attested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&conn)
            .cloned()?;
        if cached.pid != pid || cached.at.elapsed() >= ATTESTATION_REUSE {
            return None;
        }
        // The same process instance must still be there (one /proc read).
        match crate::attestor::process_start_time(pid) {
            Ok(t) if t == cached.started => Some(cached.selectors),
            _ => None,
        }
    }

    fn remember(&self, conn: u64, peer: &PeerCred, selectors: &[Selector]) {
        let Some(pid) = peer.pid else { return };
        let Ok(started) = crate::attestor::process_start_time(pid) else {
            return;
        };
        // Never remember a process younger than the connection.
        if peer.connected_ticks.is_some_and(|t| started > t + 1) {
            return;
        }
        let mut m = self.attested.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 1024 {
            m.retain(|_, a| a.at.elapsed() < ATTESTATION_REUSE);
            if m.len() >= 4096 {
                return; // very many live connections: attest each call
            }
        }
        m.insert(
            conn,
            ConnAttestation {
                pid,
                started,
                at: std::time::Instant::now(),
                selectors: Arc::new(selectors.to_vec()),
            },
        );
    }

    /// Checks the header and attests the caller.
    async fn attest<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Vec<Selector>, PeerCred), WorkloadError> {
        check_header(req)?;
        let conn = req
            .extensions()
            .get::<ConnInfo>()
            .copied()
            .ok_or(WorkloadError::NoPeer)?;
        let cred = conn.cred.ok_or(WorkloadError::NoPeer)?;
        let peer = PeerCred {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
            connected_ticks: conn.accepted_ticks,
        };
        if let Some(s) = self.reuse(conn.id, peer.pid) {
            return Ok(((*s).clone(), peer));
        }
        // The cached case answers inline; only hashing a new executable
        // goes to a blocking thread.
        let selectors = match self.attestor.attest(peer, false)? {
            Some(s) => s,
            None => {
                let attestor = self.attestor.clone();
                tokio::task::spawn_blocking(move || attestor.attest(peer, true))
                    .await
                    .map_err(|_| WorkloadError::ShuttingDown)??
                    .ok_or(WorkloadError::ShuttingDown)?
            }
        };
        tracing::debug!(pid = ?peer.pid, uid = peer.uid, selectors = selectors.len(), "workload attested");
        self.remember(conn.id, &peer, &selectors);
        Ok((selectors, peer))
    }

    /// Streams `build(snapshot, svids)` whenever it changes, for as long as
    /// the caller has identities. `key` tells whether two states differ.
    /// The stream is driven by the connection (no task per stream): it ends
    /// when the client goes away.
    fn stream<T, K>(
        &self,
        selectors: Vec<Selector>,
        build: impl Fn(&Snapshot, &[Arc<CachedSvid>]) -> (K, T) + Send + Sync + 'static,
    ) -> Streamed<T>
    where
        T: Send + 'static,
        K: PartialEq + Send + 'static,
    {
        struct State<K, B> {
            cache: watch::Receiver<Arc<Snapshot>>,
            stop: watch::Receiver<bool>,
            clock: Arc<dyn Clock>,
            selectors: Vec<Selector>,
            last: Option<K>,
            build: B,
            done: bool,
        }
        let state = State {
            cache: self.cache.clone(),
            stop: self.shutdown.clone(),
            clock: self.clock.clone(),
            selectors,
            last: None,
            build,
            done: false,
        };
        Box::pin(futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let snap = st.cache.borrow_and_update().clone();
                let now = st.clock.now();
                let mut recheck: Option<SystemTime> = None;
                match snap.identities_for(&st.selectors, now) {
                    Identities::None if snap.synced => {
                        st.done = true;
                        return Some((Err(WorkloadError::NoIdentity.into()), st));
                    }
                    Identities::None | Identities::Pending => {}
                    Identities::Ready(svids) => {
                        recheck = svids.iter().map(|s| s.not_after).min();
                        let (key, msg) = (st.build)(&snap, &svids);
                        if st.last.as_ref() != Some(&key) {
                            st.last = Some(key);
                            return Some((Ok(msg), st));
                        }
                    }
                }
                let wait = recheck
                    .and_then(|t| t.duration_since(now).ok())
                    .map_or(Duration::from_secs(3600), |d| d + Duration::from_millis(10));
                let stop = &mut st.stop;
                tokio::select! {
                    r = st.cache.changed() => if r.is_err() { return None },
                    () = tokio::time::sleep(wait) => {}
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        st.done = true;
                        return Some((Err(WorkloadError::ShuttingDown.into()), st));
                    }
                }
            }
        }))
    }
}

fn x509_response(snap: &Snapshot, svids: &[Arc<CachedSvid>]) -> (Vec<String>, X509svidResponse) {
    let bundle = snap.bundle.concat();
    let mut key: Vec<String> = svids.iter().map(|s| s.serial.clone()).collect();
    key.push(format!("bundle:{}:{}", snap.bundle_sequence, bundle.len()));
    let msg = X509svidResponse {
        svids: svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: s.chain.concat(),
                x509_svid_key: s.key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: s.hint.clone(),
            })
            .collect(),
        crl: vec![],
        federated_bundles: HashMap::new(),
    };
    (key, msg)
}

fn bundles_response(snap: &Snapshot, _: &[Arc<CachedSvid>]) -> (Vec<Vec<u8>>, X509BundlesResponse) {
    let mut bundles = HashMap::new();
    bundles.insert(snap.trust_domain.id_string(), snap.bundle.concat());
    (
        (*snap.bundle).clone(),
        X509BundlesResponse {
            crl: vec![],
            bundles,
        },
    )
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;

    #[instrument(skip_all)]
    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (selectors, _) = self.attest(&req).await?;
        Ok(Response::new(self.stream(selectors, x509_response)))
    }

    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;

    #[instrument(skip_all)]
    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (selectors, _) = self.attest(&req).await?;
        Ok(Response::new(self.stream(selectors, bundles_response)))
    }

    #[instrument(skip_all)]
    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        let audience = &req.get_ref().audience;
        if audience.is_empty() {
            return Err(WorkloadError::Required("audience").into());
        }
        if audience.len() > 32
            || audience
                .iter()
                .any(|a| a.is_empty() || a.len() > lanyard_core::jwt::MAX_AUDIENCE_LEN)
        {
            return Err(WorkloadError::BadAudience.into());
        }
        let (selectors, _) = self.attest(&req).await?;
        let JwtsvidRequest {
            audience,
            spiffe_id,
        } = req.into_inner();
        let snap = self.cache.borrow().clone();
        let mut entries = snap.entries_for(&selectors);
        if entries.is_empty() {
            return Err(if snap.synced {
                WorkloadError::NoIdentity
            } else {
                WorkloadError::NotSynced
            }
            .into());
        }
        if !spiffe_id.is_empty() {
            entries.retain(|e| e.spiffe_id.as_str() == spiffe_id);
            if entries.is_empty() {
                return Err(WorkloadError::NotYours(spiffe_id).into());
            }
        }
        let now = self.clock.now();
        let usable: Vec<&str> = snap
            .jwt_authorities
            .iter()
            .map(|a| a.key_id.as_str())
            .filter(|k| !snap.tainted.iter().any(|t| t == k))
            .collect();
        let mut svids = Vec::with_capacity(entries.len());
        for e in entries {
            let token = self
                .jwt
                .token(e.id.as_str(), e.spiffe_id.as_str(), &audience, now, &usable)
                .await
                .map_err(WorkloadError::from)?;
            svids.push(Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: token,
                hint: e.hint.clone(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    #[instrument(skip_all)]
    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let (tx, rx) = mpsc::channel(2);
        let mut cache = self.cache.clone();
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last: Option<Arc<Vec<lanyard_core::jwt::JwtAuthority>>> = None;
            loop {
                let snap = cache.borrow_and_update().clone();
                let changed = last.as_ref().is_none_or(|l| **l != *snap.jwt_authorities);
                if snap.synced && changed {
                    let msg = match lanyard_core::jwt::jwks_for_workloads(&snap.jwt_authorities) {
                        Ok(jwks) => {
                            let mut bundles = HashMap::new();
                            bundles.insert(snap.trust_domain.id_string(), jwks);
                            Ok(JwtBundlesResponse { bundles })
                        }
                        Err(e) => Err(Status::internal(e.to_string())),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    last = Some(snap.jwt_authorities.clone());
                }
                tokio::select! {
                    r = cache.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(WorkloadError::ShuttingDown.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all)]
    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let ValidateJwtsvidRequest { audience, svid } = req.into_inner();
        if audience.is_empty() {
            return Err(WorkloadError::Required("audience").into());
        }
        if svid.is_empty() {
            return Err(WorkloadError::Required("svid").into());
        }
        let snap = self.cache.borrow().clone();
        let v = lanyard_core::jwt::validate_jwt_svid(
            &svid,
            &audience,
            &snap.trust_domain,
            &snap.jwt_authorities,
            self.clock.now(),
        )
        .map_err(WorkloadError::from)?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id.to_string(),
            claims: Some(lanyard_proto::convert::json_to_struct(&v.claims)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestor::UnixAttestor;
    use lanyard_core::TrustDomain;
    use lanyard_core::clock::SystemClock;

    fn api() -> WorkloadApi {
        let (_, cache) = watch::channel(Arc::new(Snapshot::empty(TrustDomain::new("td").unwrap())));
        let (_, shutdown) = watch::channel(false);
        let (_, server) = watch::channel(None);
        WorkloadApi {
            cache,
            attestor: Arc::new(UnixAttestor::default()),
            clock: Arc::new(SystemClock),
            shutdown,
            jwt: Arc::new(JwtCache::new(server)),
            attested: Arc::default(),
        }
    }

    #[test]
    fn attestation_is_reused_only_for_the_same_process_on_the_same_connection() {
        let api = api();
        let me = std::process::id() as i32;
        let sels: Vec<Selector> = vec!["unix:uid:1".parse().unwrap()];
        assert!(api.reuse(7, Some(me)).is_none());
        let peer = PeerCred {
            pid: Some(me),
            uid: 0,
            gid: 0,
            connected_ticks: crate::listener::uptime_ticks(),
        };
        api.remember(7, &peer, &sels);
        assert_eq!(*api.reuse(7, Some(me)).unwrap(), sels);
        // Another connection, another PID, or no PID: attest afresh.
        assert!(api.reuse(8, Some(me)).is_none());
        assert!(api.reuse(7, Some(me + 1)).is_none());
        assert!(api.reuse(7, None).is_none());
        // A different process instance behind the same PID (start time
        // differs) is not served from the cache.
        api.attested.lock().unwrap().get_mut(&7).unwrap().started += 1;
        assert!(api.reuse(7, Some(me)).is_none());
        // A process that started after the connection is never remembered.
        let young = PeerCred {
            connected_ticks: Some(0),
            ..peer
        };
        api.remember(9, &young, &sels);
        assert!(api.reuse(9, Some(me)).is_none());
    }
}
