//! The default store: sled in `--data-dir`, one tree per record kind, JSON
//! values, and a flush (fsync) after every write so an acknowledged change
//! survives a crash.

use std::path::Path;

use lanyard_core::{EntryId, RegistrationEntry, SpiffeId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use lanyard_core::TaskId;
use lanyard_core::task::TaskRecord;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use super::{
    AgentRecord, CaKeyRecord, ChangeKind, DelegationRecord, DocKind, Feed, JoinTokenRecord,
    JwtKeyRecord, LocalFeed, PolicyRecord, Store, StoreError, Swap,
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
    /// Entry identity (SPIFFE ID, parent, selectors) → entry ID.
    entry_ids: sled::Tree,
    /// Small documents, keyed `kind NUL key`.
    docs: sled::Tree,
    feed: std::sync::Arc<LocalFeed>,
}

fn doc_key(kind: DocKind, key: &str) -> Vec<u8> {
    let mut k = kind.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
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

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Self::open_db(dir)?;
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
                .map_err(|e| StoreError::Backend(format!("{}: {e}", marker.display())))?;
        }
        Ok(store)
    }

    /// Opens sled, waiting up to 2 s for the lock of a process (or an
    /// earlier handle) that is letting go of the database: a restart that
    /// races the previous process's exit, or a tool run right after it.
    fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
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
                    return Err(StoreError::Backend(format!(
                        "opening {}: {e}",
                        dir.display()
                    )));
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
        for e in Self::list::<RegistrationEntry>(&self.entries)? {
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
    async fn write<T: Send + 'static>(
        &self,
        change: Option<(ChangeKind, String)>,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| StoreError::Backend(format!("store task: {e}")))??;
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

