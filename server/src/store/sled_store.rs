//! The default store: sled in `--data-dir`, one tree per table, JSON
//! values, and a flush (fsync) after every write so an acknowledged change
//! survives a crash.

use std::path::Path;

use lanyard_core::{EntryId, RegistrationEntry};
use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use super::{ChangeKind, DocKind, Feed, LocalFeed, Row, Store, StoreError, Swap, Table, Write};

const SCHEMA_VERSION: &[u8] = b"1";
/// Written beside the database once it holds data: a database that opens
/// empty next to this marker was truncated or lost, and is refused rather
/// than silently started afresh (with a new CA).
const MARKER: &str = "lanyard-initialized";

/// Group commit: writers that finish while a flush is in progress share
/// the next one instead of each paying for its own fsync.
#[derive(Debug, Default)]
struct Flusher {
    /// Bumped after every applied write.
    written: std::sync::atomic::AtomicU64,
    /// The highest `written` value a completed flush covers.
    flushed: std::sync::atomic::AtomicU64,
    /// One flush at a time.
    lock: std::sync::Mutex<()>,
}

/// Most bytes of pages sled keeps in memory: with its default (1 GiB) the
/// server's memory could follow the data, which grows with task churn (a
/// task record is kept a day after it ends); the hot state is indexed.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// sled-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    flusher: std::sync::Arc<Flusher>,
    entries: sled::Tree,
    agents: sled::Tree,
    tokens: sled::Tree,
    ca_keys: sled::Tree,
    jwt_keys: sled::Tree,
    counters: sled::Tree,
    tasks: sled::Tree,
    policies: sled::Tree,
    delegations: sled::Tree,
    /// Entry identity (SPIFFE ID, parent, selectors) → entry ID.
    entry_ids: sled::Tree,
    /// Small documents, keyed `kind NUL key`.
    docs: sled::Tree,
    feed: std::sync::Arc<LocalFeed>,
}

fn doc_prefix(kind: DocKind) -> Vec<u8> {
    let mut k = kind.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// A record's key in its tree: its order bytes (a policy version
/// big-endian), after `kind NUL` for a document.
fn tree_key(table: Table, key: &str) -> Result<Vec<u8>, StoreError> {
    let order = table
        .order(key)
        .ok_or_else(|| StoreError::NotFound(format!("{} {key}", table.what())))?;
    Ok(match table {
        Table::Docs(kind) => {
            let mut k = doc_prefix(kind);
            k.extend_from_slice(&order);
            k
        }
        _ => order,
    })
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::caused(e.to_string(), e)
}

fn encode(v: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::caused(format!("encode: {e}"), e))
}

fn decode(table: Table, key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("{}/{key}", table.name()),
        reason: e.to_string(),
    })
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn finish<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

fn existing_id(raw: &[u8]) -> EntryId {
    EntryId::new(&String::from_utf8_lossy(raw)).unwrap_or_else(|_| EntryId::from_random([0; 16]))
}

