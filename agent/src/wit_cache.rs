//! WIT-SVIDs for workloads: one per entry and one per task held, each
//! bound to a key generated here for it, renewed at half its life, and
//! served while still valid when the server cannot be reached.
//!
//! The cache holds one WIT per entry and task the node serves, so it is
//! bounded by them; those no longer in the snapshot are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_core::SpiffeId;
use lanyard_core::clock::{Clock, from_unix_secs};
use lanyard_core::jwt::wit::WorkloadKey;
use lanyard_proto::server::SignWitSvidRequest;

use crate::identity::{CommandError, IdentityHandle};

/// A WIT-SVID and the private key it is bound to.
pub struct Wit {
    /// Its subject.
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    /// The private key, as a JWK JSON text (for the workload only).
    pub key_jwk: String,
    /// `jti`.
    pub jti: String,
    /// Renewed from this time on.
    pub refresh_at: SystemTime,
    /// `exp`.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Wit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wit")
            .field("spiffe_id", &self.spiffe_id)
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a WIT is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WitFor {
    /// A standing identity: the entry's ID.
    Entry(String),
    /// A task held: its ID and its holder's executable digest.
    Task(String, String),
}

impl WitFor {
    fn request(&self, public_jwk: String) -> SignWitSvidRequest {
        match self {
            Self::Entry(id) => SignWitSvidRequest {
                entry_id: id.clone(),
                public_jwk,
                ..Default::default()
            },
            Self::Task(id, exe) => SignWitSvidRequest {
                task_id: id.clone(),
                exe_sha256: exe.clone(),
                public_jwk,
                ..Default::default()
            },
        }
    }

    /// The cache key: an entry ID and a task ID never collide.
    fn key(&self) -> String {
        match self {
            Self::Entry(id) => format!("entry {id}"),
            Self::Task(id, _) => format!("task {id}"),
        }
    }
}

/// The WITs of the node's entries and tasks.
pub struct WitCache {
    identity: IdentityHandle,
    clock: Arc<dyn Clock>,
    wits: Mutex<HashMap<String, Arc<Wit>>>,
    /// One signing at a time: concurrent streams of one entry share it.
    signing: tokio::sync::Mutex<()>,
}

impl WitCache {
    /// A cache signing through `identity`.
    pub fn new(identity: IdentityHandle, clock: Arc<dyn Clock>) -> Self {
        Self {
            identity,
            clock,
            wits: Mutex::new(HashMap::new()),
            signing: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, id: &str) -> Option<Arc<Wit>> {
        self.wits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The WIT `of` the identity `spiffe_id`: the cached one before its
    /// refresh time, else a new one (a fresh key, signed by the server);
    /// the cached one while still valid if the server cannot sign.
    pub async fn get(&self, of: &WitFor, spiffe_id: &SpiffeId) -> Result<Arc<Wit>, CommandError> {
        let id = of.key();
        let fresh = |w: &Arc<Wit>, now| now < w.refresh_at;
        if let Some(w) = self.cached(&id).filter(|w| fresh(w, self.clock.now())) {
            return Ok(w);
        }
        let _one = self.signing.lock().await;
        let now = self.clock.now();
        let old = self.cached(&id);
        if let Some(w) = old.as_ref().filter(|w| fresh(w, now)) {
            return Ok(w.clone());
        }
        let signed = match WorkloadKey::generate() {
            Ok(key) => self
                .identity
                .sign_wit(of.request(key.public_jwk().to_string()))
                .await
                .and_then(|r| {
                    let key_jwk = key.private_jwk().map_err(|e| {
                        CommandError::Server(tonic::Status::internal(e.to_string()))
                    })?;
                    Ok((r, key_jwk))
                }),
            Err(e) => Err(CommandError::Server(tonic::Status::internal(e.to_string()))),
        };
        match signed {
            Ok((r, key_jwk)) => {
                let expires_at = from_unix_secs(u64::try_from(r.expires_at).unwrap_or(0));
                let life = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
                let wit = Arc::new(Wit {
                    spiffe_id: spiffe_id.clone(),
                    token: r.token,
                    key_jwk,
                    jti: r.jti,
                    refresh_at: now + life / 2,
                    expires_at,
                });
                self.wits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(of.key(), wit.clone());
                Ok(wit)
            }
            Err(e) => match old.filter(|w| now < w.expires_at) {
                Some(w) => {
                    tracing::warn!(%spiffe_id, err = %e, "cannot renew a WIT-SVID; serving the current one");
                    Ok(w)
                }
                None => Err(e),
            },
        }
    }

    /// Drops the WITs of entries and tasks not in `live`.
    pub fn retain(&self, live: &[WitFor]) {
        let keys: std::collections::HashSet<String> = live.iter().map(WitFor::key).collect();
        self.wits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keys.contains(k));
    }
}
