//! Quarantine records on the server: created by an operator, by too many
//! denied tool calls of one workload (counted across its tasks and every enforcement point
//! that reports to this server), or by a `@quarantine` forbid policy;
//! stored as documents (shared by every server), pushed to every agent,
//! released only by an operator.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use lanyard_core::clock::{Clock, unix_secs};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{DocKind, Store, StoreError};

/// How far a quarantine reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The one process instance (the task's holder, or the SPIFFE ID's
    /// processes on one node).
    Instance,
    /// Every instance of the SPIFFE ID on every node.
    Entry,
}

impl Scope {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instance => "instance",
            Self::Entry => "entry",
        }
    }
}

/// One quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// Random ID.
    pub id: String,
    /// The quarantined workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The agent (node) it runs on, when known.
    #[serde(default)]
    pub node: Option<String>,
    /// The task that triggered it, if any.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Instance or entry.
    pub scope: Scope,
    /// Why.
    pub reason: String,
    /// `operator`, `denials` or `policy`.
    pub source: String,
    /// Who reported it: an enforcement point's SPIFFE ID, an agent, or
    /// `uid:N` on the admin socket.
    pub reported_by: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Set once released.
    #[serde(default)]
    pub released_at: Option<u64>,
    /// Who released it.
    #[serde(default)]
    pub released_by: Option<String>,
    /// An entry-wide quarantine on the word of one node: listed, not in
    /// force, until an operator confirms it or a second node reports it.
    #[serde(default)]
    pub pending: bool,
}

impl QuarantineRecord {
    /// Not released (in force, or pending).
    pub fn active(&self) -> bool {
        self.released_at.is_none()
    }

    /// In force: not released and not pending.
    pub fn in_force(&self) -> bool {
        self.active() && !self.pending
    }
}

/// What a new quarantine names.
#[derive(Debug, Clone)]
pub struct QuarantineInput {
    /// Workload SPIFFE ID.
    pub spiffe_id: String,
    /// Node, when known.
    pub node: Option<String>,
    /// Task, when known.
    pub task_id: Option<String>,
    /// Reach.
    pub scope: Scope,
    /// Why.
    pub reason: String,
    /// `operator`, `denials` or `policy`.
    pub source: String,
    /// Who.
    pub reported_by: String,
    /// Waits for an operator (or a second node) before it is in force.
    pub pending: bool,
}

/// What denials are counted under: the workload (its SPIFFE ID on its
/// node), across its tasks, so that ending a task and beginning another
/// does not reset the count.
pub fn workload_key(spiffe_id: &str, node: &str) -> String {
    format!("{spiffe_id} on {node}")
}

/// The denial-count trigger.
#[derive(Debug, Clone, Copy)]
pub struct DenialTrigger {
    /// More than this many denials for one workload...
    pub max_denials: u32,
    /// ...within this window quarantines it.
    pub window: Duration,
}

impl Default for DenialTrigger {
    fn default() -> Self {
        Self {
            max_denials: 3,
            window: Duration::from_secs(60),
        }
    }
}

/// The quarantine records and the denial counts.
#[derive(Clone)]
pub struct Quarantines {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    trigger: DenialTrigger,
    records: RwLock<Arc<Vec<QuarantineRecord>>>,
    /// Recent denial times per workload ([`workload_key`]).
    denials: Mutex<HashMap<String, VecDeque<SystemTime>>>,
    changes: watch::Sender<u64>,
}

fn decode(key: &str, v: serde_json::Value) -> Result<QuarantineRecord, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

