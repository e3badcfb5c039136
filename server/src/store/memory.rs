//! An in-memory [`Store`] for unit tests of the code around the store seam.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lanyard_core::task::TaskRecord;
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskId};

use tokio::sync::watch;

use super::{
    AgentRecord, CaKeyRecord, ChangeKind, DelegationRecord, DocKind, Feed, JoinTokenRecord,
    JwtKeyRecord, LocalFeed, PolicyRecord, Store, StoreError,
};

#[derive(Default)]
struct Inner {
    entries: BTreeMap<EntryId, RegistrationEntry>,
    agents: BTreeMap<SpiffeId, AgentRecord>,
    tokens: BTreeMap<String, JoinTokenRecord>,
    ca_keys: BTreeMap<String, CaKeyRecord>,
    jwt_keys: BTreeMap<String, JwtKeyRecord>,
    counters: BTreeMap<String, u64>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    policies: BTreeMap<u64, PolicyRecord>,
    delegations: BTreeMap<String, DelegationRecord>,
    docs: BTreeMap<(DocKind, String), serde_json::Value>,
}

impl Inner {
    fn duplicate_of(&self, entry: &RegistrationEntry) -> Option<EntryId> {
        let ident = super::entry_identity(entry);
        self.entries
            .values()
            .find(|e| e.id != entry.id && super::entry_identity(e) == ident)
            .map(|e| e.id.clone())
    }
}

