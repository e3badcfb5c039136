//! An in-memory [`Store`] for unit tests of the code around the store seam.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lanyard_core::task::TaskRecord;
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskId};

use super::{
    AgentRecord, CaKeyRecord, DelegationRecord, JoinTokenRecord, JwtKeyRecord, PolicyRecord, Store,
    StoreError,
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
}

/// A [`Store`] in a mutex-guarded map.
#[derive(Default)]
pub struct MemoryStore(Mutex<Inner>);

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl Store for MemoryStore {
    fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.with(|i| {
            if i.entries.contains_key(&entry.id) {
                return Err(StoreError::AlreadyExists(entry.id.to_string()));
            }
            i.entries.insert(entry.id.clone(), entry.clone());
            Ok(())
        })
    }
    fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.with(|i| match i.entries.get_mut(&entry.id) {
            Some(e) => {
                *e = entry.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("entry {}", entry.id))),
        })
    }
    fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        Ok(self.with(|i| i.entries.get(id).cloned()))
    }
    fn delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        Ok(self.with(|i| i.entries.remove(id)))
    }
    fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError> {
        Ok(self.with(|i| i.entries.values().cloned().collect()))
    }
    #[allow(clippy::result_large_err)] // the record found, returned by value like the trait's
    fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<super::Swap<AgentRecord>, StoreError> {
        Ok(self.with(|i| {
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
    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.with(|i| i.agents.get(id).cloned()))
    }
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.with(|i| i.agents.values().cloned().collect()))
    }
    fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.with(|i| {
            if i.tokens.contains_key(&token.token_hash) {
                return Err(StoreError::AlreadyExists("join token".into()));
            }
            i.tokens.insert(token.token_hash.clone(), token.clone());
            Ok(())
        })
    }
    fn take_join_token(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        Ok(self.with(|i| i.tokens.remove(token_hash)))
    }
    fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError> {
        self.with(|i| i.ca_keys.insert(key.id.clone(), key.clone()));
        Ok(())
    }
    fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        Ok(self.with(|i| i.ca_keys.values().cloned().collect()))
    }
    fn delete_ca_key(&self, id: &str) -> Result<(), StoreError> {
        self.with(|i| i.ca_keys.remove(id));
        Ok(())
    }
    fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        self.with(|i| i.jwt_keys.insert(key.kid.clone(), key.clone()));
        Ok(())
    }
    fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        Ok(self.with(|i| i.jwt_keys.values().cloned().collect()))
    }
    fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError> {
        self.with(|i| i.jwt_keys.remove(kid));
        Ok(())
    }
    #[allow(clippy::result_large_err)]
    fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<super::Swap<TaskRecord>, StoreError> {
        Ok(self.with(|i| {
            let current = i.tasks.get(id);
            if current != expected {
                return Err(current.cloned());
            }
            i.tasks.insert(id.clone(), new.clone());
            Ok(())
        }))
    }
    fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.with(|i| i.tasks.get(id).cloned()))
    }
    fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.with(|i| i.tasks.values().cloned().collect()))
    }
    fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.with(|i| i.tasks.remove(id)))
    }
    fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        self.with(|i| {
            if i.policies.contains_key(&policy.version) {
                return Err(StoreError::AlreadyExists(format!(
                    "policy version {}",
                    policy.version
                )));
            }
            i.policies.insert(policy.version, policy.clone());
            Ok(())
        })
    }
    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        Ok(self.with(|i| i.policies.values().cloned().collect()))
    }
    fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        self.with(|i| {
            if i.delegations.contains_key(&d.token_hash) {
                return Err(StoreError::AlreadyExists("delegation token".into()));
            }
            i.delegations.insert(d.token_hash.clone(), d.clone());
            Ok(())
        })
    }
    fn take_delegation(&self, token_hash: &str) -> Result<Option<DelegationRecord>, StoreError> {
        Ok(self.with(|i| i.delegations.remove(token_hash)))
    }
    fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        Ok(self.with(|i| i.delegations.values().cloned().collect()))
    }
    fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.with(|i| i.counters.get(name).copied().unwrap_or(0)))
    }
    fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.with(|i| {
            let c = i.counters.entry(name.to_owned()).or_insert(0);
            *c += 1;
            *c
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_conformance_suite() {
        super::super::conformance::run_all(|| (super::MemoryStore::default(), ()));
    }
}