impl Quarantines {
    /// Loads the records from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        trigger: DenialTrigger,
    ) -> Result<Self, StoreError> {
        let q = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                trigger,
                records: RwLock::default(),
                denials: Mutex::default(),
                changes: watch::channel(0).0,
            }),
        };
        q.reload().await?;
        Ok(q)
    }

    /// Re-reads every record (also what the change feed calls).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let mut out = Vec::new();
        for (key, v) in self.inner.store.list_docs(DocKind::Quarantine).await? {
            out.push(decode(&key, v)?);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        *self
            .inner
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(out);
        self.inner.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Every record, oldest first.
    pub fn list(&self) -> Arc<Vec<QuarantineRecord>> {
        self.inner
            .records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The records not released (in force or pending).
    pub fn active(&self) -> Vec<QuarantineRecord> {
        self.list().iter().filter(|q| q.active()).cloned().collect()
    }

    /// The records in force (what agents apply).
    pub fn in_force(&self) -> Vec<QuarantineRecord> {
        self.list()
            .iter()
            .filter(|q| q.in_force())
            .cloned()
            .collect()
    }

    /// One record by ID.
    pub fn get(&self, id: &str) -> Option<QuarantineRecord> {
        self.list().iter().find(|q| q.id == id).cloned()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Quarantines a workload; an active record for the same task (or the
    /// same SPIFFE ID and node) is returned instead of a second one, with
    /// `false`.
    pub async fn add(
        &self,
        input: QuarantineInput,
    ) -> Result<(QuarantineRecord, bool), StoreError> {
        if let Some(q) = self.active().into_iter().find(|q| {
            q.spiffe_id == input.spiffe_id
                && q.task_id == input.task_id
                && (q.node == input.node || q.scope == Scope::Entry)
                // One in force answers any request; a pending one
                // answers only another pending one.
                && (!q.pending || input.pending)
        }) {
            return Ok((q, false));
        }
        let rec = QuarantineRecord {
            id: random_id(),
            spiffe_id: input.spiffe_id,
            node: input.node,
            task_id: input.task_id,
            scope: input.scope,
            reason: input.reason,
            source: input.source,
            reported_by: input.reported_by,
            created_at: unix_secs(self.inner.clock.now()),
            released_at: None,
            released_by: None,
            pending: input.pending,
        };
        self.put(&rec).await?;
        tracing::warn!(
            id = %rec.id, spiffe_id = %rec.spiffe_id, task_id = ?rec.task_id, node = ?rec.node,
            scope = rec.scope.as_str(), source = %rec.source, reason = %rec.reason,
            "workload quarantined"
        );
        Ok((rec, true))
    }

    async fn put(&self, rec: &QuarantineRecord) -> Result<(), StoreError> {
        let v = serde_json::to_value(rec).map_err(|e| StoreError::caused(e.to_string(), e))?;
        self.inner
            .store
            .put_doc(DocKind::Quarantine, &rec.id, &v)
            .await?;
        self.reload().await
    }

    /// Releases a quarantine (what it revoked stays revoked).
    pub async fn release(
        &self,
        id: &str,
        by: &str,
    ) -> Result<Option<QuarantineRecord>, StoreError> {
        let Some(v) = self.inner.store.get_doc(DocKind::Quarantine, id).await? else {
            return Ok(None);
        };
        let mut rec = decode(id, v)?;
        if rec.released_at.is_none() {
            // Denials before the release do not count again.
            if let Some(node) = &rec.node {
                self.inner
                    .denials
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&workload_key(&rec.spiffe_id, node));
            }
            rec.released_at = Some(unix_secs(self.inner.clock.now()));
            rec.released_by = Some(by.to_owned());
            self.put(&rec).await?;
            tracing::info!(id = %rec.id, spiffe_id = %rec.spiffe_id, by, "quarantine released");
        }
        Ok(Some(rec))
    }

    /// Puts a pending quarantine in force; `None` when there is no such
    /// record, and the record with `false` when it was not pending.
    pub async fn confirm(&self, id: &str) -> Result<Option<(QuarantineRecord, bool)>, StoreError> {
        let Some(v) = self.inner.store.get_doc(DocKind::Quarantine, id).await? else {
            return Ok(None);
        };
        let mut rec = decode(id, v)?;
        if !rec.pending || !rec.active() {
            return Ok(Some((rec, false)));
        }
        rec.pending = false;
        self.put(&rec).await?;
        tracing::warn!(id = %rec.id, spiffe_id = %rec.spiffe_id, "pending quarantine confirmed");
        Ok(Some((rec, true)))
    }

    /// Denied calls of the workload `key` ([`workload_key`]) counted
    /// within the trigger's window.
    pub fn recent_denials(&self, key: &str) -> usize {
        let now = self.inner.clock.now();
        let window = self.inner.trigger.window;
        self.inner
            .denials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map_or(0, |q| {
                q.iter()
                    .filter(|t| now.duration_since(**t).unwrap_or_default() <= window)
                    .count()
            })
    }

    /// Counts one denied call of the workload `key` ([`workload_key`]);
    /// true when the count now exceeds the trigger within its window.
    pub fn count_denial(&self, key: &str) -> bool {
        let now = self.inner.clock.now();
        let t = self.inner.trigger;
        let mut all = self.inner.denials.lock().unwrap_or_else(|p| p.into_inner());
        let q = all.entry(key.to_owned()).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|f| now.duration_since(*f).unwrap_or_default() > t.window)
        {
            q.pop_front();
        }
        let over = q.len() > t.max_denials as usize;
        // Forget tasks with nothing recent so the map stays small.
        if all.len() > 100_000 {
            all.retain(|_, q| {
                q.back()
                    .is_some_and(|b| now.duration_since(*b).unwrap_or_default() <= t.window)
            });
        }
        over
    }
}