/// The identity an entry's stored bytes index (none when they do not
/// decode: nothing to unindex).
fn identity_of(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<RegistrationEntry>(bytes)
        .ok()
        .map(|e| super::entry_identity(&e))
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Self::open_db(dir)?;
        let meta = db.open_tree("meta").map_err(backend)?;
        let marker = dir.join(MARKER);
        match meta.get("schema").map_err(backend)? {
            None if marker.exists() => {
                return Err(StoreError::backend(format!(
                    "the database in {} is empty, but {} says it held data: it was truncated or lost; restore it from a backup, or remove the directory to start afresh with a new CA",
                    dir.display(),
                    marker.display()
                )));
            }
            None => {
                meta.insert("schema", SCHEMA_VERSION).map_err(backend)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(StoreError::backend(format!(
                    "unsupported schema version {:?} in {}",
                    String::from_utf8_lossy(&v),
                    dir.display()
                )));
            }
        }
        let store = Self {
            entries: db.open_tree("entries").map_err(backend)?,
            agents: db.open_tree("agents").map_err(backend)?,
            tokens: db.open_tree("join_tokens").map_err(backend)?,
            ca_keys: db.open_tree("ca_keys").map_err(backend)?,
            jwt_keys: db.open_tree("jwt_keys").map_err(backend)?,
            counters: db.open_tree("counters").map_err(backend)?,
            tasks: db.open_tree("tasks").map_err(backend)?,
            policies: db.open_tree("policies").map_err(backend)?,
            delegations: db.open_tree("delegations").map_err(backend)?,
            entry_ids: db.open_tree("entry_ids").map_err(backend)?,
            docs: db.open_tree("docs").map_err(backend)?,
            feed: std::sync::Arc::default(),
            flusher: std::sync::Arc::default(),
            db,
        };
        store.index_entries()?;
        store.flush()?;
        if !marker.exists() {
            std::fs::write(&marker, b"1\n")
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| StoreError::caused(format!("{}: {e}", marker.display()), e))?;
        }
        Ok(store)
    }

    /// Opens sled (cache: [`CACHE_BYTES`]), waiting up to 2 s for the lock
    /// of a process (or an earlier handle) that is letting go of the
    /// database: a restart racing the previous exit, or a tool right after.
    fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(CACHE_BYTES)
                .open()
            {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(StoreError::caused(
                        format!("opening {}: {e}", dir.display()),
                        e,
                    ));
                }
            }
        }
    }

    /// Builds the entry identity index of a database written before it
    /// existed.
    fn index_entries(&self) -> Result<(), StoreError> {
        if !self.entry_ids.is_empty() || self.entries.is_empty() {
            return Ok(());
        }
        for kv in self.entries.iter() {
            let (k, v) = kv.map_err(backend)?;
            let e: RegistrationEntry =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: format!("entries/{}", String::from_utf8_lossy(&k)),
                    reason: e.to_string(),
                })?;
            self.entry_ids
                .insert(
                    super::entry_identity(&e).as_bytes(),
                    e.id.as_str().as_bytes(),
                )
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Runs a write (which flushes) on the blocking pool and announces it
    /// on the feed once durable.
    async fn write_blocking<T: Send + 'static>(
        &self,
        change: Option<(ChangeKind, String)>,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| StoreError::caused(format!("store task: {e}"), e))??;
        if let Some((kind, key)) = change {
            self.feed.push(kind, key);
        }
        Ok(out)
    }

    /// Makes every write applied so far durable before returning. A write
    /// covered by a flush that started after it was applied returns without
    /// another fsync.
    fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let f = &self.flusher;
        let mine = f.written.fetch_add(1, SeqCst) + 1;
        let _one = f.lock.lock().unwrap_or_else(|p| p.into_inner());
        if f.flushed.load(SeqCst) >= mine {
            return Ok(());
        }
        let covers = f.written.load(SeqCst);
        self.db.flush().map_err(backend)?;
        f.flushed.fetch_max(covers, SeqCst);
        Ok(())
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        match table {
            Table::Entries => &self.entries,
            Table::Agents => &self.agents,
            Table::JoinTokens => &self.tokens,
            Table::CaKeys => &self.ca_keys,
            Table::JwtKeys => &self.jwt_keys,
            Table::Tasks => &self.tasks,
            Table::Policies => &self.policies,
            Table::Delegations => &self.delegations,
            Table::Docs(_) => &self.docs,
        }
    }

    /// Announces a durable write of `key` when `table` is followed.
    fn announce(&self, table: Table, key: &str) {
        if let Some(kind) = table.change() {
            self.feed.push(kind, key);
        }
    }

    /// A write to an indexed table (entries): the record and its identity
    /// in one transaction.
    fn write_indexed(&self, table: Table, row: &Row, how: Write) -> Result<(), StoreError> {
        let key = tree_key(table, &row.key)?;
        let ident = row.identity.as_deref().unwrap_or_default().as_bytes();
        let value = encode(&row.data)?;
        let what = || format!("{} {}", table.what(), row.key);
        let r = (self.tree(table), &self.entry_ids).transaction(|(records, ids)| {
            let old = records.get(&key)?;
            match (how, &old) {
                (Write::New, Some(_)) => return abort(StoreError::AlreadyExists(what())),
                (Write::Replace, None) => return abort(StoreError::NotFound(what())),
                _ => {}
            }
            if let Some(other) = ids.get(ident)?
                && other.as_ref() != key.as_slice()
            {
                return abort(StoreError::DuplicateEntry(existing_id(&other)));
            }
            if let Some(old) = old.as_deref().and_then(identity_of) {
                ids.remove(old.as_bytes())?;
            }
            records.insert(key.as_slice(), value.as_slice())?;
            ids.insert(ident, key.as_slice())?;
            Ok(())
        });
        finish(r)
    }

    fn write_plain(&self, table: Table, row: &Row, how: Write) -> Result<(), StoreError> {
        let tree = self.tree(table);
        let key = tree_key(table, &row.key)?;
        let value = encode(&row.data)?;
        let what = || format!("{} {}", table.what(), row.key);
        match how {
            Write::Upsert => {
                tree.insert(key, value).map_err(backend)?;
            }
            Write::New => {
                if tree
                    .compare_and_swap(&key, None as Option<&[u8]>, Some(value))
                    .map_err(backend)?
                    .is_err()
                {
                    return Err(StoreError::AlreadyExists(what()));
                }
            }
            Write::Replace => loop {
                let Some(old) = tree.get(&key).map_err(backend)? else {
                    return Err(StoreError::NotFound(what()));
                };
                let swapped = tree
                    .compare_and_swap(&key, Some(old), Some(value.as_slice()))
                    .map_err(backend)?;
                if swapped.is_ok() {
                    break;
                }
            },
        }
        Ok(())
    }

    fn take_now(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError> {
        let k = tree_key(table, key)?;
        let old = if table == Table::Entries {
            let r = (&self.entries, &self.entry_ids).transaction(|(records, ids)| {
                let old = records.remove(k.as_slice())?;
                if let Some(ident) = old.as_deref().and_then(identity_of) {
                    ids.remove(ident.as_bytes())?;
                }
                Ok(old)
            });
            finish(r)?
        } else {
            self.tree(table).remove(&k).map_err(backend)?
        };
        self.flush()?;
        old.map(|v| decode(table, key, &v)).transpose()
    }

    fn bump_now(&self, name: &str, f: impl Fn(u64) -> u64) -> Result<u64, StoreError> {
        let new = self
            .counters
            .update_and_fetch(name, |old| {
                Some(f(old.map_or(0, decode_u64)).to_be_bytes().to_vec())
            })
            .map_err(backend)?
            .map_or(0, |v| decode_u64(&v));
        self.flush()?;
        Ok(new)
    }
}

