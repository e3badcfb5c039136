//! `SpiffeWorkloadAPI` on the agent's unix socket, following the SPIFFE
//! Workload API specification's status codes and texts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lanyard_core::clock::Clock;
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use lanyard_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse,
    WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid,
    X509svidRequest, X509svidResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::caller::{Caller, Callers, check_header};
use super::status::WorkloadError;
use super::streams::{Build, Shared, StreamSource, Streamed, follow};
use crate::cache::{CachedSvid, Snapshot};
use crate::identity::JwtSubject;
use crate::jwt_cache::JwtCache;
use crate::workload_scope::WorkloadScope;

/// The Workload API service.
#[derive(Clone)]
pub struct WorkloadApi {
    cache: watch::Receiver<Arc<Snapshot>>,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
    jwt: Arc<JwtCache>,
    callers: Arc<Callers>,
    expiry: watch::Receiver<u64>,
    /// WIT-SVIDs, when the profile is served.
    wit: Option<Arc<crate::wit_cache::WitCache>>,
}

impl WorkloadApi {
    /// The service over the agent's published state; `expiry` ticks when
    /// an SVID in it expires (an [`ExpiryTicker`](super::ExpiryTicker)'s).
    pub fn new(
        cache: watch::Receiver<Arc<Snapshot>>,
        callers: Arc<Callers>,
        clock: Arc<dyn Clock>,
        shutdown: watch::Receiver<bool>,
        jwt: Arc<JwtCache>,
        expiry: watch::Receiver<u64>,
    ) -> Self {
        Self {
            cache,
            clock,
            shutdown,
            jwt,
            callers,
            expiry,
            wit: None,
        }
    }

    /// Serves the WIT-SVID profile with `cache`.
    #[must_use]
    pub fn with_wit(mut self, cache: Arc<crate::wit_cache::WitCache>) -> Self {
        self.wit = Some(cache);
        self
    }

    /// Attests the caller and refuses it when it is quarantined.
    async fn attest<T>(&self, req: &Request<T>) -> Result<Caller, WorkloadError> {
        let hash = self.cache.borrow().entries.uses_sha256();
        let caller = self.callers.attest(req, hash).await?;
        let snap = self.cache.borrow().clone();
        if let Some(q) = snap.quarantine_of(&caller.selectors, caller.conn.instance.as_deref()) {
            return Err(WorkloadError::Quarantined(q.reason.clone()));
        }
        Ok(caller)
    }

    fn source(&self) -> StreamSource {
        StreamSource {
            cache: self.cache.clone(),
            stop: self.shutdown.clone(),
            clock: self.clock.clone(),
            expiry: self.expiry.clone(),
        }
    }
}

type Ders = Vec<Vec<u8>>;

/// What an X.509-SVID response is built from: the SVIDs (by serial), the
/// bundle and the CRLs. A stream sends again when any of them changes.
struct X509Key {
    svids: Vec<Arc<CachedSvid>>,
    bundle: Shared<Ders>,
    crls: Shared<Ders>,
}

impl PartialEq for X509Key {
    fn eq(&self, other: &Self) -> bool {
        self.svids.len() == other.svids.len()
            && self
                .svids
                .iter()
                .zip(&other.svids)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.serial == b.serial)
            && self.bundle == other.bundle
            && self.crls == other.crls
    }
}

const X509: Build<X509Key, X509svidResponse> = Build {
    key: |snap, svids| X509Key {
        svids: svids.to_vec(),
        bundle: Shared(snap.bundle.clone()),
        crls: Shared(snap.crls.clone()),
    },
    message: x509_response,
};

fn x509_response(snap: &Snapshot, svids: &[Arc<CachedSvid>]) -> X509svidResponse {
    let bundle = snap.bundle.concat();
    // Hints must be unique within a response (SPIFFE Workload API): a
    // repeated hint is sent only on its first SVID.
    let mut hints = HashSet::new();
    X509svidResponse {
        svids: svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: s.chain.concat(),
                x509_svid_key: s.key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: if s.hint.is_empty() || hints.insert(s.hint.as_str()) {
                    s.hint.clone()
                } else {
                    String::new()
                },
            })
            .collect(),
        crl: snap.crls.to_vec(),
        federated_bundles: HashMap::new(),
    }
}

