//! The server's X.509 certificate authority: loaded from the store at start
//! (or created on first run), published as the trust bundle, and used to
//! sign agent and workload SVIDs and the server's own TLS identity.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lanyard_core::TrustDomain;
use lanyard_core::clock::Clock;
use lanyard_core::tls::X509BundleSource;
use lanyard_core::x509::{SvidError, X509Authority};
use tokio::sync::watch;

use crate::store::{CaKeyRecord, CaKeyState, Store, StoreError};

/// Why the CA could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing CA keys failed.
    #[error("CA store: {0}")]
    Store(#[from] StoreError),
    /// A stored key is unusable or signing failed.
    #[error("CA: {0}")]
    Svid(#[from] SvidError),
}

/// What the CA publishes at one moment.
#[derive(Debug)]
pub struct CaSnapshot {
    /// The key that signs new SVIDs.
    pub active: Arc<X509Authority>,
    /// Every published CA certificate (DER), active first.
    pub authorities: Arc<Vec<Vec<u8>>>,
    /// Bundle sequence number, bumped on every change.
    pub sequence: u64,
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
    /// Loads the active CA key from the store, or creates and persists a new
    /// self-signed root when there is none or it has expired.
    pub fn load_or_create(
        td: &TrustDomain,
        store: &dyn Store,
        clock: &dyn Clock,
        ca_ttl: Duration,
    ) -> Result<Self, CaError> {
        let now = clock.now();
        let mut published = Vec::new();
        let mut active = None;
        for rec in store.list_ca_keys()? {
            let auth = X509Authority::from_parts(&rec.cert_der, &rec.key_pkcs8)?;
            if auth.info().not_after <= now {
                tracing::info!(key_id = %rec.id, "removing expired CA key");
                store.delete_ca_key(&rec.id)?;
                continue;
            }
            if rec.state == CaKeyState::Active
                && active
                    .as_ref()
                    .is_none_or(|a: &X509Authority| a.info().not_after < auth.info().not_after)
            {
                active = Some(auth);
            } else {
                published.push(rec.cert_der);
            }
        }
        let active = match active {
            Some(a) => {
                tracing::info!(key_id = %a.info().subject_key_id, "loaded CA key");
                a
            }
            None => {
                let a = X509Authority::generate_root(td, now, ca_ttl)?;
                store.put_ca_key(&CaKeyRecord {
                    id: a.info().subject_key_id.clone(),
                    cert_der: a.cert_der().to_vec(),
                    key_pkcs8: a.key_pkcs8_der(),
                    state: CaKeyState::Active,
                })?;
                tracing::info!(key_id = %a.info().subject_key_id, ttl = ?ca_ttl, "created new CA key");
                a
            }
        };
        let mut authorities = vec![active.cert_der().to_vec()];
        authorities.extend(published);
        let snapshot = CaSnapshot {
            active: Arc::new(active),
            authorities: Arc::new(authorities),
            sequence: 1,
        };
        let (changes, _) = watch::channel(1);
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
        clock.advance(Duration::from_secs(7200));
        let c = Ca::load_or_create(&td, &store, &clock, Duration::from_secs(3600)).unwrap();
        assert_ne!(
            a.snapshot().active.cert_der(),
            c.snapshot().active.cert_der()
        );
        assert_eq!(store.list_ca_keys().unwrap().len(), 1);
    }
}
