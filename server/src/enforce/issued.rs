//! Every X.509-SVID a server signs, kept (serial, SPIFFE ID, task, CA,
//! validity) in the store until it expires, so that revoking a task or a
//! SPIFFE ID puts the serials of its SVIDs into the CRLs at once, without
//! waiting for the holder's agent to report them (a stopped, partitioned or
//! compromised agent never would).
//!
//! Signing only indexes the SVID in memory and pushes it onto a list; a
//! background task writes the list as one store document per batch (every
//! [`FLUSH_EVERY`]) for the other servers and for restarts, and deletes
//! batches whose SVIDs have all expired. A revocation looks its serials up
//! in the index; a batch of another server that arrives on the change feed
//! after a revocation is checked against the revocation set then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::revocation::{Revocation, RevocationSet, RevokedKind};
use serde::{Deserialize, Serialize};

use crate::store::{DocKind, Store, StoreError};

/// How often signed SVIDs are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One signed X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedSvid {
    /// Serial (hex, as the certificate says).
    pub serial: String,
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// The task it carries, for a task SVID.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Subject key ID of the CA that signed it.
    pub issuer: String,
    /// When it was signed (Unix seconds).
    pub issued_at: u64,
    /// When it expires (Unix seconds).
    pub not_after: u64,
}

