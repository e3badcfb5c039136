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
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::attestor::{AttestError, PeerCred, WorkloadAttestor};
use crate::cache::{CachedSvid, Identities, Snapshot};

/// The metadata key every Workload API request must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

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
    /// The RPC is not offered.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// The agent is shutting down.
    #[error("agent is shutting down")]
    ShuttingDown,
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
            WorkloadError::Unimplemented(_) => Status::unimplemented(e.to_string()),
            WorkloadError::ShuttingDown => Status::unavailable(e.to_string()),
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
}

fn check_header<T>(req: &Request<T>) -> Result<(), WorkloadError> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(WorkloadError::MissingHeader),
    }
}

fn concat(certs: &[Vec<u8>]) -> Vec<u8> {
    certs.concat()
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// Checks the header and attests the caller.
    async fn attest<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Vec<Selector>, PeerCred), WorkloadError> {
        check_header(req)?;
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or(WorkloadError::NoPeer)?;
        let peer = PeerCred {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let attestor = self.attestor.clone();
        let selectors = tokio::task::spawn_blocking(move || attestor.attest(peer))
            .await
            .map_err(|_| WorkloadError::ShuttingDown)??;
        tracing::debug!(pid = ?peer.pid, uid = peer.uid, selectors = selectors.len(), "workload attested");
        Ok((selectors, peer))
    }

    /// Streams `build(snapshot, svids)` whenever it changes, for as long as
    /// the caller has identities. `key` tells whether two states differ.
    fn stream<T, K>(
        &self,
        selectors: Vec<Selector>,
        build: impl Fn(&Snapshot, &[Arc<CachedSvid>]) -> (K, T) + Send + 'static,
    ) -> Streamed<T>
    where
        T: Send + 'static,
        K: PartialEq + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(2);
        let mut cache = self.cache.clone();
        let mut stop = self.shutdown.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut last: Option<K> = None;
            loop {
                let snap = cache.borrow_and_update().clone();
                let now = clock.now();
                let mut recheck: Option<SystemTime> = None;
                match snap.identities_for(&selectors, now) {
                    Identities::None if snap.synced => {
                        let _ = tx.send(Err(WorkloadError::NoIdentity.into())).await;
                        return;
                    }
                    Identities::None | Identities::Pending => {}
                    Identities::Ready(svids) => {
                        recheck = svids.iter().map(|s| s.not_after).min();
                        let (key, msg) = build(&snap, &svids);
                        if last.as_ref() != Some(&key) {
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                            last = Some(key);
                        }
                    }
                }
                let wait = recheck
                    .and_then(|t| t.duration_since(now).ok())
                    .map_or(Duration::from_secs(3600), |d| d + Duration::from_millis(10));
                tokio::select! {
                    r = cache.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                    () = tx.closed() => return,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(WorkloadError::ShuttingDown.into())).await;
                        return;
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn x509_response(snap: &Snapshot, svids: &[Arc<CachedSvid>]) -> (Vec<String>, X509svidResponse) {
    let bundle = concat(&snap.bundle);
    let mut key: Vec<String> = svids.iter().map(|s| s.serial.clone()).collect();
    key.push(format!("bundle:{}:{}", snap.bundle_sequence, bundle.len()));
    let msg = X509svidResponse {
        svids: svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: concat(&s.chain),
                x509_svid_key: s.key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: snap
                    .entries
                    .iter()
                    .find(|e| e.id == s.entry_id)
                    .map(|e| e.hint.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        crl: vec![],
        federated_bundles: HashMap::new(),
    };
    (key, msg)
}

fn bundles_response(snap: &Snapshot, _: &[Arc<CachedSvid>]) -> (Vec<Vec<u8>>, X509BundlesResponse) {
    let mut bundles = HashMap::new();
    bundles.insert(snap.trust_domain.id_string(), concat(&snap.bundle));
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
        Err(WorkloadError::Unimplemented("JWT-SVIDs are not supported by this agent yet").into())
    }

    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    #[instrument(skip_all)]
    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        Err(WorkloadError::Unimplemented("JWT bundles are not supported by this agent yet").into())
    }

    #[instrument(skip_all)]
    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        Err(
            WorkloadError::Unimplemented("JWT-SVID validation is not supported by this agent yet")
                .into(),
        )
    }
}