#[async_trait::async_trait]
impl Store for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError> {
        self.tree(table)
            .get(tree_key(table, key)?)
            .map_err(backend)?
            .map(|v| decode(table, key, &v))
            .transpose()
    }

    async fn list(&self, table: Table) -> Result<Vec<(String, Value)>, StoreError> {
        let prefix = match table {
            Table::Docs(kind) => doc_prefix(kind),
            _ => Vec::new(),
        };
        self.tree(table)
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let key = table.key_of(&k[prefix.len()..]);
                let value = decode(table, &key, &v)?;
                Ok((key, value))
            })
            .collect()
    }

    async fn write(&self, table: Table, row: &Row, how: Write) -> Result<(), StoreError> {
        let row = row.clone();
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if row.identity.is_some() {
                me.write_indexed(table, &row, how)?;
            } else {
                me.write_plain(table, &row, how)?;
            }
            me.flush()?;
            me.announce(table, &row.key);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::caused(format!("store task: {e}"), e))?
    }

    /// Compares on the exact bytes read, so a write in between is detected
    /// by sled (and reported as a mismatch with what is there now).
    async fn swap(
        &self,
        table: Table,
        key: &str,
        matches: &(dyn for<'v> Fn(Option<&'v Value>) -> bool + Send + Sync),
        new: Option<&Row>,
    ) -> Result<Swap<Value>, StoreError> {
        let k = tree_key(table, key)?;
        let raw = self.tree(table).get(&k).map_err(backend)?;
        let current = raw.as_ref().map(|b| decode(table, key, b)).transpose()?;
        if !matches(current.as_ref()) {
            return Ok(Err(current));
        }
        let new_raw = new.map(|r| encode(&r.data)).transpose()?;
        let (me, key_owned) = (self.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || {
            match me
                .tree(table)
                .compare_and_swap(&k, raw, new_raw)
                .map_err(backend)?
            {
                Ok(()) => {
                    me.flush()?;
                    me.announce(table, &key_owned);
                    Ok(Ok(()))
                }
                Err(e) => Ok(Err(e
                    .current
                    .map(|b| decode(table, &key_owned, &b))
                    .transpose()?)),
            }
        })
        .await
        .map_err(|e| StoreError::caused(format!("store task: {e}"), e))?
    }

    async fn take(
        &self,
        table: Table,
        key: &str,
        announce: bool,
    ) -> Result<Option<Value>, StoreError> {
        let (me, key) = (self.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || {
            let old = me.take_now(table, &key)?;
            if announce && old.is_some() {
                me.announce(table, &key);
            }
            Ok(old)
        })
        .await
        .map_err(|e| StoreError::caused(format!("store task: {e}"), e))?
    }

    async fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .counters
            .get(name)
            .map_err(backend)?
            .map_or(0, |v| decode_u64(&v)))
    }

    async fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        let n = name.to_owned();
        let change = (ChangeKind::Counter, name.to_owned());
        self.write_blocking(Some(change), move |s| s.bump_now(&n, |v| v + 1))
            .await
    }

    async fn raise_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let n = name.to_owned();
        let change = (ChangeKind::Counter, name.to_owned());
        self.write_blocking(Some(change), move |s| {
            s.bump_now(&n, |v| v.max(value)).map(|_| ())
        })
        .await
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
}

