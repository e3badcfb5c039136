//! WIT-SVIDs for workloads' standing identities: one per entry, each bound
//! to a key generated here for it, renewed at half its life, and served
//! while still valid when the server cannot be reached.
//!
//! The cache holds one WIT per entry the node serves, so it is bounded by
//! the entries; those no longer in the snapshot are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lanyard_core::clock::{Clock, from_unix_secs};
use lanyard_core::jwt::wit::WorkloadKey;
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId};

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

/// The WITs of the node's entries.
pub struct WitCache {
    identity: IdentityHandle,
    clock: Arc<dyn Clock>,
    wits: Mutex<HashMap<EntryId, Arc<Wit>>>,
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

    fn cached(&self, id: &EntryId) -> Option<Arc<Wit>> {
        self.wits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The WIT of `entry`: the cached one before its refresh time, else a
    /// new one (a fresh key, signed by the server); the cached one while
    /// still valid if the server cannot sign.
    pub async fn get(&self, entry: &RegistrationEntry) -> Result<Arc<Wit>, CommandError> {
        let fresh = |w: &Arc<Wit>, now| now < w.refresh_at;
        if let Some(w) = self
            .cached(&entry.id)
            .filter(|w| fresh(w, self.clock.now()))
        {
            return Ok(w);
        }
        let _one = self.signing.lock().await;
        let now = self.clock.now();
        let old = self.cached(&entry.id);
        if let Some(w) = old.as_ref().filter(|w| fresh(w, now)) {
            return Ok(w.clone());
        }
        let signed = match WorkloadKey::generate() {
            Ok(key) => self
                .identity
                .sign_wit(entry.id.to_string(), key.public_jwk().to_string())
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
                    spiffe_id: entry.spiffe_id.clone(),
                    token: r.token,
                    key_jwk,
                    jti: r.jti,
                    refresh_at: now + life / 2,
                    expires_at,
                });
                self.wits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entry.id.clone(), wit.clone());
                Ok(wit)
            }
            Err(e) => match old.filter(|w| now < w.expires_at) {
                Some(w) => {
                    tracing::warn!(spiffe_id = %entry.spiffe_id, err = %e, "cannot renew a WIT-SVID; serving the current one");
                    Ok(w)
                }
                None => Err(e),
            },
        }
    }

    /// Drops the WITs of entries not in `live`.
    pub fn retain(&self, live: &[&EntryId]) {
        self.wits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(&id));
    }
}
