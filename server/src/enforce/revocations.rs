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

/// How many recent additions are kept for deltas; a stream further behind
/// gets the whole set again.
const LOG_KEEP: usize = 65_536;

/// The set, and its recent additions numbered for deltas.
#[derive(Default)]
struct State {
    set: RevocationSet,
    log: std::collections::VecDeque<(u64, Revocation)>,
    /// Number of the newest addition.
    seq: u64,
    /// Deltas from before this number are not available (a reload).
    floor: u64,
}

impl State {
    fn add(&mut self, r: Revocation) -> bool {
        if !self.set.insert(r.clone()) {
            return false;
        }
        self.seq += 1;
        self.log.push_back((self.seq, r));
        if self.log.len() > LOG_KEEP
            && let Some((s, _)) = self.log.pop_front()
        {
            self.floor = s;
        }
        true
    }
}

/// What a push stream sends next.
pub struct Delta {
    /// The revocations to send.
    pub items: Vec<Revocation>,
    /// They are the whole set (the stream is new or fell behind).
    pub reset: bool,
    /// The position to ask from next time.
    pub seq: u64,
}

struct Inner {
    /// Every live SVID the servers signed.
    issued: Arc<super::issued::Issued>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    state: RwLock<State>,
    /// CRLs by CA ID (every server's, from the store).
    crls: RwLock<Crls>,
    changes: watch::Sender<u64>,
    /// Asks the CRL signer to run.
    resign: watch::Sender<u64>,
    /// Where new revocations are recorded.
    audit: crate::audit::AuditHook,
}

/// Whether `old` already refuses everything `new` would: the same
/// credentials for at least as long. A SPIFFE ID revocation refuses what
/// was issued up to its time, so a later one covers more (after an entry
/// is deleted and re-created, the new entry's SVIDs) and replaces it.
fn covers(old: &Revocation, new: &Revocation) -> bool {
    old.expires_at >= new.expires_at
        && (new.kind != lanyard_core::revocation::RevokedKind::SpiffeId
            || old.revoked_at >= new.revoked_at)
}

