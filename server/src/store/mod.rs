//! Persistence behind the [`Store`] trait. The default implementation is
//! sled ([`SledStore`], one server, embedded); [`PgStore`] shares one
//! PostgreSQL database between several servers. Every implementation must
//! pass [`conformance`].
//!
//! The trait is async: handlers await it without blocking a runtime worker
//! (sled's writes, which fsync, run on the blocking pool; PostgreSQL's are
//! network round trips). Changes that race each other go through
//! compare-and-swap (`swap_*`), and every change is announced on the
//! store's change feed ([`Change`]), which is what the server's in-memory
//! views and push streams follow: with a shared database, a change made
//! through another server arrives the same way as one's own.

mod feed;
pub(crate) mod pg;
mod records;
mod sled_store;
pub mod transfer;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
mod memory;

pub use feed::{Change, ChangeKind, Feed, LocalFeed};
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryStore;
pub use pg::{PgOptions, PgStore};
pub use records::{
    AgentRecord, CaKeyRecord, CaKeyState, DelegationRecord, JoinTokenRecord, JwtKeyRecord,
    PolicyRecord,
};
pub use sled_store::SledStore;

use lanyard_core::task::TaskRecord;
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskId};
use serde_json::Value;
use tokio::sync::watch;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An item with that key already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// An entry with the same SPIFFE ID, parent ID and selectors exists
    /// (possibly created through another server at the same moment).
    #[error("an entry with the same SPIFFE ID, parent ID and selectors already exists: {0}")]
    DuplicateEntry(EntryId),
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

/// The key that makes two entries the same registration: SPIFFE ID, parent
/// ID and the (sorted, de-duplicated) selectors. Stores keep it unique, so
/// two servers creating the same entry at once cannot both succeed.
pub fn entry_identity(entry: &RegistrationEntry) -> String {
    let mut selectors: Vec<String> = entry.selectors.iter().map(ToString::to_string).collect();
    selectors.sort();
    selectors.dedup();
    let mut key = format!("{}\n{}", entry.spiffe_id, entry.parent_id);
    for s in selectors {
        key.push('\n');
        key.push_str(&s);
    }
    key
}

/// The kinds of small documents kept by [`Store::put_doc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    /// A revocation (key: `kind:value`).
    Revocation,
    /// A quarantine (key: its ID).
    Quarantine,
    /// A CRL signed by one CA (key: the CA's ID).
    Crl,
    /// A batch of X.509-SVIDs a server signed, kept until they expire
    /// (key: server ID and batch number).
    Issued,
}

impl DocKind {
    /// Every kind.
    pub const ALL: [DocKind; 4] = [
        DocKind::Revocation,
        DocKind::Quarantine,
        DocKind::Crl,
        DocKind::Issued,
    ];

    /// Its name in a database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revocation => "revocation",
            Self::Quarantine => "quarantine",
            Self::Crl => "crl",
            Self::Issued => "issued",
        }
    }

    /// The change-feed kind of its changes.
    pub fn change(self) -> ChangeKind {
        match self {
            Self::Revocation => ChangeKind::Revocation,
            Self::Quarantine => ChangeKind::Quarantine,
            Self::Crl => ChangeKind::Crl,
            Self::Issued => ChangeKind::Issued,
        }
    }
}

/// Lanyard's persistent state, in domain types.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend, for logs: `sled` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Inserts a new entry; `AlreadyExists` when the ID is taken,
    /// `DuplicateEntry` when an entry with the same identity exists.
    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError>;
    /// Replaces an existing entry; `NotFound` when absent, `DuplicateEntry`
    /// when the change would make it the same as another entry.
    async fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError>;
    /// Reads one entry.
    async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError>;
    /// Removes an entry, returning it.
    async fn delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError>;
    /// Every entry, ordered by ID.
    async fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError>;

    /// Replaces the agent record `id` with `new` (`None` removes it) only if
    /// it currently equals `expected` (`None`: absent). Every change to an
    /// agent goes through here, so a renewal can never write back a record
    /// that a concurrent ban or eviction changed, on this server or another.
    /// On a mismatch nothing is written and the current record is returned.
    async fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<Swap<AgentRecord>, StoreError>;
    /// Reads one agent.
    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError>;
    /// Every agent, ordered by ID.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Stores a new join token (keyed by the token's hash).
    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Atomically removes and returns the token with this hash: a token can
    /// be taken once, across every server.
    async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError>;

    /// Inserts or replaces a CA key.
    async fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError>;
    /// Every CA key (of every server), ordered by ID.
    async fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError>;
    /// Removes a CA key.
    async fn delete_ca_key(&self, id: &str) -> Result<(), StoreError>;

    /// Inserts or replaces a JWT signing key.
    async fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError>;
    /// Every JWT signing key (of every server), ordered by key ID.
    async fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError>;
    /// Removes a JWT signing key.
    async fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError>;

    /// Replaces task `id` with `new` only if it currently equals `expected`
    /// (`None`: absent); as for agents, concurrent state changes (end,
    /// revoke, a parent's cascade) cannot overwrite each other.
    async fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<Swap<TaskRecord>, StoreError>;
    /// Reads one task.
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;
    /// Every task, ordered by ID.
    async fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError>;
    /// Removes a task, returning it.
    async fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;

    /// Stores a new policy version; `AlreadyExists` when the version is taken.
    async fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError>;
    /// Every policy version, oldest first.
    async fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;

    /// Stores a new delegation token (keyed by its hash).
    async fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError>;
    /// Atomically removes and returns the delegation with this hash.
    async fn take_delegation(
        &self,
        token_hash: &str,
    ) -> Result<Option<DelegationRecord>, StoreError>;
    /// Every stored delegation token (hashes only), ordered by hash.
    async fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError>;

    /// Inserts or replaces a small document of `kind` (revocations,
    /// quarantines, CRLs: records read whole and listed whole).
    async fn put_doc(&self, kind: DocKind, key: &str, doc: &Value) -> Result<(), StoreError>;
    /// Reads one document.
    async fn get_doc(&self, kind: DocKind, key: &str) -> Result<Option<Value>, StoreError>;
    /// Every document of `kind`, ordered by key.
    async fn list_docs(&self, kind: DocKind) -> Result<Vec<(String, Value)>, StoreError>;
    /// Removes a document; true when it was there.
    async fn delete_doc(&self, kind: DocKind, key: &str) -> Result<bool, StoreError>;

    /// The current value of a named counter (0 when never bumped).
    async fn counter(&self, name: &str) -> Result<u64, StoreError>;
    /// Atomically increments a named counter and returns the new value.
    async fn bump_counter(&self, name: &str) -> Result<u64, StoreError>;
    /// Raises a named counter to at least `value` (restore and migration
    /// carry sequence numbers over; counters never go back).
    async fn raise_counter(&self, name: &str, value: u64) -> Result<(), StoreError>;

    /// The sequence number of the newest change (0 when none yet). A
    /// follower reads this before loading state, then follows
    /// [`Store::changes_since`] from it.
    async fn last_change(&self) -> Result<u64, StoreError>;
    /// Changes after `after`, oldest first, at most `limit`; or
    /// [`Feed::Gap`] when some of them are no longer kept (the follower
    /// was away too long) and it must reload everything.
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Feed, StoreError>;
    /// Removes changes older than `age` from a persistent feed (an
    /// in-process feed keeps a bounded number instead); returns how many.
    async fn prune_changes(&self, _age: std::time::Duration) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Wakes (with the newest known sequence) whenever new changes may be
    /// readable. Only a wake-up: what changed is read from the feed.
    fn wake(&self) -> watch::Receiver<u64>;
}