/// A [`Store`] in a mutex-guarded map, with an in-process change feed.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    feed: LocalFeed,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A swap that announces a change when it wrote.
    fn pushed<T>(
        &self,
        kind: ChangeKind,
        key: String,
        f: impl FnOnce(&mut Inner) -> Result<(), T>,
    ) -> Result<(), T> {
        let r = self.with(f);
        if r.is_ok() {
            self.feed.push(kind, key);
        }
        r
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
    async fn raise_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        self.with(|i| {
            let c = i.counters.entry(name.to_owned()).or_insert(0);
            *c = (*c).max(value);
        });
        self.feed.push(ChangeKind::Counter, name);
        Ok(())
    }
    async fn last_change(&self) -> Result<u64, StoreError> {
        Ok(self.feed.last())
    }
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Feed, StoreError> {
        Ok(self.feed.since(after, limit))
    }
    fn wake(&self) -> watch::Receiver<u64> {
        self.feed.wake()
    }
    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.with(|i| {
            if i.entries.contains_key(&entry.id) {
                return Err(StoreError::AlreadyExists(entry.id.to_string()));
            }
            if let Some(dup) = i.duplicate_of(entry) {
                return Err(StoreError::DuplicateEntry(dup));
            }
            i.entries.insert(entry.id.clone(), entry.clone());
            Ok(())
        })?;
        self.feed.push(ChangeKind::Entry, entry.id.to_string());
        Ok(())
    }
    async fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.with(|i| {
            if let Some(dup) = i.duplicate_of(entry) {
                return Err(StoreError::DuplicateEntry(dup));
            }
            match i.entries.get_mut(&entry.id) {
                Some(e) => {
                    *e = entry.clone();
                    Ok(())
                }
                None => Err(StoreError::NotFound(format!("entry {}", entry.id))),
            }
        })?;
        self.feed.push(ChangeKind::Entry, entry.id.to_string());
        Ok(())
    }
    async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        Ok(self.with(|i| i.entries.get(id).cloned()))
    }
    async fn delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        let old = self.with(|i| i.entries.remove(id));
        if old.is_some() {
            self.feed.push(ChangeKind::Entry, id.to_string());
        }
        Ok(old)
    }
    async fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError> {
        Ok(self.with(|i| i.entries.values().cloned().collect()))
    }
    #[allow(clippy::result_large_err)] // the record found, returned by value like the trait's
    async fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<super::Swap<AgentRecord>, StoreError> {
        Ok(self.pushed(ChangeKind::Agent, id.to_string(), |i| {
            let current = i.agents.get(id);
            if current != expected {
                return Err(current.cloned());
            }
            match new {
                Some(a) => i.agents.insert(id.clone(), a.clone()),
                None => i.agents.remove(id),
            };
            Ok(())
        }))
    }
    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.with(|i| i.agents.get(id).cloned()))
    }
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.with(|i| i.agents.values().cloned().collect()))
    }
    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.with(|i| {
            if i.tokens.contains_key(&token.token_hash) {
                return Err(StoreError::AlreadyExists("join token".into()));
            }
            i.tokens.insert(token.token_hash.clone(), token.clone());
            Ok(())
        })
    }
    async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        Ok(self.with(|i| i.tokens.remove(token_hash)))
    }
    async fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError> {
        self.with(|i| i.ca_keys.insert(key.id.clone(), key.clone()));
        self.feed.push(ChangeKind::Authority, key.id.clone());
        Ok(())
    }
    async fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        Ok(self.with(|i| i.ca_keys.values().cloned().collect()))
    }
    async fn delete_ca_key(&self, id: &str) -> Result<(), StoreError> {
        self.with(|i| i.ca_keys.remove(id));
        self.feed.push(ChangeKind::Authority, id.to_owned());
        Ok(())
    }
    async fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        self.with(|i| i.jwt_keys.insert(key.kid.clone(), key.clone()));
        self.feed.push(ChangeKind::Authority, key.kid.clone());
        Ok(())
    }
    async fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        Ok(self.with(|i| i.jwt_keys.values().cloned().collect()))
    }
    async fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError> {
        self.with(|i| i.jwt_keys.remove(kid));
        self.feed.push(ChangeKind::Authority, kid.to_owned());
        Ok(())
    }
    #[allow(clippy::result_large_err)]
    async fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<super::Swap<TaskRecord>, StoreError> {
        Ok(self.pushed(ChangeKind::Task, id.to_string(), |i| {
            let current = i.tasks.get(id);
            if current != expected {
                return Err(current.cloned());
            }
            i.tasks.insert(id.clone(), new.clone());
            Ok(())
        }))
    }
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.with(|i| i.tasks.get(id).cloned()))
    }
    async fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.with(|i| i.tasks.values().cloned().collect()))
    }
    async fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.with(|i| i.tasks.remove(id)))
    }
    async fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        self.with(|i| {
            if i.policies.contains_key(&policy.version) {
                return Err(StoreError::AlreadyExists(format!(
                    "policy version {}",
                    policy.version
                )));
            }
            i.policies.insert(policy.version, policy.clone());
            Ok(())
        })?;
        self.feed
            .push(ChangeKind::Policy, policy.version.to_string());
        Ok(())
    }
    async fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        Ok(self.with(|i| i.policies.values().cloned().collect()))
    }
    async fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        self.with(|i| {
            if i.delegations.contains_key(&d.token_hash) {
                return Err(StoreError::AlreadyExists("delegation token".into()));
            }
            i.delegations.insert(d.token_hash.clone(), d.clone());
            Ok(())
        })
    }
    async fn take_delegation(
        &self,
        token_hash: &str,
    ) -> Result<Option<DelegationRecord>, StoreError> {
        Ok(self.with(|i| i.delegations.remove(token_hash)))
    }
    async fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        Ok(self.with(|i| i.delegations.values().cloned().collect()))
    }
    async fn put_doc(
        &self,
        kind: DocKind,
        key: &str,
        doc: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.with(|i| i.docs.insert((kind, key.to_owned()), doc.clone()));
        self.feed.push(kind.change(), key);
        Ok(())
    }
    async fn get_doc(
        &self,
        kind: DocKind,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.with(|i| i.docs.get(&(kind, key.to_owned())).cloned()))
    }
    async fn list_docs(
        &self,
        kind: DocKind,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        Ok(self.with(|i| {
            i.docs
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, key), v)| (key.clone(), v.clone()))
                .collect()
        }))
    }
    async fn delete_doc(&self, kind: DocKind, key: &str) -> Result<bool, StoreError> {
        let had = self.with(|i| i.docs.remove(&(kind, key.to_owned())).is_some());
        if had {
            self.feed.push(kind.change(), key);
        }
        Ok(had)
    }
    async fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.with(|i| i.counters.get(name).copied().unwrap_or(0)))
    }
    async fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        let n = self.with(|i| {
            let c = i.counters.entry(name.to_owned()).or_insert(0);
            *c += 1;
            *c
        });
        self.feed.push(ChangeKind::Counter, name);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_passes_the_conformance_suite() {
        super::super::conformance::run_all(|| async {
            let s: std::sync::Arc<dyn super::Store> =
                std::sync::Arc::new(super::MemoryStore::default());
            (s.clone(), s, ())
        })
        .await;
    }
}
