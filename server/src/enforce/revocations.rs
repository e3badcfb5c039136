//! The revocation set on the server: revoked serials, task IDs, JWT IDs and
//! SPIFFE IDs, persisted as store documents (shared by every server),
//! pruned once what they revoke has expired, pushed to agents as deltas,
//! and listed in a CRL per live CA of this server.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::revocation::{Revocation, RevocationSet};
use lanyard_core::x509::CrlEntry;
use tokio::sync::watch;

use crate::ca::Ca;
use crate::store::{DocKind, Store, StoreError};

/// How long a CRL is valid; it is re-signed well before (every
/// [`CRL_REFRESH`]) and whenever the set changes.
pub const CRL_VALIDITY: Duration = Duration::from_secs(3600);
/// How often CRLs are re-signed and the set pruned when nothing changes.
pub const CRL_REFRESH: Duration = Duration::from_secs(600);
/// How long a burst of revocations is gathered before CRLs are re-signed.
const CRL_COALESCE: Duration = Duration::from_millis(20);

/// CRLs (DER) by CA ID.
type Crls = Arc<Vec<(String, Vec<u8>)>>;

/// The server's revocation set and the CRLs of every server's CAs.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    set: RwLock<Arc<RevocationSet>>,
    /// CRLs by CA ID (every server's, from the store).
    crls: RwLock<Crls>,
    changes: watch::Sender<u64>,
    /// Asks the CRL signer to run.
    resign: watch::Sender<u64>,
}

fn decode(key: &str, v: serde_json::Value) -> Result<Revocation, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