fn decode_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sled_store_passes_the_conformance_suite() {
        super::super::conformance::run_all(|| async {
            let dir = tempfile::tempdir().unwrap();
            let store: std::sync::Arc<dyn Store> =
                std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
            (store.clone(), store, dir)
        })
        .await;
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s: &dyn Store = &SledStore::open(dir.path()).unwrap();
            s.create_entry(&super::super::conformance::entry("a", "spiffe://td/w"))
                .await
                .unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let s: &dyn Store = &s;
        assert_eq!(s.list_entries().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn corrupt_record_is_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.entries.insert("bad", b"{not json".as_slice()).unwrap();
        let err = (&s as &dyn Store).list_entries().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // Still there for an operator to inspect.
        assert!(s.entries.get("bad").unwrap().is_some());
    }

    #[tokio::test]
    async fn a_truncated_database_is_refused_not_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s: &dyn Store = &SledStore::open(dir.path()).unwrap();
            s.create_entry(&super::super::conformance::entry("a", "spiffe://td/w"))
                .await
                .unwrap();
        }
        // Truncate every file of the database (a full disk, a bad copy).
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if f.path().is_file() && f.file_name() != MARKER {
                std::fs::File::create(f.path()).unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(dir.path().join("blobs"));
        match SledStore::open(dir.path()) {
            Err(StoreError::Backend { message: msg, .. }) => {
                assert!(
                    msg.contains("truncated") || msg.contains("opening"),
                    "{msg}"
                )
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(s) => panic!(
                "a truncated database opened with {} entries",
                s.entries.len()
            ),
        }
    }

    #[tokio::test]
    async fn garbage_database_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\x00garbage\xff").unwrap();
        std::fs::write(dir.path().join("db"), b"\x00garbage\xff").unwrap();
        match SledStore::open(dir.path()) {
            Err(StoreError::Backend { message: msg, .. }) => {
                assert!(msg.contains("opening"), "{msg}")
            }
            Err(e) => panic!("unexpected error {e}"),
            // sled may treat unreadable files as empty; then it must still work.
            Ok(s) => assert!((&s as &dyn Store).list_entries().await.is_ok()),
        }
    }
}
