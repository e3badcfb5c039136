//! The server's signing authorities: the X.509 CA and the JWT key. Loaded
//! from the store at start (or created on first run), rotated by
//! prepare → activate → retire (see [`rotator`]), published as the trust
//! bundle, and used to sign agent and workload SVIDs and the server's own
//! TLS identity.

mod keys;
mod material;
mod ring;
pub mod rotator;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::clock::Clock;
use lanyard_core::jwt::{JwtAuthority, JwtError, JwtSigner};
use lanyard_core::tls::X509BundleSource;
use lanyard_core::x509::{SvidError, X509Authority};
use tokio::sync::watch;

use crate::store::{CaKeyState, Store, StoreError};
use keys::Keys;

/// Lifetimes the server applies, and the issuer its JWT-SVIDs name.
#[derive(Debug, Clone)]
pub struct IssuanceSettings {
    /// X.509-SVID TTL for entries that do not set one.
    pub default_x509_svid_ttl: Duration,
    /// JWT-SVID TTL for entries that do not set one.
    pub default_jwt_svid_ttl: Duration,
    /// TTL of agent SVIDs.
    pub agent_svid_ttl: Duration,
    /// `iss` of every JWT-SVID: the OpenID Connect issuer URL.
    pub jwt_issuer: std::sync::Arc<str>,
}

/// Store counter holding the bundle sequence number.
pub(crate) const SEQUENCE: &str = "bundle_sequence";
/// Refresh hint published with the bundle.
pub const REFRESH_HINT_SECS: u64 = 60;

/// Why an authority operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing keys failed.
    #[error("CA store: {0}")]
    Store(#[from] StoreError),
    /// A stored key is unusable or signing failed.
    #[error("CA: {0}")]
    Svid(#[from] SvidError),
    /// A stored JWT key is unusable.
    #[error("JWT key: {0}")]
    Jwt(#[from] JwtError),
    /// The store holds the authorities of another trust domain.
    #[error(
        "the data holds the CA of trust domain {stored}, not {configured}: start with --trust-domain {stored}, or use another --data-dir (or database) for {configured}"
    )]
    OtherTrustDomain {
        /// The trust domain of the stored CA.
        stored: String,
        /// The configured trust domain.
        configured: String,
    },
    /// Activation without a prepared key.
    #[error("no prepared authority to activate; run `lanyard-server ca prepare` first")]
    NothingPrepared,
    /// No key with that ID.
    #[error("no authority with ID {0:?} (see `lanyard-server ca show`)")]
    UnknownKey(String),
    /// The active key cannot be tainted or revoked.
    #[error("authority {0} is active; prepare and activate a new one first")]
    ActiveKey(String),
    /// Revocation of a key that was not tainted first.
    #[error("authority {0} must be tainted before it is revoked")]
    NotTainted(String),
}

/// What the authorities publish at one moment.
#[derive(Debug)]
pub struct CaSnapshot {
    /// The key that signs new X.509-SVIDs.
    pub active: Arc<X509Authority>,
    /// This server's X.509 CAs in the bundle (with their keys): each signs
    /// the CRL of what it issued.
    pub signers: Arc<Vec<Arc<X509Authority>>>,
    /// Every published CA certificate (DER), active first.
    pub authorities: Arc<Vec<Vec<u8>>>,
    /// The key IDs of those certificates, in the same order.
    pub authority_ids: Arc<Vec<String>>,
    /// The key that signs new JWT-SVIDs.
    pub jwt_active: Arc<JwtSigner>,
    /// Every published JWT key, active first.
    pub jwt_authorities: Arc<Vec<JwtAuthority>>,
    /// The key that signs new WIT-SVIDs.
    pub wit_active: Arc<JwtSigner>,
    /// Every published WIT key, active first (the WIT bundle; never in the
    /// JWT bundle or the OpenID Connect JWKS).
    pub wit_authorities: Arc<Vec<JwtAuthority>>,
    /// IDs of tainted authorities.
    pub tainted: Arc<Vec<String>>,
    /// Bundle sequence number, bumped on every change.
    pub sequence: u64,
}

/// One authority as `ca show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// X.509 subject key ID or JWT key ID.
    pub id: String,
    /// The server that owns it.
    pub owner: String,
    /// `x509`, `jwt` or `wit`.
    pub kind: &'static str,
    /// Life-cycle state.
    pub state: CaKeyState,
    /// Tainted.
    pub tainted: bool,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

/// The authorities, behind a cheap clone.
#[derive(Clone)]
pub struct Ca {
    inner: Arc<Inner>,
}

struct Inner {
    td: TrustDomain,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ca_ttl: Duration,
    /// This server's ID: the owner of the keys it rotates.
    server_id: String,
    /// Serialises changes; readers use `state`.
    keys: tokio::sync::Mutex<Keys>,
    state: RwLock<Arc<CaSnapshot>>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("td", &self.inner.td).finish()
    }
}

