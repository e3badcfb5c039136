//! The server's X.509 certificate authority: loaded from the store at start
//! (or created on first run), published as the trust bundle, and used to
//! sign agent and workload SVIDs and the server's own TLS identity.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lanyard_core::TrustDomain;
use lanyard_core::clock::{Clock, from_unix_secs, unix_secs};
use lanyard_core::jwt::{JwtAuthority, JwtError, JwtSigner};
use lanyard_core::tls::X509BundleSource;
use lanyard_core::x509::{SvidError, X509Authority};
use lanyard_proto::types;
use tokio::sync::watch;

use crate::store::{CaKeyRecord, CaKeyState, JwtKeyRecord, Store, StoreError};

/// Store counter holding the bundle sequence number.
const SEQUENCE: &str = "bundle_sequence";
/// Refresh hint published with the bundle.
pub const REFRESH_HINT_SECS: u64 = 60;

/// Why the CA could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing CA keys failed.
    #[error("CA store: {0}")]
    Store(#[from] StoreError),
    /// A stored key is unusable or signing failed.
    #[error("CA: {0}")]
    Svid(#[from] SvidError),
    /// A stored JWT key is unusable.
    #[error("JWT key: {0}")]
    Jwt(#[from] JwtError),
}

/// What the CA publishes at one moment.
#[derive(Debug)]
pub struct CaSnapshot {
    /// The key that signs new SVIDs.
    pub active: Arc<X509Authority>,
    /// Every published CA certificate (DER), active first.
    pub authorities: Arc<Vec<Vec<u8>>>,
    /// The key that signs new JWT-SVIDs.
    pub jwt_active: Arc<JwtSigner>,
    /// Every published JWT key, active first.
    pub jwt_authorities: Arc<Vec<JwtAuthority>>,
    /// Bundle sequence number, bumped on every change.
    pub sequence: u64,
}

impl CaSnapshot {
    /// The bundle as a protobuf message.
    pub fn to_proto(&self, td: &TrustDomain) -> types::Bundle {
        types::Bundle {
            trust_domain: td.to_string(),
            x509_authorities: self.authorities.to_vec(),
            sequence: self.sequence,
            refresh_hint_seconds: i64::try_from(REFRESH_HINT_SECS).unwrap_or(60),
            jwt_authorities: self
                .jwt_authorities
                .iter()
                .map(|a| types::JwtAuthority {
                    key_id: a.key_id.clone(),
                    public_key: a.public_key.clone(),
                    expires_at: i64::try_from(a.expires_at).unwrap_or(i64::MAX),
                })
                .collect(),
        }
    }
}

/// The certificate authority, behind a cheap clone.
#[derive(Clone)]
pub struct Ca {
    inner: Arc<Inner>,
}

struct Inner {
    td: TrustDomain,
    state: RwLock<Arc<CaSnapshot>>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("td", &self.inner.td).finish()
    }
}

impl Ca {
    /// Loads the active CA and JWT keys from the store, or creates and
    /// persists new ones when there are none or they have expired.
    pub fn load_or_create(
        td: &TrustDomain,
        store: &dyn Store,
        clock: &dyn Clock,
        ca_ttl: Duration,
    ) -> Result<Self, CaError> {
        let (active, published, x509_changed) = load_x509(td, store, clock, ca_ttl)?;
        let (jwt_active, jwt_published, jwt_changed) = load_jwt(store, clock, ca_ttl)?;
        let mut authorities = vec![active.cert_der().to_vec()];
        authorities.extend(published);
        let mut jwt_authorities = vec![jwt_active.authority()];
        jwt_authorities.extend(jwt_published);
        let sequence = if x509_changed || jwt_changed || store.counter(SEQUENCE)? == 0 {
            store.bump_counter(SEQUENCE)?
        } else {
            store.counter(SEQUENCE)?
        };
        let snapshot = CaSnapshot {
            active: Arc::new(active),
            authorities: Arc::new(authorities),
            jwt_active: Arc::new(jwt_active),
            jwt_authorities: Arc::new(jwt_authorities),
            sequence,
        };
        let (changes, _) = watch::channel(sequence);
        Ok(Self {
            inner: Arc::new(Inner {
                td: td.clone(),
                state: RwLock::new(Arc::new(snapshot)),
                changes,
            }),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CaSnapshot> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.td
    }

    /// Notified with the bundle sequence on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

/// The active X.509 authority, the other published CA certificates, and
/// whether anything changed in the store.
fn load_x509(
    td: &TrustDomain,
    store: &dyn Store,
    clock: &dyn Clock,
    ca_ttl: Duration,
) -> Result<(X509Authority, Vec<Vec<u8>>, bool), CaError> {
    let now = clock.now();
    let mut published = Vec::new();
    let mut active: Option<X509Authority> = None;
    let mut changed = false;
    for rec in store.list_ca_keys()? {
        let auth = X509Authority::from_parts(&rec.cert_der, &rec.key_pkcs8)?;
        if auth.info().not_after <= now {
            tracing::info!(key_id = %rec.id, "removing expired CA key");
            store.delete_ca_key(&rec.id)?;
            changed = true;
            continue;
        }
        if rec.state == CaKeyState::Active
            && active
                .as_ref()
                .is_none_or(|a| a.info().not_after < auth.info().not_after)
        {
            if let Some(prev) = active.replace(auth) {
                published.push(prev.cert_der().to_vec());
            }
        } else {
            published.push(rec.cert_der);
        }
    }
    if let Some(a) = active {
        tracing::info!(key_id = %a.info().subject_key_id, "loaded CA key");
        return Ok((a, published, changed));
    }
    let a = X509Authority::generate_root(td, now, ca_ttl)?;
    store.put_ca_key(&CaKeyRecord {
        id: a.info().subject_key_id.clone(),
        cert_der: a.cert_der().to_vec(),
        key_pkcs8: a.key_pkcs8_der(),
        state: CaKeyState::Active,
    })?;
    tracing::info!(key_id = %a.info().subject_key_id, ttl = ?ca_ttl, "created new CA key");
    Ok((a, published, true))
}

/// The active JWT key, the other published JWT keys, and whether anything
/// changed in the store.
fn load_jwt(
    store: &dyn Store,
    clock: &dyn Clock,
    ttl: Duration,
) -> Result<(JwtSigner, Vec<JwtAuthority>, bool), CaError> {
    let now = unix_secs(clock.now());
    let mut published = Vec::new();
    let mut active: Option<JwtSigner> = None;
    let mut changed = false;
    for rec in store.list_jwt_keys()? {
        if rec.not_after <= now {
            tracing::info!(kid = %rec.kid, "removing expired JWT key");
            store.delete_jwt_key(&rec.kid)?;
            changed = true;
            continue;
        }
        let signer =
            JwtSigner::from_parts(&rec.kid, &rec.key_pkcs8, from_unix_secs(rec.not_after))?;
        if rec.state == CaKeyState::Active
            && active
                .as_ref()
                .is_none_or(|a| a.not_after() < signer.not_after())
        {
            if let Some(prev) = active.replace(signer) {
                published.push(prev.authority());
            }
        } else {
            published.push(signer.authority());
        }
    }
    if let Some(a) = active {
        tracing::info!(kid = %a.key_id(), "loaded JWT key");
        return Ok((a, published, changed));
    }
    let signer = JwtSigner::generate(clock.now() + ttl)?;
    store.put_jwt_key(&JwtKeyRecord {
        kid: signer.key_id().to_owned(),
        key_pkcs8: signer.pkcs8().to_vec(),
        not_after: unix_secs(signer.not_after()),
        state: CaKeyState::Active,
    })?;
    tracing::info!(kid = %signer.key_id(), "created new JWT key");
    Ok((signer, published, true))
}

impl X509BundleSource for Ca {
    fn x509_authorities(&self) -> Arc<Vec<Vec<u8>>> {
        self.snapshot().authorities.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use lanyard_core::clock::FakeClock;

    #[test]
    fn creates_once_then_reuses_and_replaces_when_expired() {
        let td = TrustDomain::new("td").unwrap();
        let store = MemoryStore::default();
        let clock = FakeClock::at(1_800_000_000);
        let a = Ca::load_or_create(&td, &store, &clock, Duration::from_secs(3600)).unwrap();
        let b = Ca::load_or_create(&td, &store, &clock, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            a.snapshot().active.cert_der(),
            b.snapshot().active.cert_der()
        );
        assert_eq!(store.list_ca_keys().unwrap().len(), 1);
        assert_eq!(
            a.snapshot().jwt_active.key_id(),
            b.snapshot().jwt_active.key_id()
        );
        assert_eq!(a.snapshot().sequence, b.snapshot().sequence);
        clock.advance(Duration::from_secs(7200));
        let c = Ca::load_or_create(&td, &store, &clock, Duration::from_secs(3600)).unwrap();
        assert_ne!(
            a.snapshot().active.cert_der(),
            c.snapshot().active.cert_der()
        );
        assert_eq!(store.list_ca_keys().unwrap().len(), 1);
        assert_ne!(
            a.snapshot().jwt_active.key_id(),
            c.snapshot().jwt_active.key_id()
        );
        assert!(c.snapshot().sequence > a.snapshot().sequence);
    }
}