impl Revocations {
    /// Loads the set and the CRLs from the store.
    pub async fn load(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let r = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                set: RwLock::default(),
                crls: RwLock::default(),
                changes: watch::channel(0).0,
                resign: watch::channel(0).0,
            }),
        };
        r.reload().await?;
        Ok(r)
    }

    /// Re-reads everything from the store.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let mut set = RevocationSet::new();
        for (key, v) in self.inner.store.list_docs(DocKind::Revocation).await? {
            set.insert(decode(&key, v)?);
        }
        *self.inner.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.reload_crls().await?;
        self.announce();
        Ok(())
    }

    async fn reload_crls(&self) -> Result<(), StoreError> {
        let mut crls = Vec::new();
        for (key, v) in self.inner.store.list_docs(DocKind::Crl).await? {
            let der = v
                .get("der")
                .and_then(|d| d.as_str())
                .and_then(|d| hex::decode(d).ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: key.clone(),
                    reason: "CRL document without hex DER".into(),
                })?;
            crls.push((key, der));
        }
        *self.inner.crls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(crls);
        Ok(())
    }

    fn announce(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// After a change on the feed: re-read one revocation (`kind:value`).
    pub async fn refresh(&self, key: &str) -> Result<(), StoreError> {
        let doc = self.inner.store.get_doc(DocKind::Revocation, key).await?;
        let changed = {
            let mut g = self.inner.set.write().unwrap_or_else(|p| p.into_inner());
            let mut set = (**g).clone();
            let changed = match doc {
                Some(v) => {
                    let r = decode(key, v)?;
                    set.insert(r)
                }
                None => match key.split_once(':') {
                    Some((k, value)) => set
                        .items()
                        .into_iter()
                        .find(|r| r.kind.as_str() == k && r.value == value)
                        .map(|r| (r.kind, r.value.clone()))
                        .is_some_and(|(k, v)| set.remove(k, &v)),
                    None => false,
                },
            };
            if changed {
                *g = Arc::new(set);
            }
            changed
        };
        if changed {
            self.inner.resign.send_modify(|v| *v += 1);
            self.announce();
        }
        Ok(())
    }

    /// After a CRL change on the feed.
    pub async fn refresh_crls(&self) -> Result<(), StoreError> {
        self.reload_crls().await?;
        self.announce();
        Ok(())
    }

    /// The set in force.
    pub fn current(&self) -> Arc<RevocationSet> {
        self.inner
            .set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every server's CRLs (DER), ordered by CA ID.
    pub fn crls(&self) -> Vec<Vec<u8>> {
        self.inner
            .crls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// A receiver that wakes on every change of the set or the CRLs.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Revokes `items` (stored first, then in force here at once; other
    /// servers learn them from the feed). Returns how many were new.
    pub async fn revoke(&self, items: Vec<Revocation>) -> Result<usize, StoreError> {
        let now = unix_secs(self.inner.clock.now());
        let mut added = 0;
        for r in items {
            if r.expires_at <= now || self.current().get(r.kind, &r.value).is_some() {
                continue;
            }
            let v = serde_json::to_value(&r).map_err(|e| StoreError::Backend(e.to_string()))?;
            self.inner
                .store
                .put_doc(DocKind::Revocation, &r.key(), &v)
                .await?;
            tracing::info!(kind = %r.kind, value = %r.value, reason = %r.reason, "revoked");
            let mut g = self.inner.set.write().unwrap_or_else(|p| p.into_inner());
            let mut set = (**g).clone();
            set.insert(r);
            *g = Arc::new(set);
            added += 1;
        }
        if added > 0 {
            self.inner.resign.send_modify(|v| *v += 1);
            self.announce();
        }
        Ok(added)
    }

    /// Drops revocations whose credentials have expired, from the store too.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = self.inner.clock.now();
        let expired: Vec<Revocation> = self
            .current()
            .items()
            .into_iter()
            .filter(|r| r.expires_at <= unix_secs(now))
            .cloned()
            .collect();
        for r in &expired {
            self.inner
                .store
                .delete_doc(DocKind::Revocation, &r.key())
                .await?;
        }
        if !expired.is_empty() {
            let mut g = self.inner.set.write().unwrap_or_else(|p| p.into_inner());
            let mut set = (**g).clone();
            set.prune(now);
            *g = Arc::new(set);
            drop(g);
            self.inner.resign.send_modify(|v| *v += 1);
            self.announce();
            tracing::info!(count = expired.len(), "pruned expired revocations");
        }
        Ok(expired.len())
    }

    /// Signs and stores a CRL for each of this server's CAs: the serials
    /// each issued that are revoked.
    pub async fn sign_crls(&self, ca: &Ca) -> Result<(), String> {
        let snap = ca.snapshot();
        let set = self.current();
        let now = self.inner.clock.now();
        let number = u64::try_from(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        for signer in snap.signers.iter() {
            let id = signer.info().subject_key_id.clone();
            // Serials revoked without a known issuer (`svid revoke SERIAL`)
            // are listed by every CA: serials are random, so this never
            // names another certificate.
            let unknown = set.items().into_iter().filter(|r| {
                r.kind == lanyard_core::revocation::RevokedKind::Serial && r.issuer.is_none()
            });
            let entries: Vec<CrlEntry> = set
                .serials_of(&id)
                .into_iter()
                .chain(unknown)
                .map(|r| CrlEntry {
                    serial: r.value.clone(),
                    revoked_at: lanyard_core::clock::from_unix_secs(r.revoked_at),
                })
                .collect();
            let validity = CRL_VALIDITY.min(
                signer
                    .info()
                    .not_after
                    .duration_since(now)
                    .unwrap_or(Duration::from_secs(1))
                    .max(Duration::from_secs(1)),
            );
            let der = signer
                .sign_crl(&entries, number, now, validity)
                .map_err(|e| format!("CRL of CA {id}: {e}"))?;
            let doc = serde_json::json!({ "der": hex::encode(&der), "number": number });
            self.inner
                .store
                .put_doc(DocKind::Crl, &id, &doc)
                .await
                .map_err(|e| e.to_string())?;
        }
        // CRLs of CAs that left the bundle go too.
        for (id, _) in self
            .inner
            .store
            .list_docs(DocKind::Crl)
            .await
            .map_err(|e| e.to_string())?
        {
            if !snap.authority_ids.contains(&id) {
                let _ = self.inner.store.delete_doc(DocKind::Crl, &id).await;
            }
        }
        self.reload_crls().await.map_err(|e| e.to_string())?;
        self.announce();
        Ok(())
    }

    /// Keeps CRLs signed and the set pruned until `shutdown`: re-signs when
    /// the set or the bundle changes (a burst is gathered for a moment so
    /// many revocations at once cost one signature per CA) and every
    /// [`CRL_REFRESH`].
    pub async fn run(self, ca: Ca, mut shutdown: watch::Receiver<bool>) {
        let mut resign = self.inner.resign.subscribe();
        let mut bundle = ca.subscribe();
        loop {
            if let Err(e) = self.prune().await {
                tracing::warn!(error = %e, "cannot prune revocations");
            }
            if let Err(e) = self.sign_crls(&ca).await {
                tracing::warn!(error = %e, "cannot sign CRLs");
            }
            // Wake when the oldest revocation expires, to prune it.
            let now = unix_secs(self.inner.clock.now());
            let next_expiry = self
                .current()
                .items()
                .iter()
                .map(|r| Duration::from_secs(r.expires_at.saturating_sub(now) + 1))
                .min()
                .unwrap_or(CRL_REFRESH);
            tokio::select! {
                r = resign.changed() => if r.is_err() { return },
                r = bundle.changed() => if r.is_err() { return },
                () = tokio::time::sleep(CRL_REFRESH.min(next_expiry)) => {}
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
            tokio::time::sleep(CRL_COALESCE).await;
            resign.mark_unchanged();
            bundle.mark_unchanged();
        }
    }
}