impl Ca {
    /// Loads the authorities from the store, creating an active X.509 CA
    /// and JWT key when there is none (or they have expired).
    pub async fn load_or_create(
        td: &TrustDomain,
        server_id: &str,
        key_dir: Option<&std::path::Path>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ca_ttl: Duration,
    ) -> Result<Self, CaError> {
        let (keys, changed) =
            Keys::load(td, server_id, key_dir, store.as_ref(), clock.now(), ca_ttl).await?;
        let sequence = if changed || store.counter(SEQUENCE).await? == 0 {
            store.bump_counter(SEQUENCE).await?
        } else {
            store.counter(SEQUENCE).await?
        };
        let snapshot = keys.snapshot(sequence)?;
        let (changes, _) = watch::channel(sequence);
        Ok(Self {
            inner: Arc::new(Inner {
                td: td.clone(),
                store,
                clock,
                ca_ttl,
                server_id: server_id.to_owned(),
                keys: tokio::sync::Mutex::new(keys),
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

    /// The clock the authorities run on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Notified with the bundle sequence on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// This server's ID (the owner of the keys it rotates).
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    /// Every authority of every server, X.509 first.
    pub async fn list(&self) -> Vec<AuthorityInfo> {
        self.inner.keys.lock().await.list()
    }

    fn publish(&self, keys: &Keys, seq: u64) -> Result<(), CaError> {
        let snap = keys.snapshot(seq)?;
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        self.inner.changes.send_replace(seq);
        Ok(())
    }

    /// Applies `f` to the keys (first brought in step with the store, so
    /// another server's taint or revocation is not written over), persists
    /// and publishes if it changed anything.
    async fn change(
        &self,
        f: impl FnOnce(&mut Keys, SystemTime) -> Result<bool, CaError>,
    ) -> Result<bool, CaError> {
        let mut keys = self.inner.keys.lock().await;
        let store = self.inner.store.as_ref();
        let merged = keys.refresh(store, self.inner.ca_ttl).await?;
        let changed = f(&mut keys, self.inner.clock.now())?;
        if changed {
            keys.persist(store).await?;
            let seq = store.bump_counter(SEQUENCE).await?;
            self.publish(&keys, seq)?;
            tracing::info!(sequence = seq, "trust bundle changed");
        } else if merged {
            self.publish(&keys, store.counter(SEQUENCE).await?)?;
        }
        Ok(changed)
    }

    /// Brings the published keys in step with the store after a change on
    /// the feed (another server's rotation, taint or revocation, or the
    /// bundle sequence moving).
    pub async fn refresh(&self) -> Result<(), CaError> {
        let mut keys = self.inner.keys.lock().await;
        let store = self.inner.store.as_ref();
        let merged = keys.refresh(store, self.inner.ca_ttl).await?;
        let seq = store.counter(SEQUENCE).await?;
        if merged || seq != self.snapshot().sequence {
            self.publish(&keys, seq)?;
            tracing::debug!(sequence = seq, "trust bundle reloaded from the store");
        }
        Ok(())
    }

    /// Prepares the next X.509 CA and JWT key (published, not signing),
    /// where none is prepared yet.
    pub async fn prepare(&self) -> Result<bool, CaError> {
        let (td, ttl) = (self.inner.td.clone(), self.inner.ca_ttl);
        self.change(|k, now| k.prepare(&td, now, ttl)).await
    }

    /// Makes the prepared keys active; the previous ones stay published
    /// until they expire.
    pub async fn activate(&self) -> Result<(), CaError> {
        self.change(|k, _| k.activate()).await.map(|_| ())
    }

    /// Marks an authority (of any server) tainted: agents re-issue
    /// everything it signed.
    pub async fn taint(&self, id: &str) -> Result<(), CaError> {
        self.change(|k, _| k.taint(id)).await.map(|_| ())
    }

    /// Removes a tainted authority (of any server, e.g. one gone for good)
    /// from the bundle.
    pub async fn revoke(&self, id: &str) -> Result<(), CaError> {
        self.change(|k, _| k.revoke(id)).await.map(|_| ())
    }

    /// Performs whatever rotation step of this server's keys is due now:
    /// prepare at half the active key's life, activate at five sixths,
    /// drop expired keys (of any server).
    pub async fn tick(&self) -> Result<bool, CaError> {
        let (td, ttl) = (self.inner.td.clone(), self.inner.ca_ttl);
        self.change(|k, now| k.tick(&td, now, ttl)).await
    }

    /// When the next rotation step is due.
    pub async fn next_event(&self) -> SystemTime {
        self.inner
            .keys
            .lock()
            .await
            .next_event(self.inner.clock.now())
    }
}

impl X509BundleSource for Ca {
    fn x509_authorities(&self) -> Arc<Vec<Vec<u8>>> {
        self.snapshot().authorities.clone()
    }
}
