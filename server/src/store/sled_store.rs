//! The default store: sled in `--data-dir`, one tree per record kind, JSON
//! values, and a flush (fsync) after every write so an acknowledged change
//! survives a crash.

use std::path::Path;

use lanyard_core::{EntryId, RegistrationEntry, SpiffeId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use lanyard_core::TaskId;
use lanyard_core::task::TaskRecord;

use super::{
    AgentRecord, CaKeyRecord, DelegationRecord, JoinTokenRecord, JwtKeyRecord, PolicyRecord, Store,
    StoreError,
};

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
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", dir.display())))?;
        let meta = db.open_tree("meta").map_err(backend)?;
        let marker = dir.join(MARKER);
        match meta.get("schema").map_err(backend)? {
            None if marker.exists() => {
                return Err(StoreError::Backend(format!(
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
                return Err(StoreError::Backend(format!(
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
            flusher: std::sync::Arc::default(),
            db,
        };
        store.flush()?;
        if !marker.exists() {
            std::fs::write(&marker, b"1\n")
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| StoreError::Backend(format!("{}: {e}", marker.display())))?;
        }
        Ok(store)
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

    fn list<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)
            .map_err(backend)?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn remove<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let old = tree.remove(key).map_err(backend)?;
        self.flush()?;
        old.map(|v| decode(key, &v)).transpose()
    }

    fn insert_new(&self, tree: &sled::Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        match tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(backend)?
        {
            Ok(()) => self.flush(),
            Err(_) => Err(StoreError::AlreadyExists(
                String::from_utf8_lossy(key).into_owned(),
            )),
        }
    }

    /// Compare-and-swap on decoded records (the stored bytes may come from
    /// an older encoder), then on the exact bytes read, so a write in
    /// between is detected by sled.
    fn swap<T: Serialize + DeserializeOwned + PartialEq>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<super::Swap<T>, StoreError> {
        let raw = tree.get(key).map_err(backend)?;
        let current: Option<T> = raw.as_ref().map(|b| decode(key, b)).transpose()?;
        if current.as_ref() != expected {
            return Ok(Err(current));
        }
        let new_raw = new.map(encode).transpose()?;
        match tree.compare_and_swap(key, raw, new_raw).map_err(backend)? {
            Ok(()) => {
                self.flush()?;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(e
                .current
                .as_ref()
                .map(|b| decode(key, b))
                .transpose()?)),
        }
    }

    fn put(&self, tree: &sled::Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        tree.insert(key, value).map_err(backend)?;
        self.flush()
    }
}

impl Store for SledStore {
    fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        self.insert_new(&self.entries, entry.id.as_str().as_bytes(), encode(entry)?)
    }

    fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        let key = entry.id.as_str().as_bytes();
        let value = encode(entry)?;
        let updated = self
            .entries
            .fetch_and_update(key, |old| old.map(|_| value.clone()))
            .map_err(backend)?;
        if updated.is_none() {
            return Err(StoreError::NotFound(format!("entry {}", entry.id)));
        }
        self.flush()
    }

    fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        Self::get(&self.entries, id.as_str().as_bytes())
    }

    fn delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        self.remove(&self.entries, id.as_str().as_bytes())
    }

    fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError> {
        Self::list(&self.entries)
    }

    fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<super::Swap<AgentRecord>, StoreError> {
        self.swap(&self.agents, id.as_str().as_bytes(), expected, new)
    }

    fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        Self::get(&self.agents, id.as_str().as_bytes())
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Self::list(&self.agents)
    }

    fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.insert_new(&self.tokens, token.token_hash.as_bytes(), encode(token)?)
    }

    fn take_join_token(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.remove(&self.tokens, token_hash.as_bytes())
    }

    fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError> {
        self.put(&self.ca_keys, key.id.as_bytes(), encode(key)?)
    }

    fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        Self::list(&self.ca_keys)
    }

    fn delete_ca_key(&self, id: &str) -> Result<(), StoreError> {
        self.remove::<CaKeyRecord>(&self.ca_keys, id.as_bytes())
            .map(|_| ())
    }

    fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        self.put(&self.jwt_keys, key.kid.as_bytes(), encode(key)?)
    }

    fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        Self::list(&self.jwt_keys)
    }

    fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError> {
        self.remove::<JwtKeyRecord>(&self.jwt_keys, kid.as_bytes())
            .map(|_| ())
    }

    fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<super::Swap<TaskRecord>, StoreError> {
        self.swap(&self.tasks, id.as_str().as_bytes(), expected, Some(new))
    }

    fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Self::get(&self.tasks, id.as_str().as_bytes())
    }

    fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Self::list(&self.tasks)
    }

    fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.remove(&self.tasks, id.as_str().as_bytes())
    }

    fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        // Big-endian keys keep versions in order.
        self.insert_new(
            &self.policies,
            &policy.version.to_be_bytes(),
            encode(policy)?,
        )
    }

    fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        Self::list(&self.policies)
    }

    fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        self.insert_new(&self.delegations, d.token_hash.as_bytes(), encode(d)?)
    }

    fn take_delegation(&self, token_hash: &str) -> Result<Option<DelegationRecord>, StoreError> {
        self.remove(&self.delegations, token_hash.as_bytes())
    }

    fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        Self::list(&self.delegations)
    }

    fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .counters
            .get(name)
            .map_err(backend)?
            .map_or(0, |v| decode_u64(&v)))
    }

    fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        let new = self
            .counters
            .update_and_fetch(name, |old| {
                let n = old.map_or(0, decode_u64) + 1;
                Some(n.to_be_bytes().to_vec())
            })
            .map_err(backend)?
            .map_or(0, |v| decode_u64(&v));
        self.flush()?;
        Ok(new)
    }
}

fn decode_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_store_passes_the_conformance_suite() {
        super::super::conformance::run_all(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            (store, dir)
        });
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.create_entry(&super::super::conformance::entry("a", "spiffe://td/w"))
                .unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.list_entries().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_record_is_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.entries.insert("bad", b"{not json".as_slice()).unwrap();
        let err = s.list_entries().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // Still there for an operator to inspect.
        assert!(s.entries.get("bad").unwrap().is_some());
    }

    #[test]
    fn a_truncated_database_is_refused_not_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.create_entry(&super::super::conformance::entry("a", "spiffe://td/w"))
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
            Err(StoreError::Backend(msg)) => {
                assert!(
                    msg.contains("truncated") || msg.contains("opening"),
                    "{msg}"
                )
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(s) => panic!(
                "a truncated database opened with {} entries",
                s.list_entries().map(|e| e.len()).unwrap_or(0)
            ),
        }
    }

    #[test]
    fn garbage_database_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\x00garbage\xff").unwrap();
        std::fs::write(dir.path().join("db"), b"\x00garbage\xff").unwrap();
        match SledStore::open(dir.path()) {
            Err(StoreError::Backend(msg)) => assert!(msg.contains("opening"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            // sled may treat unreadable files as empty; then it must still work.
            Ok(s) => assert!(s.list_entries().is_ok()),
        }
    }
}