impl SledStore {
    fn do_create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        let id = entry.id.as_str().as_bytes();
        let ident = super::entry_identity(entry);
        let value = encode(entry)?;
        let r = (&self.entries, &self.entry_ids).transaction(|(entries, ids)| {
            if entries.get(id)?.is_some() {
                return abort(StoreError::AlreadyExists(format!("entry {}", entry.id)));
            }
            if let Some(other) = ids.get(ident.as_bytes())? {
                return abort(StoreError::DuplicateEntry(existing_id(&other)));
            }
            entries.insert(id, value.clone())?;
            ids.insert(ident.as_bytes(), id)?;
            Ok(())
        });
        finish(r)?;
        self.flush()
    }

    fn do_update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        let id = entry.id.as_str().as_bytes();
        let ident = super::entry_identity(entry);
        let value = encode(entry)?;
        let r = (&self.entries, &self.entry_ids).transaction(|(entries, ids)| {
            let Some(old) = entries.get(id)? else {
                return abort(StoreError::NotFound(format!("entry {}", entry.id)));
            };
            if let Some(other) = ids.get(ident.as_bytes())?
                && other.as_ref() != id
            {
                return abort(StoreError::DuplicateEntry(existing_id(&other)));
            }
            if let Ok(old) = serde_json::from_slice::<RegistrationEntry>(&old) {
                ids.remove(super::entry_identity(&old).as_bytes())?;
            }
            entries.insert(id, value.clone())?;
            ids.insert(ident.as_bytes(), id)?;
            Ok(())
        });
        finish(r)?;
        self.flush()
    }

    fn do_get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        Self::get(&self.entries, id.as_str().as_bytes())
    }

    fn do_delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        let key = id.as_str().as_bytes();
        let r = (&self.entries, &self.entry_ids).transaction(|(entries, ids)| {
            let Some(old) = entries.remove(key)? else {
                return Ok(None);
            };
            if let Ok(e) = serde_json::from_slice::<RegistrationEntry>(&old) {
                ids.remove(super::entry_identity(&e).as_bytes())?;
            }
            Ok(Some(old))
        });
        let old = finish(r)?;
        self.flush()?;
        old.map(|v| decode(key, &v)).transpose()
    }

    fn do_list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError> {
        Self::list(&self.entries)
    }

    fn do_swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<super::Swap<AgentRecord>, StoreError> {
        self.swap(&self.agents, id.as_str().as_bytes(), expected, new)
    }

    fn do_get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        Self::get(&self.agents, id.as_str().as_bytes())
    }

    fn do_list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Self::list(&self.agents)
    }

    fn do_create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.insert_new(&self.tokens, token.token_hash.as_bytes(), encode(token)?)
    }

    fn do_take_join_token(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.remove(&self.tokens, token_hash.as_bytes())
    }

    fn do_put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError> {
        self.put(&self.ca_keys, key.id.as_bytes(), encode(key)?)
    }

    fn do_list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        Self::list(&self.ca_keys)
    }

    fn do_delete_ca_key(&self, id: &str) -> Result<(), StoreError> {
        self.remove::<CaKeyRecord>(&self.ca_keys, id.as_bytes())
            .map(|_| ())
    }

    fn do_put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        self.put(&self.jwt_keys, key.kid.as_bytes(), encode(key)?)
    }

    fn do_list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        Self::list(&self.jwt_keys)
    }

    fn do_delete_jwt_key(&self, kid: &str) -> Result<(), StoreError> {
        self.remove::<JwtKeyRecord>(&self.jwt_keys, kid.as_bytes())
            .map(|_| ())
    }

    fn do_swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<super::Swap<TaskRecord>, StoreError> {
        self.swap(&self.tasks, id.as_str().as_bytes(), expected, Some(new))
    }

    fn do_get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Self::get(&self.tasks, id.as_str().as_bytes())
    }

    fn do_list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Self::list(&self.tasks)
    }

    fn do_delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.remove(&self.tasks, id.as_str().as_bytes())
    }

    fn do_create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        // Big-endian keys keep versions in order.
        self.insert_new(
            &self.policies,
            &policy.version.to_be_bytes(),
            encode(policy)?,
        )
    }

    fn do_list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        Self::list(&self.policies)
    }

    fn do_create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        self.insert_new(&self.delegations, d.token_hash.as_bytes(), encode(d)?)
    }

    fn do_take_delegation(&self, token_hash: &str) -> Result<Option<DelegationRecord>, StoreError> {
        self.remove(&self.delegations, token_hash.as_bytes())
    }

    fn do_list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        Self::list(&self.delegations)
    }

    fn do_counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .counters
            .get(name)
            .map_err(backend)?
            .map_or(0, |v| decode_u64(&v)))
    }

    fn do_bump_counter(&self, name: &str) -> Result<u64, StoreError> {
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

#[async_trait::async_trait]
impl Store for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    async fn create_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        let change = (ChangeKind::Entry, entry.id.to_string());
        self.write(Some(change), move |s| s.do_create_entry(&e))
            .await
    }

    async fn update_entry(&self, entry: &RegistrationEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        let change = (ChangeKind::Entry, entry.id.to_string());
        self.write(Some(change), move |s| s.do_update_entry(&e))
            .await
    }

    async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        self.do_get_entry(id)
    }

    async fn delete_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, StoreError> {
        let i = id.clone();
        let old = self.write(None, move |s| s.do_delete_entry(&i)).await?;
        if old.is_some() {
            self.feed.push(ChangeKind::Entry, id.to_string());
        }
        Ok(old)
    }

    async fn list_entries(&self) -> Result<Vec<RegistrationEntry>, StoreError> {
        self.do_list_entries()
    }

    async fn swap_agent(
        &self,
        id: &SpiffeId,
        expected: Option<&AgentRecord>,
        new: Option<&AgentRecord>,
    ) -> Result<Swap<AgentRecord>, StoreError> {
        let (i, e, n) = (id.clone(), expected.cloned(), new.cloned());
        let r = self
            .write(None, move |s| s.do_swap_agent(&i, e.as_ref(), n.as_ref()))
            .await?;
        if r.is_ok() {
            self.feed.push(ChangeKind::Agent, id.to_string());
        }
        Ok(r)
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        self.do_get_agent(id)
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.do_list_agents()
    }

    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.write(None, move |s| s.do_create_join_token(&t)).await
    }

    async fn take_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let h = token_hash.to_owned();
        self.write(None, move |s| s.do_take_join_token(&h)).await
    }

    async fn put_ca_key(&self, key: &CaKeyRecord) -> Result<(), StoreError> {
        let k = key.clone();
        let change = (ChangeKind::Authority, key.id.clone());
        self.write(Some(change), move |s| s.do_put_ca_key(&k)).await
    }

    async fn list_ca_keys(&self) -> Result<Vec<CaKeyRecord>, StoreError> {
        self.do_list_ca_keys()
    }

    async fn delete_ca_key(&self, id: &str) -> Result<(), StoreError> {
        let i = id.to_owned();
        let change = (ChangeKind::Authority, id.to_owned());
        self.write(Some(change), move |s| s.do_delete_ca_key(&i))
            .await
    }

    async fn put_jwt_key(&self, key: &JwtKeyRecord) -> Result<(), StoreError> {
        let k = key.clone();
        let change = (ChangeKind::Authority, key.kid.clone());
        self.write(Some(change), move |s| s.do_put_jwt_key(&k))
            .await
    }

    async fn list_jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        self.do_list_jwt_keys()
    }

    async fn delete_jwt_key(&self, kid: &str) -> Result<(), StoreError> {
        let i = kid.to_owned();
        let change = (ChangeKind::Authority, kid.to_owned());
        self.write(Some(change), move |s| s.do_delete_jwt_key(&i))
            .await
    }

    async fn swap_task(
        &self,
        id: &TaskId,
        expected: Option<&TaskRecord>,
        new: &TaskRecord,
    ) -> Result<Swap<TaskRecord>, StoreError> {
        let (i, e, n) = (id.clone(), expected.cloned(), new.clone());
        let r = self
            .write(None, move |s| s.do_swap_task(&i, e.as_ref(), &n))
            .await?;
        if r.is_ok() {
            self.feed.push(ChangeKind::Task, id.to_string());
        }
        Ok(r)
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.do_get_task(id)
    }

    async fn list_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.do_list_tasks()
    }

    async fn delete_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let i = id.clone();
        self.write(None, move |s| s.do_delete_task(&i)).await
    }

    async fn create_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        let p = policy.clone();
        let change = (ChangeKind::Policy, policy.version.to_string());
        self.write(Some(change), move |s| s.do_create_policy(&p))
            .await
    }

    async fn list_policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.do_list_policies()
    }

    async fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        let d = d.clone();
        self.write(None, move |s| s.do_create_delegation(&d)).await
    }

    async fn take_delegation(
        &self,
        token_hash: &str,
    ) -> Result<Option<DelegationRecord>, StoreError> {
        let h = token_hash.to_owned();
        self.write(None, move |s| s.do_take_delegation(&h)).await
    }

    async fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        self.do_list_delegations()
    }

    async fn put_doc(
        &self,
        kind: DocKind,
        key: &str,
        doc: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let k = doc_key(kind, key);
        let v = encode(doc)?;
        self.write(Some((kind.change(), key.to_owned())), move |s| {
            s.put(&s.docs, &k, v)
        })
        .await
    }

    async fn get_doc(
        &self,
        kind: DocKind,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        Self::get(&self.docs, &doc_key(kind, key))
    }

    async fn list_docs(
        &self,
        kind: DocKind,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let prefix = doc_key(kind, "");
        self.docs
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((key, decode(&k, &v)?))
            })
            .collect()
    }

    async fn delete_doc(&self, kind: DocKind, key: &str) -> Result<bool, StoreError> {
        let k = doc_key(kind, key);
        let had = self
            .write(None, move |s| {
                s.remove::<serde_json::Value>(&s.docs, &k)
                    .map(|o| o.is_some())
            })
            .await?;
        if had {
            self.feed.push(kind.change(), key);
        }
        Ok(had)
    }

    async fn counter(&self, name: &str) -> Result<u64, StoreError> {
        self.do_counter(name)
    }

    async fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        let n = name.to_owned();
        let change = (ChangeKind::Counter, name.to_owned());
        self.write(Some(change), move |s| s.do_bump_counter(&n))
            .await
    }

    async fn raise_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let n = name.to_owned();
        let change = (ChangeKind::Counter, name.to_owned());
        self.write(Some(change), move |s| {
            s.counters
                .update_and_fetch(&n, |old| {
                    Some(old.map_or(0, decode_u64).max(value).to_be_bytes().to_vec())
                })
                .map_err(backend)?;
            s.flush()
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
            let s = SledStore::open(dir.path()).unwrap();
            s.create_entry(&super::super::conformance::entry("a", "spiffe://td/w"))
                .await
                .unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.list_entries().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn corrupt_record_is_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.entries.insert("bad", b"{not json".as_slice()).unwrap();
        let err = s.list_entries().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // Still there for an operator to inspect.
        assert!(s.entries.get("bad").unwrap().is_some());
    }

    #[tokio::test]
    async fn a_truncated_database_is_refused_not_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
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
            Err(StoreError::Backend(msg)) => {
                assert!(
                    msg.contains("truncated") || msg.contains("opening"),
                    "{msg}"
                )
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(s) => panic!(
                "a truncated database opened with {} entries",
                s.do_list_entries().map(|e| e.len()).unwrap_or(0)
            ),
        }
    }

    #[tokio::test]
    async fn garbage_database_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"\x00garbage\xff").unwrap();
        std::fs::write(dir.path().join("db"), b"\x00garbage\xff").unwrap();
        match SledStore::open(dir.path()) {
            Err(StoreError::Backend(msg)) => assert!(msg.contains("opening"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            // sled may treat unreadable files as empty; then it must still work.
            Ok(s) => assert!(s.list_entries().await.is_ok()),
        }
    }
}