impl IssuedSvid {
    /// The revocation of this SVID's serial, when `r` (a task or SPIFFE
    /// ID revocation) covers it.
    pub fn covered_by(&self, r: &Revocation) -> Option<Revocation> {
        let hit = match r.kind {
            RevokedKind::Task => self.task_id.as_deref() == Some(r.value.as_str()),
            RevokedKind::SpiffeId => self.spiffe_id == r.value && self.issued_at <= r.revoked_at,
            RevokedKind::Serial | RevokedKind::Jwt => false,
        };
        hit.then(|| Revocation {
            kind: RevokedKind::Serial,
            value: self.serial.clone(),
            revoked_at: r.revoked_at,
            expires_at: self.not_after,
            reason: r.reason.clone(),
            issuer: Some(self.issuer.clone()),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Batch {
    items: Vec<IssuedSvid>,
}

/// Live signed SVIDs by task and by SPIFFE ID (this server's at once,
/// other servers' as their batches arrive).
#[derive(Default)]
struct Index {
    by_task: HashMap<String, Vec<IssuedSvid>>,
    by_id: HashMap<String, Vec<IssuedSvid>>,
}

impl Index {
    fn add(&mut self, s: IssuedSvid) {
        if let Some(t) = &s.task_id {
            self.by_task.entry(t.clone()).or_default().push(s.clone());
        }
        self.by_id.entry(s.spiffe_id.clone()).or_default().push(s);
    }

    fn prune(&mut self, now: u64) {
        for map in [&mut self.by_task, &mut self.by_id] {
            map.retain(|_, v| {
                v.retain(|s| s.not_after > now);
                !v.is_empty()
            });
        }
    }
}

/// The signed SVIDs: an index in memory, and batches in the store.
pub struct Issued {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Batch keys are `{prefix}-{n}`: unique per process run.
    prefix: String,
    pending: Mutex<(u64, Vec<IssuedSvid>)>,
    index: Mutex<Index>,
    /// Serialises writers (the periodic flush and a forced one).
    writing: tokio::sync::Mutex<()>,
}

impl Issued {
    /// The index of every live batch in `store`.
    pub async fn load(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let mut r = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut r);
        let now = unix_secs(clock.now());
        let mut index = Index::default();
        for (_, v) in store.list_docs(DocKind::Issued).await? {
            if let Ok(b) = serde_json::from_value::<Batch>(v) {
                b.items
                    .into_iter()
                    .filter(|i| i.not_after > now)
                    .for_each(|i| index.add(i));
            }
        }
        Ok(Self {
            store,
            clock,
            prefix: hex::encode(r),
            pending: Mutex::new((0, Vec::new())),
            index: Mutex::new(index),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// How many live SVIDs the index holds, by task and by SPIFFE ID
    /// (expired ones leave at the next prune).
    pub fn indexed(&self) -> (usize, usize) {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        (
            index.by_task.values().map(Vec::len).sum(),
            index.by_id.values().map(Vec::len).sum(),
        )
    }

    /// Notes a signed SVID (cheap: the signing path only indexes and
    /// pushes; the background writer stores it).
    pub fn note(&self, svid: IssuedSvid) {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(svid.clone());
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .push(svid);
    }

    /// Writes what is pending as one batch (for other servers and
    /// restarts).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _w = self.writing.lock().await;
        let (n, items) = {
            let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if g.1.is_empty() {
                return Ok(());
            }
            g.0 += 1;
            (g.0, std::mem::take(&mut g.1))
        };
        let doc = serde_json::to_value(Batch { items })
            .map_err(|e| StoreError::caused(e.to_string(), e))?;
        self.store
            .put_doc(DocKind::Issued, &format!("{}-{n:012}", self.prefix), &doc)
            .await
    }

    /// The live SVIDs a task or SPIFFE ID revocation `r` covers, as serial
    /// revocations.
    pub fn covered(&self, r: &Revocation) -> Vec<Revocation> {
        let g = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let list = match r.kind {
            RevokedKind::Task => g.by_task.get(&r.value),
            RevokedKind::SpiffeId => g.by_id.get(&r.value),
            RevokedKind::Serial | RevokedKind::Jwt => None,
        };
        list.into_iter()
            .flatten()
            .filter_map(|s| s.covered_by(r))
            .collect()
    }

    /// Indexes the batch `key` (another server's, from the change feed)
    /// and returns its SVIDs.
    pub async fn arrived(&self, key: &str) -> Result<Vec<IssuedSvid>, StoreError> {
        if key.starts_with(&self.prefix) {
            return Ok(vec![]);
        }
        let items = self
            .store
            .get_doc(DocKind::Issued, key)
            .await?
            .and_then(|v| serde_json::from_value::<Batch>(v).ok())
            .map(|b| b.items)
            .unwrap_or_default();
        let mut g = self.index.lock().unwrap_or_else(|p| p.into_inner());
        for i in &items {
            g.add(i.clone());
        }
        Ok(items)
    }

    /// Drops expired SVIDs from the index and deletes batches whose SVIDs
    /// have all expired; returns how many batches went.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = unix_secs(self.clock.now());
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prune(now);
        let mut gone = 0;
        for (key, v) in self.store.list_docs(DocKind::Issued).await? {
            let expired = serde_json::from_value::<Batch>(v)
                .map(|b| b.items.iter().all(|i| i.not_after <= now))
                .unwrap_or(true);
            if expired && self.store.delete_doc(DocKind::Issued, &key).await? {
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Writes pending SVIDs every [`FLUSH_EVERY`] and prunes every minute,
    /// until `stop` (then writes what is left). The server awaits it before
    /// it closes the store.
    pub fn run(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let me = self.clone();
        async move {
            let mut ticks = 0u64;
            loop {
                let stopping = tokio::select! {
                    () = tokio::time::sleep(FLUSH_EVERY) => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    if let Err(e) = me.flush().await {
                        tracing::warn!(err = %e, "cannot record the last signed SVIDs");
                    }
                    return;
                }
                if let Err(e) = me.flush().await {
                    tracing::warn!(err = %e, "cannot record signed SVIDs; retrying");
                }
                ticks += 1;
                if ticks.is_multiple_of(600)
                    && let Err(e) = me.prune().await
                {
                    tracing::warn!(err = %e, "cannot prune the signed-SVID record");
                }
            }
        }
    }
}

/// The serial revocations that `set`'s task and SPIFFE ID revocations
/// imply for `svids`, leaving out serials already revoked.
pub fn implied(set: &RevocationSet, svids: &[IssuedSvid]) -> Vec<Revocation> {
    let rules: Vec<&Revocation> = set
        .items()
        .into_iter()
        .filter(|r| matches!(r.kind, RevokedKind::Task | RevokedKind::SpiffeId))
        .collect();
    let mut out: Vec<Revocation> = Vec::new();
    for s in svids {
        if set.get(RevokedKind::Serial, &s.serial).is_some()
            || out.iter().any(|o| o.value == s.serial)
        {
            continue;
        }
        if let Some(r) = rules.iter().find_map(|r| s.covered_by(r)) {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(serial: &str, id: &str, task: Option<&str>, issued_at: u64) -> IssuedSvid {
        IssuedSvid {
            serial: serial.into(),
            spiffe_id: id.into(),
            task_id: task.map(str::to_owned),
            issuer: "ca1".into(),
            issued_at,
            not_after: issued_at + 60,
        }
    }

    fn rev(kind: RevokedKind, value: &str, at: u64) -> Revocation {
        Revocation {
            kind,
            value: value.into(),
            revoked_at: at,
            expires_at: at + 3600,
            reason: "test".into(),
            issuer: None,
        }
    }

    #[test]
    fn task_and_id_revocations_name_the_serials_they_cover() {
        let svids = [
            svid("0a", "spiffe://td/a", Some("t1"), 100),
            svid("0b", "spiffe://td/a", None, 100),
            svid("0c", "spiffe://td/a", None, 200),
            svid("0d", "spiffe://td/b", Some("t2"), 100),
        ];
        let set = RevocationSet::from_items([
            rev(RevokedKind::Task, "t1", 150),
            rev(RevokedKind::SpiffeId, "spiffe://td/a", 150),
        ]);
        let got = implied(&set, &svids);
        let serials: Vec<&str> = got.iter().map(|r| r.value.as_str()).collect();
        // 0c was signed after the ID's revocation; t2 is not revoked.
        assert_eq!(serials, ["0a", "0b"]);
        assert!(got.iter().all(|r| r.issuer.as_deref() == Some("ca1")));
        assert_eq!(got[0].expires_at, 160);
        // Already revoked serials are not named again.
        let mut set = set;
        set.insert(rev(RevokedKind::Serial, "0a", 150));
        let again: Vec<String> = implied(&set, &svids).into_iter().map(|r| r.value).collect();
        assert_eq!(again, ["0b"]);
    }
}
