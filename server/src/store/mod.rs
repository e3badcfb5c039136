//! Persistence behind the [`Store`] trait. The default implementation is
//! sled ([`SledStore`]); every implementation must pass [`conformance`].
//!
//! The trait is synchronous: sled answers in microseconds. A networked SQL
//! store would implement it over a blocking pool behind the same trait.

mod records;
mod sled_store;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
mod memory;

#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryStore;
pub use records::{
    AgentRecord, CaKeyRecord, CaKeyState, DelegationRecord, JoinTokenRecord, JwtKeyRecord,
    PolicyRecord,
};
pub use sled_store::SledStore;

use lanyard_core::task::TaskRecord;
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskId};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An item with that key already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// No item with that key.
    #[error("{0} not found")]
    NotFound(String),
    /// The stored bytes could not be decoded (corruption or an incompatible
    /// version); the item is left untouched.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The key of the bad record.
        key: String,
        /// What failed.
        reason: String,
    },
    /// The database itself failed.
    #[error("database error: {0}")]
    Backend(String),
}

/// The outcome of a compare-and-swap: `Ok(())` when written, otherwise the
/// record found instead of the expected one.
pub type Swap<T> = Result<(), Option<T>>;

/// Lanyard's persistent state, in domain types.
pub trait Store: Send + Sync + 'static {
    /// Inserts a new entry; `AlreadyExists` when the ID is taken.
    fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError>;
    /// Replaces an existing entry; `NotFound` when absent.
    fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError>;
    /// Reads one entry.
    fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError>;
    /// Removes an entry, returning it.
    fn delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError>;
    /// Every entry, ordered by ID.
    fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError>;

    /// Replaces the agent record `id` with `new` (`None` removes it) only if
    /// it currently equals `expected` (`None`: absent). Every change to an
    /// agent goes through here, so a renewal can never write back a record
    /// that a concurrent ban or eviction changed. On a mismatch nothing is
    /// written and the current record is returned.
    fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<Swap<AgentRecord>, StoreError>;
    /// Reads one agent.
    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError>;
    /// Every agent, ordered by ID.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Stores a new join token (keyed by the token's hash).
    fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Atomically removes and returns the token with this hash: a token can
    /// be taken once.
    fn take_join_token(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>, StoreError>;

    /// Inserts or replaces a CA key.
    fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError>;
    /// Every CA key, ordered by ID.
    fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError>;
    /// Removes a CA key.
    fn delete_ca_key(&self, id: &str) -> Result<(), StoreError>;

    /// Inserts or replaces a JWT signing key.
    fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError>;
    /// Every JWT signing key, ordered by key ID.
    fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError>;
    /// Removes a JWT signing key.
    fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError>;

    /// Replaces task `id` with `new` only if it currently equals `expected`
    /// (`None`: absent); as for agents, concurrent state changes (end,
    /// revoke, a parent's cascade) cannot overwrite each other.
    fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<Swap<TaskRecord>, StoreError>;
    /// Reads one task.
    fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;
    /// Every task, ordered by ID.
    fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError>;
    /// Removes a task, returning it.
    fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// Stores a new policy version; `AlreadyExists` when the version is taken.
    fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError>;
    /// Every policy version, oldest first.
    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;

    /// Stores a new delegation token (keyed by its hash).
    fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError>;
    /// Atomically removes and returns the delegation with this hash.
    fn take_delegation(&self, token_hash: &str) -> Result<Option<DelegationRecord>, StoreError>;
    /// Every stored delegation token (hashes only), ordered by hash.
    fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError>;

    /// The current value of a named counter (0 when never bumped).
    fn counter(&self, name: &str) -> Result<u64, StoreError>;
    /// Atomically increments a named counter and returns the new value.
    fn bump_counter(&self, name: &str) -> Result<u64, StoreError>;
}