fn revocation_event(a: &crate::audit::Audit, r: &Revocation) -> lanyard_core::audit::Event {
    use lanyard_core::revocation::RevokedKind;
    let mut e = a
        .event(lanyard_core::audit::Kind::Revocation)
        .reason(r.reason.clone())
        .details(serde_json::json!({
            "kind": r.kind.to_string(),
            "value": r.value,
            "expires_at": r.expires_at,
        }));
    match r.kind {
        RevokedKind::Serial => e.correlation.serial = r.value.clone(),
        RevokedKind::Task => e.task.id = r.value.clone(),
        RevokedKind::Jwt => e.correlation.jti = r.value.clone(),
        RevokedKind::SpiffeId => e.subject.spiffe_id = r.value.clone(),
    }
    e
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
        let issued = Arc::new(super::issued::Issued::load(store.clone(), clock.clone()).await?);
        let r = Self {
            inner: Arc::new(Inner {
                issued,
                store,
                clock,
                state: RwLock::default(),
                crls: RwLock::default(),
                changes: watch::channel(0).0,
                resign: watch::channel(0).0,
                audit: crate::audit::AuditHook::default(),
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
        {
            let mut g = self.write();
            g.set = set;
            g.log.clear();
            g.seq += 1;
            g.floor = g.seq;
        }
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

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// After a change on the feed: re-read one revocation (`kind:value`).
    pub async fn refresh(&self, key: &str) -> Result<(), StoreError> {
        let doc = self.inner.store.get_doc(DocKind::Revocation, key).await?;
        let changed = match doc {
            Some(v) => {
                let r = decode(key, v)?;
                self.write().add(r)
            }
            // Deleted: pruned after expiry; agents prune on their own.
            None => match key.split_once(':') {
                Some((k, value)) => {
                    let mut g = self.write();
                    let kind = g
                        .set
                        .items()
                        .into_iter()
                        .find(|r| r.kind.as_str() == k && r.value == value)
                        .map(|r| r.kind);
                    kind.is_some_and(|kind| g.set.remove(kind, value))
                }
                None => false,
            },
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

    /// Every revocation in force, in key order.
    pub fn items(&self) -> Vec<Revocation> {
        self.read().set.items().into_iter().cloned().collect()
    }

    /// The revocation of `kind:value`, if in force.
    pub fn get(
        &self,
        kind: lanyard_core::revocation::RevokedKind,
        value: &str,
    ) -> Option<Revocation> {
        self.read().set.get(kind, value).cloned()
    }

    /// Whether `kind:value` is revoked.
    pub fn contains(&self, kind: lanyard_core::revocation::RevokedKind, value: &str) -> bool {
        self.read().set.get(kind, value).is_some()
    }

    /// What a push stream that last sent up to `after` sends now: the
    /// additions since, or the whole set for a new stream or one further
    /// behind than the kept log.
    pub fn delta(&self, after: Option<u64>) -> Delta {
        let g = self.read();
        match after {
            Some(a) if a >= g.floor => Delta {
                items: g
                    .log
                    .iter()
                    .filter(|(s, _)| *s > a)
                    .map(|(_, r)| r.clone())
                    .collect(),
                reset: false,
                seq: g.seq,
            },
            _ => Delta {
                items: g.set.items().into_iter().cloned().collect(),
                reset: true,
                seq: g.seq,
            },
        }
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
    /// servers learn them from the feed), and with a task or SPIFFE ID the
    /// serials of every live SVID it covers (from the record of what the
    /// servers signed: the holder's agent need not report them). Returns
    /// how many were new.
    pub async fn revoke(&self, items: Vec<Revocation>) -> Result<usize, StoreError> {
        let serials: Vec<Revocation> = items
            .iter()
            .flat_map(|r| self.inner.issued.covered(r))
            .filter(|r| !self.contains(r.kind, &r.value))
            .collect();
        let mut added = self.add_all(items).await?;
        if !serials.is_empty() {
            added += self.add_all(serials).await?;
        }
        Ok(added)
    }

    /// What the servers signed (the serials revocations reach).
    pub fn issued(&self) -> &Arc<super::issued::Issued> {
        &self.inner.issued
    }

    /// A batch of signed SVIDs arrived from another server: the serials a
    /// revocation in force already covers are revoked too.
    pub async fn issued_arrived(&self, key: &str) -> Result<usize, StoreError> {
        let items = self.inner.issued.arrived(key).await?;
        if items.is_empty() {
            return Ok(0);
        }
        let serials = super::issued::implied(&self.read().set, &items);
        if serials.is_empty() {
            return Ok(0);
        }
        self.add_all(serials).await
    }

    async fn add_all(&self, items: Vec<Revocation>) -> Result<usize, StoreError> {
        let now = unix_secs(self.inner.clock.now());
        let mut added = 0;
        for r in items {
            if r.expires_at <= now {
                continue;
            }
            let covered = self
                .read()
                .set
                .get(r.kind, &r.value)
                .is_some_and(|old| covers(old, &r));
            if covered {
                // Asked again with nothing new to refuse. A SPIFFE ID
                // revocation is an operator's act: recorded each time.
                if r.kind == lanyard_core::revocation::RevokedKind::SpiffeId {
                    self.inner.audit.note(|a| revocation_event(a, &r)).await;
                }
                continue;
            }
            let v = serde_json::to_value(&r).map_err(|e| StoreError::caused(e.to_string(), e))?;
            self.inner
                .store
                .put_doc(DocKind::Revocation, &r.key(), &v)
                .await?;
            tracing::info!(kind = %r.kind, value = %r.value, reason = %r.reason, "revoked");
            self.inner.audit.note(|a| revocation_event(a, &r)).await;
            self.write().add(r);
            added += 1;
        }
        if added > 0 {
            self.inner.resign.send_modify(|v| *v += 1);
            self.announce();
        }
        Ok(added)
    }

    /// Connects the audit log (new revocations are recorded).
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        self.inner.audit.set(audit);
    }

    /// Drops revocations whose credentials have expired, from the store too.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = self.inner.clock.now();
        let expired: Vec<Revocation> = self
            .read()
            .set
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
            self.write().set.prune(now);
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
            let entries: Vec<CrlEntry> = {
                let g = self.read();
                let unknown = g.set.items().into_iter().filter(|r| {
                    r.kind == lanyard_core::revocation::RevokedKind::Serial && r.issuer.is_none()
                });
                g.set
                    .serials_of(&id)
                    .into_iter()
                    .chain(unknown)
                    .map(|r| CrlEntry {
                        serial: r.value.clone(),
                        revoked_at: lanyard_core::clock::from_unix_secs(r.revoked_at),
                    })
                    .collect()
            };
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
                .read()
                .set
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