const X509_BUNDLES: Build<(Shared<Ders>, Shared<Ders>), X509BundlesResponse> = Build {
    key: |snap, _| (Shared(snap.bundle.clone()), Shared(snap.crls.clone())),
    message: |snap, _| X509BundlesResponse {
        crl: snap.crls.to_vec(),
        bundles: HashMap::from([(snap.trust_domain.id_string(), snap.bundle.concat())]),
    },
};

const JWT_BUNDLES: Build<Shared<Vec<lanyard_core::jwt::JwtAuthority>>, JwtBundlesResponse> =
    Build {
        key: |snap, _| Shared(snap.jwt_authorities.clone()),
        message: |snap, _| {
            let jwks =
                lanyard_core::jwt::jwks_for_workloads(&snap.jwt_authorities).unwrap_or_default();
            JwtBundlesResponse {
                bundles: HashMap::from([(snap.trust_domain.id_string(), jwks)]),
            }
        },
    };

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;

    #[instrument(level = "debug", skip_all)]
    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.attest(&req).await?;
        Ok(Response::new(follow(self.source(), caller, X509)))
    }

    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;

    #[instrument(level = "debug", skip_all)]
    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.attest(&req).await?;
        Ok(Response::new(follow(self.source(), caller, X509_BUNDLES)))
    }

    #[instrument(level = "debug", skip_all)]
    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        let audience = &req.get_ref().audience;
        if audience.is_empty() {
            return Err(WorkloadError::Required("audience").into());
        }
        if !lanyard_core::jwt::audiences_ok(audience) {
            return Err(WorkloadError::BadAudience.into());
        }
        let caller = self.attest(&req).await?;
        let JwtsvidRequest {
            audience,
            spiffe_id,
        } = req.into_inner();
        let snap = self.cache.borrow().clone();
        let holder = caller.conn.instance.as_deref();
        // The caller's tasks first (newest first), then its standing
        // identities: a process inside a task gets task JWTs by default.
        let mut subjects: Vec<(JwtSubject, &lanyard_core::SpiffeId, String, &str)> = snap
            .tasks_for(&caller.selectors, holder)
            .map(|t| {
                (
                    JwtSubject::Task(t.id().to_owned()),
                    &t.record.grant.spiffe_id,
                    t.hint(),
                    t.exe_sha256.as_str(),
                )
            })
            .collect();
        subjects.extend(snap.entries_for(&caller.selectors).into_iter().map(|e| {
            (
                JwtSubject::Entry(e.id.to_string()),
                &e.spiffe_id,
                e.hint.clone(),
                "",
            )
        }));
        if subjects.is_empty() {
            return Err(if snap.synced {
                caller.no_identity()
            } else {
                WorkloadError::NotSynced
            }
            .into());
        }
        // Identities a quarantine withholds from the caller's workload.
        if !snap.quarantines.is_empty() {
            let scope = WorkloadScope::of(&caller.selectors);
            let mut withheld: Option<(String, bool)> = None;
            subjects.retain(|(_, id, _, _)| {
                let Some(q) = snap.withheld(id.as_str(), scope.as_ref()) else {
                    return true;
                };
                let asked = id.as_str() == spiffe_id;
                if withheld.as_ref().is_none_or(|(_, a)| !a) {
                    withheld = Some((q.reason.clone(), asked));
                }
                false
            });
            if let Some((reason, asked)) = withheld
                && (asked || subjects.is_empty())
            {
                return Err(WorkloadError::Quarantined(reason).into());
            }
        }
        if !spiffe_id.is_empty() {
            subjects.retain(|(_, id, _, _)| id.as_str() == spiffe_id);
            if subjects.is_empty() {
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
        let mut svids = Vec::with_capacity(subjects.len());
        let mut hints = HashSet::new();
        for (subject, id, hint, exe_sha256) in subjects {
            let token = self
                .jwt
                .token(
                    caller.key(),
                    &subject,
                    id.as_str(),
                    &audience,
                    now,
                    &usable,
                    exe_sha256,
                )
                .await
                .map_err(WorkloadError::from)?;
            let hint = if hint.is_empty() || hints.insert(hint.clone()) {
                hint
            } else {
                String::new()
            };
            svids.push(Jwtsvid {
                spiffe_id: id.to_string(),
                svid: token,
                hint,
            });
        }
        caller.recheck()?;
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    /// Like the X.509 bundle stream, only for a caller with an identity
    /// (the SPIFFE specification: PermissionDenied otherwise).
    #[instrument(level = "debug", skip_all)]
    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.attest(&req).await?;
        Ok(Response::new(follow(self.source(), caller, JWT_BUNDLES)))
    }

    #[instrument(level = "debug", skip_all)]
    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let (meta, ext, msg) = req.into_parts();
        let req_meta = Request::from_parts(meta, ext, ());
        let ValidateJwtsvidRequest { audience, svid } = msg;
        if audience.is_empty() {
            return Err(WorkloadError::Required("audience").into());
        }
        if svid.is_empty() {
            return Err(WorkloadError::Required("svid").into());
        }
        self.attest(&req_meta).await?;
        let snap = self.cache.borrow().clone();
        let v = lanyard_core::jwt::validate_jwt_svid(
            &svid,
            &audience,
            &snap.trust_domain,
            &snap.jwt_authorities,
            self.clock.now(),
        )
        .map_err(WorkloadError::from)?;
        if let Some(r) = crate::pdp::jwt_revocation(&snap.revocations, &v) {
            return Err(WorkloadError::Revoked(format!(
                "JWT-SVID revoked ({} {}): {}",
                r.kind, r.value, r.reason
            ))
            .into());
        }
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id.to_string(),
            claims: Some(lanyard_proto::convert::json_to_struct(&v.claims)),
        }))
    }

    type FetchWITSVIDStream = Streamed<WitsvidResponse>;

    /// The WIT-SVID profile is optional (Incubating): served when
    /// `[workload_api] wit = true`, otherwise Unimplemented as the standard
    /// requires.
    #[instrument(level = "debug", skip_all)]
    async fn fetch_witsvid(
        &self,
        req: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        let Some(wits) = self.wit.clone() else {
            return Err(Status::unimplemented(WIT_UNSERVED));
        };
        let caller = self.attest(&req).await?;
        let want = req.into_inner().spiffe_id;
        Ok(Response::new(super::wit::wit_svids(
            self.source(),
            caller,
            want,
            wits,
        )))
    }

    type FetchWITBundlesStream = Streamed<WitBundlesResponse>;

    #[instrument(level = "debug", skip_all)]
    async fn fetch_wit_bundles(
        &self,
        req: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        if self.wit.is_none() {
            return Err(Status::unimplemented(WIT_UNSERVED));
        }
        let caller = self.attest(&req).await?;
        Ok(Response::new(follow(
            self.source(),
            caller,
            super::wit::WIT_BUNDLES,
        )))
    }
}

/// Why the WIT-SVID profile's calls are refused when it is off.
const WIT_UNSERVED: &str = "this Workload API endpoint does not serve the WIT-SVID profile (enable it with [workload_api] wit = true)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures;
    use lanyard_core::TrustDomain;

    fn svid(id: &str, hint: &str) -> Arc<CachedSvid> {
        let mut e = fixtures::entry(id, 0, "unix:uid:1");
        e.hint = hint.to_owned();
        fixtures::svid(&e, std::time::SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn hints_are_unique_in_a_response() {
        let snap = Snapshot::empty(TrustDomain::new("td").unwrap());
        let svids = vec![
            svid("a", "db"),
            svid("b", "db"),
            svid("c", ""),
            svid("d", ""),
            svid("e", "web"),
        ];
        let msg = x509_response(&snap, &svids);
        let hints: Vec<&str> = msg.svids.iter().map(|s| s.hint.as_str()).collect();
        assert_eq!(hints, vec!["db", "", "", "", "web"]);
    }
}
