//! Persistence behind the [`Store`] trait. The default implementation is
//! sled ([`SledStore`], one server, embedded); [`PgStore`] shares one
//! PostgreSQL database between several servers. Every implementation must
//! pass [`conformance`].
//!
//! The trait is narrow: a few operations on JSON records in [`Table`]s
//! (get, list, write, compare-and-swap, take), named counters and the
//! change feed. What each kind of record is, and which operations it
//! allows, lives once above it, in [`typed`] (`store.get_entry(..)`,
//! `store.swap_agent(..)`, ...). A backend knows tables, not records.
//!
//! It is async: handlers await it without blocking a runtime worker
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
mod table;
pub mod transfer;
mod typed;

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
    KeyPurpose, PolicyRecord,
};
pub use sled_store::SledStore;
pub use table::{Row, Table, Write};

use lanyard_core::{EntryId, RegistrationEntry};
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
    /// The database itself failed: `message` says what and why; the
    /// error that caused it, if any, is kept as the source.
    #[error("database error: {message}")]
    Backend {
        /// What failed, whole.
        message: String,
        /// The database's own error.
        #[source]
        source: Option<lanyard_core::error::BoxError>,
    },
}

impl StoreError {
    /// A database failure said by `message` alone.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// A database failure said by `message`, caused by `source`.
    pub fn caused(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
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
    /// A credential provider (key: its name; a secret's value sealed).
    Credential,
    /// A credential handed to a task (key: the lease ID).
    Lease,
    /// A call held for a person's approval (key: its ID).
    Approval,
}

impl DocKind {
    /// Every kind.
    pub const ALL: [DocKind; 7] = [
        DocKind::Revocation,
        DocKind::Quarantine,
        DocKind::Crl,
        DocKind::Issued,
        DocKind::Credential,
        DocKind::Lease,
        DocKind::Approval,
    ];

    /// Its name in a database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revocation => "revocation",
            Self::Quarantine => "quarantine",
            Self::Crl => "crl",
            Self::Issued => "issued",
            Self::Credential => "credential",
            Self::Lease => "lease",
            Self::Approval => "approval",
        }
    }

    /// The change-feed kind of its changes; `None` for documents read
    /// from the store whenever they are used (credential providers).
    pub fn change(self) -> Option<ChangeKind> {
        match self {
            Self::Revocation => Some(ChangeKind::Revocation),
            Self::Quarantine => Some(ChangeKind::Quarantine),
            Self::Crl => Some(ChangeKind::Crl),
            Self::Issued => Some(ChangeKind::Issued),
            Self::Approval => Some(ChangeKind::Approval),
            Self::Credential | Self::Lease => None,
        }
    }
}

/// Lanyard's persistent state: JSON records in tables, counters and the
/// change feed. Every write that changes a table whose records are
/// followed ([`Table::change`]) is announced on the feed with the
/// record's key, in the same transaction where the backend has them.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend, for logs: `sled`, `postgres` or `memory`.
    fn kind(&self) -> &'static str;

    /// Reads one record.
    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError>;
    /// Every record of `table`, in [`Table::order`].
    async fn list(&self, table: Table) -> Result<Vec<(String, Value)>, StoreError>;
    /// Writes a record: [`Write::New`] fails with `AlreadyExists` when the
    /// key is taken, [`Write::Replace`] with `NotFound` when it is absent,
    /// [`Write::Upsert`] does either. Where the table keeps a unique
    /// identity ([`Row::identity`], entries), a write that would give two
    /// records the same one fails with `DuplicateEntry`.
    async fn write(&self, table: Table, row: &Row, how: Write) -> Result<(), StoreError>;
    /// Replaces the record `key` with `new` (`None` removes it) only if
    /// `matches` holds for the current one (`None`: absent), atomically
    /// against every other writer, on this server or another. On a
    /// mismatch nothing is written and the current record is returned.
    /// Not for tables with an identity.
    async fn swap(
        &self,
        table: Table,
        key: &str,
        matches: &(dyn for<'v> Fn(Option<&'v Value>) -> bool + Send + Sync),
        new: Option<&Row>,
    ) -> Result<Swap<Value>, StoreError>;
    /// Atomically removes and returns a record (a single-use token is taken
    /// once, across every server). The removal is announced when
    /// `announce` and the record was there.
    async fn take(
        &self,
        table: Table,
        key: &str,
        announce: bool,
    ) -> Result<Option<Value>, StoreError>;

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
