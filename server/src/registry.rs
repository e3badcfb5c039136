//! Registration entries in memory, written through to the store, with a
//! change signal that the agents' sync streams wait on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The entry is invalid.
    #[error(transparent)]
    Invalid(#[from] lanyard_core::EntryError),
    /// An entry with the same SPIFFE ID, parent and selectors exists.
    #[error("an entry with the same SPIFFE ID, parent ID and selectors already exists: {0}")]
    Duplicate(EntryId),
    /// No such entry.
    #[error("entry {0} not found")]
    NotFound(String),
    /// The SPIFFE ID is an agent's: a workload holding it would be taken
    /// for that agent.
    #[error("SPIFFE ID {0} belongs to an agent; entries cannot issue it")]
    AgentId(SpiffeId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Entries grouped by parent, each group ordered by ID.
fn index(
    entries: &BTreeMap<EntryId, RegistrationEntry>,
) -> HashMap<SpiffeId, Vec<RegistrationEntry>> {
    let mut m: HashMap<SpiffeId, Vec<RegistrationEntry>> = HashMap::new();
    for e in entries.values() {
        m.entry(e.parent_id.clone()).or_default().push(e.clone());
    }
    m
}

fn duplicate(e: StoreError) -> RegistryError {
    match e {
        StoreError::DuplicateEntry(id) => RegistryError::Duplicate(id),
        e => RegistryError::Store(e),
    }
}

/// The entries, behind a cheap clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    td: TrustDomain,
    store: Arc<dyn Store>,
    entries: RwLock<Arc<BTreeMap<EntryId, RegistrationEntry>>>,
    /// The same entries by parent ID, rebuilt on every change: each
    /// agent's sync stream reads its own entries without a scan.
    by_parent: RwLock<Arc<HashMap<SpiffeId, Vec<RegistrationEntry>>>>,
    /// Serialises this server's writers so that store and memory stay in
    /// step; other servers' changes arrive through [`Registry::refresh`].
    write: tokio::sync::Mutex<()>,
    changes: watch::Sender<u64>,
    /// The server's own SPIFFE ID: entries parented to it are node
    /// aliases (their selectors are matched against agents' node
    /// selectors, their SPIFFE ID becomes a parent for every agent that
    /// matches).
    server_id: SpiffeId,
    /// Each authenticated agent's node selectors.
    nodes: RwLock<HashMap<SpiffeId, Arc<Vec<lanyard_core::Selector>>>>,
}

impl Registry {
    /// Loads every entry from the store.
    pub async fn load(td: TrustDomain, store: Arc<dyn Store>) -> Result<Self, RegistryError> {
        let entries: BTreeMap<_, _> = store
            .list_entries()
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let (changes, _) = watch::channel(0);
        let server_id = td
            .id_with_segments(["lanyard", "server"])
            .map_err(|e| RegistryError::Store(StoreError::caused(e.to_string(), e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                server_id,
                nodes: RwLock::default(),
                td,
                store,
                by_parent: RwLock::new(Arc::new(index(&entries))),
                entries: RwLock::new(Arc::new(entries)),
                write: tokio::sync::Mutex::new(()),
                changes,
            }),
        })
    }

    fn snapshot(&self) -> Arc<BTreeMap<EntryId, RegistrationEntry>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, f: impl FnOnce(&mut BTreeMap<EntryId, RegistrationEntry>)) {
        let mut guard = self
            .inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        f(&mut next);
        let by_parent = index(&next);
        *guard = Arc::new(next);
        // Written under the entries lock, so the two never disagree for
        // long and never go back.
        *self
            .inner
            .by_parent
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(by_parent);
        drop(guard);
        self.inner.changes.send_modify(|r| *r += 1);
    }

    /// Refuses an entry whose SPIFFE ID is an attested (or banned) agent's.
    async fn check_not_agent(&self, id: &SpiffeId) -> Result<(), RegistryError> {
        if self.inner.store.get_agent(id).await?.is_some() {
            return Err(RegistryError::AgentId(id.clone()));
        }
        Ok(())
    }

    /// Validates and stores a new entry.
    pub async fn create(
        &self,
        entry: RegistrationEntry,
    ) -> Result<RegistrationEntry, RegistryError> {
        let entry = entry.validate(&self.inner.td)?;
        self.check_not_agent(&entry.spiffe_id).await?;
        let _w = self.inner.write.lock().await;
        // The store keeps entry identities unique (across servers too) and
        // names the entry that holds one.
        self.inner
            .store
            .create_entry(&entry)
            .await
            .map_err(duplicate)?;
        let stored = entry.clone();
        self.publish(|m| {
            m.insert(stored.id.clone(), stored);
        });
        Ok(entry)
    }

    /// Replaces an entry, bumping its revision.
    pub async fn update(
        &self,
        entry: RegistrationEntry,
    ) -> Result<RegistrationEntry, RegistryError> {
        let mut entry = entry.validate(&self.inner.td)?;
        self.check_not_agent(&entry.spiffe_id).await?;
        let _w = self.inner.write.lock().await;
        let old = self
            .snapshot()
            .get(&entry.id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(entry.id.to_string()))?;
        entry.revision = old.revision + 1;
        entry.created_at = old.created_at;
        entry.created_at_nanos = old.created_at_nanos;
        self.inner
            .store
            .update_entry(&entry)
            .await
            .map_err(duplicate)?;
        let stored = entry.clone();
        self.publish(|m| {
            m.insert(stored.id.clone(), stored);
        });
        Ok(entry)
    }

    /// Deletes an entry, returning it.
    pub async fn delete(&self, id: &str) -> Result<RegistrationEntry, RegistryError> {
        let id = EntryId::new(id).map_err(|_| RegistryError::NotFound(id.to_owned()))?;
        let _w = self.inner.write.lock().await;
        let old = self
            .inner
            .store
            .delete_entry(&id)
            .await?
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        self.publish(|m| {
            m.remove(&id);
        });
        Ok(old)
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Option<RegistrationEntry> {
        let id = EntryId::new(id).ok()?;
        self.snapshot().get(&id).cloned()
    }

    /// Every entry, optionally filtered.
    pub fn list(
        &self,
        spiffe_id: Option<&SpiffeId>,
        parent_id: Option<&SpiffeId>,
    ) -> Vec<RegistrationEntry> {
        self.snapshot()
            .values()
            .filter(|e| spiffe_id.is_none_or(|s| &e.spiffe_id == s))
            .filter(|e| parent_id.is_none_or(|p| &e.parent_id == p))
            .cloned()
            .collect()
    }

    /// The entries an agent is authorised to obtain SVIDs for, ordered by
    /// ID.
    pub fn for_agent(&self, agent: &SpiffeId) -> Vec<RegistrationEntry> {
        let by_parent = self
            .inner
            .by_parent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = by_parent.get(agent).cloned().unwrap_or_default();
        let aliases = self.aliases_of(agent, &by_parent);
        if aliases.is_empty() {
            return out;
        }
        for alias in aliases {
            out.extend(by_parent.get(&alias).into_iter().flatten().cloned());
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        out
    }

    /// The node alias IDs whose selectors the agent's node selectors
    /// include.
    fn aliases_of(
        &self,
        agent: &SpiffeId,
        by_parent: &HashMap<SpiffeId, Vec<RegistrationEntry>>,
    ) -> Vec<SpiffeId> {
        let Some(alias_entries) = by_parent.get(&self.inner.server_id) else {
            return vec![];
        };
        let nodes = self.inner.nodes.read().unwrap_or_else(|p| p.into_inner());
        let Some(node) = nodes.get(agent) else {
            return vec![];
        };
        alias_entries
            .iter()
            .filter(|a| a.selectors.iter().all(|s| node.contains(s)))
            .map(|a| a.spiffe_id.clone())
            .collect()
    }

    /// Whether `agent` may obtain SVIDs of `entry`: its parent, or a node
    /// alias whose selectors the agent's node has.
    pub fn owns(&self, agent: &SpiffeId, entry: &RegistrationEntry) -> bool {
        if &entry.parent_id == agent {
            return true;
        }
        let by_parent = self
            .inner
            .by_parent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.aliases_of(agent, &by_parent)
            .contains(&entry.parent_id)
    }

    /// Remembers an authenticated agent's node selectors (from its record),
    /// signalling the streams when they changed.
    pub fn note_node(&self, agent: &crate::store::AgentRecord) {
        let selectors: Vec<lanyard_core::Selector> = agent
            .selectors
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        // Nothing changed (the common case, and every agent without node
        // selectors): only the read lock, and no wake-up of the streams.
        let known = |nodes: &HashMap<SpiffeId, Arc<Vec<lanyard_core::Selector>>>| match nodes
            .get(&agent.spiffe_id)
        {
            Some(s) => s.as_slice() == selectors.as_slice(),
            None => selectors.is_empty(),
        };
        if known(&self.inner.nodes.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let mut nodes = self.inner.nodes.write().unwrap_or_else(|p| p.into_inner());
        if known(&nodes) {
            return;
        }
        if selectors.is_empty() {
            nodes.remove(&agent.spiffe_id);
        } else {
            nodes.insert(agent.spiffe_id.clone(), Arc::new(selectors));
        }
        drop(nodes);
        self.inner.changes.send_modify(|r| *r += 1);
    }

    /// Brings one entry in memory in step with the store (after a change
    /// on the feed, possibly made through another server).
    pub async fn refresh(&self, id: &str) -> Result<(), RegistryError> {
        let Ok(id) = EntryId::new(id) else {
            return Ok(());
        };
        let stored = self.inner.store.get_entry(&id).await?;
        let current = self.snapshot().get(&id).cloned();
        if stored != current {
            self.publish(|m| match stored {
                Some(e) => {
                    m.insert(id, e);
                }
                None => {
                    m.remove(&id);
                }
            });
        }
        Ok(())
    }

    /// Reloads every entry (after a gap in the change feed).
    pub async fn reload(&self) -> Result<(), RegistryError> {
        let entries: BTreeMap<_, _> = self
            .inner
            .store
            .list_entries()
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        if *self.snapshot() != entries {
            self.publish(|m| *m = entries);
        }
        Ok(())
    }

    /// Notified on every entry change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}
