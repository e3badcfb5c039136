//! Moving a store's records: `datastore backup` (to a JSON Lines file),
//! `datastore restore` (from one, into an empty store) and `datastore
//! migrate` (sled to PostgreSQL), all through the [`Store`] trait so every
//! backend reads and writes the same documents.
//!
//! The file: a header line `{"format":"lanyard-backup","version":1,...}`,
//! one `{"kind":K,"value":V}` line per record, and a trailer
//! `{"end":{"records":N}}`; a file without a matching trailer (cut short)
//! is refused before anything is written. It holds the CA private keys:
//! it is written 0600, and must be kept like the data dir. Join tokens
//! are not carried over (they live minutes; issue new ones).

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    AgentRecord, CaKeyRecord, DelegationRecord, DocKind, JwtKeyRecord, PolicyRecord, Store,
    StoreError,
};
use lanyard_core::RegistrationEntry;
use lanyard_core::task::TaskRecord;

/// Counters carried over (sequence numbers that must not go back).
const COUNTERS: &[&str] = &["bundle_sequence", "policy_version"];
const FORMAT: &str = "lanyard-backup";
const VERSION: u32 = 1;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the file failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The file is not a complete backup.
    #[error("{0}")]
    Format(String),
    /// The target already holds data.
    #[error(
        "the target datastore is not empty ({0}); restore and migrate only write into an empty one"
    )]
    NotEmpty(String),
}

/// One record of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
enum Record {
    Entry(RegistrationEntry),
    Agent(AgentRecord),
    CaKey(CaKeyRecord),
    JwtKey(JwtKeyRecord),
    Policy(PolicyRecord),
    Task(TaskRecord),
    Delegation(DelegationRecord),
    Counter {
        name: String,
        value: u64,
    },
    Doc {
        kind: String,
        key: String,
        data: serde_json::Value,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created_at: u64,
    /// The server whose keys these are (a restored server takes its ID).
    #[serde(default)]
    server_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    end: End,
}

#[derive(Debug, Serialize, Deserialize)]
struct End {
    records: u64,
}

/// How many records of each kind moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Registration entries.
    pub entries: usize,
    /// Agent records (bans included).
    pub agents: usize,
    /// CA and JWT keys.
    pub keys: usize,
    /// Policy versions.
    pub policies: usize,
    /// Tasks and delegation tokens.
    pub tasks: usize,
    /// Revocations, quarantines and CRLs.
    pub docs: usize,
}

impl Counts {
    fn add(&mut self, r: &Record) {
        match r {
            Record::Entry(_) => self.entries += 1,
            Record::Agent(_) => self.agents += 1,
            Record::CaKey(_) | Record::JwtKey(_) => self.keys += 1,
            Record::Policy(_) => self.policies += 1,
            Record::Task(_) | Record::Delegation(_) => self.tasks += 1,
            Record::Counter { .. } => {}
            Record::Doc { .. } => self.docs += 1,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entries, {} agents, {} authority keys, {} policy versions, {} tasks and delegations, {} revocations, quarantines and CRLs",
            self.entries, self.agents, self.keys, self.policies, self.tasks, self.docs
        )
    }
}

/// Every record of `store`, with key records of no owner stamped `owner`.
async fn records(store: &dyn Store, owner: &str) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    out.extend(store.list_entries().await?.into_iter().map(Record::Entry));
    out.extend(store.list_agents().await?.into_iter().map(Record::Agent));
    out.extend(store.list_ca_keys().await?.into_iter().map(|mut k| {
        if k.owner.is_empty() {
            owner.clone_into(&mut k.owner);
        }
        Record::CaKey(k)
    }));
    out.extend(store.list_jwt_keys().await?.into_iter().map(|mut k| {
        if k.owner.is_empty() {
            owner.clone_into(&mut k.owner);
        }
        Record::JwtKey(k)
    }));
    out.extend(store.list_policies().await?.into_iter().map(Record::Policy));
    out.extend(store.list_tasks().await?.into_iter().map(Record::Task));
    out.extend(
        store
            .list_delegations()
            .await?
            .into_iter()
            .map(Record::Delegation),
    );
    for kind in DocKind::ALL {
        for (key, data) in store.list_docs(kind).await? {
            out.push(Record::Doc {
                kind: kind.as_str().to_owned(),
                key,
                data,
            });
        }
    }
    for name in COUNTERS {
        out.push(Record::Counter {
            name: (*name).to_owned(),
            value: store.counter(name).await?,
        });
    }
    Ok(out)
}

/// Refuses a target that holds entries, agents or keys.
async fn check_empty(store: &dyn Store) -> Result<(), TransferError> {
    let (e, a, k) = (
        store.list_entries().await?.len(),
        store.list_agents().await?.len(),
        store.list_ca_keys().await?.len(),
    );
    if e + a + k > 0 {
        return Err(TransferError::NotEmpty(format!(
            "{e} entries, {a} agents, {k} CA keys"
        )));
    }
    Ok(())
}

async fn write_all(store: &dyn Store, records: Vec<Record>) -> Result<Counts, TransferError> {
    let mut n = Counts::default();
    for r in records {
        n.add(&r);
        match r {
            Record::Entry(e) => {
                store.create_entry(&e).await?;
            }
            Record::Agent(a) => {
                let id = a.spiffe_id.clone();
                if let Err(found) = store.swap_agent(&id, None, Some(&a)).await? {
                    return Err(TransferError::Format(format!(
                        "agent {id} appears twice (found {found:?})"
                    )));
                }
            }
            Record::CaKey(k) => {
                store.put_ca_key(&k).await?;
            }
            Record::JwtKey(k) => {
                store.put_jwt_key(&k).await?;
            }
            Record::Policy(p) => {
                store.create_policy(&p).await?;
            }
            Record::Task(t) => {
                let id = t.grant.task_id.clone();
                if store.swap_task(&id, None, &t).await?.is_err() {
                    return Err(TransferError::Format(format!("task {id} appears twice")));
                }
            }
            Record::Delegation(d) => {
                store.create_delegation(&d).await?;
            }
            Record::Counter { name, value } => store.raise_counter(&name, value).await?,
            Record::Doc { kind, key, data } => {
                let kind = DocKind::ALL
                    .into_iter()
                    .find(|k| k.as_str() == kind)
                    .ok_or_else(|| TransferError::Format(format!("unknown record kind {kind}")))?;
                store.put_doc(kind, &key, &data).await?;
            }
        }
    }
    Ok(n)
}

/// Copies every record of `from` into the empty `to`; key records without
/// an owner become `owner`'s.
pub async fn copy(from: &dyn Store, to: &dyn Store, owner: &str) -> Result<Counts, TransferError> {
    check_empty(to).await?;
    write_all(to, records(from, owner).await?).await
}

/// Writes a backup of `store` to `path` (through a temporary file, synced
/// and renamed: a crash leaves the old file or the new one, whole).
pub async fn backup(store: &dyn Store, path: &Path, owner: &str) -> Result<Counts, TransferError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| TransferError::Io(path.display().to_string(), e);
    let records = records(store, owner).await?;
    let tmp = path.with_extension("tmp");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    line(
        &mut w,
        &Header {
            format: FORMAT.into(),
            version: VERSION,
            created_at: lanyard_core::clock::unix_secs(std::time::SystemTime::now()),
            server_id: owner.to_owned(),
        },
    )
    .map_err(io)?;
    let mut counts = Counts::default();
    for r in &records {
        counts.add(r);
        line(&mut w, r).map_err(io)?;
    }
    line(
        &mut w,
        &Trailer {
            end: End {
                records: records.len() as u64,
            },
        },
    )
    .map_err(io)?;
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(counts)
}

/// Reads and checks a whole backup file before anything is written;
/// returns its records and the server ID it was taken from.
fn read_backup(path: &Path) -> Result<(Vec<Record>, String), TransferError> {
    let io = |e| TransferError::Io(path.display().to_string(), e);
    let bad = |line: usize, what: String| {
        TransferError::Format(format!("{}:{line}: {what}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(l) => serde_json::from_str(&l.map_err(io)?)
            .map_err(|e| bad(1, format!("not a Lanyard backup: {e}")))?,
        None => return Err(bad(1, "empty file, not a Lanyard backup".into())),
    };
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(
            1,
            format!(
                "format {} version {} is not {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        ));
    }
    let mut records = Vec::new();
    for (i, l) in lines.enumerate() {
        let n = i + 2;
        let l = l.map_err(io)?;
        if let Ok(t) = serde_json::from_str::<Trailer>(&l) {
            if t.end.records != records.len() as u64 {
                return Err(bad(
                    n,
                    format!(
                        "the trailer counts {} records, the file holds {}",
                        t.end.records,
                        records.len()
                    ),
                ));
            }
            return Ok((records, header.server_id));
        }
        records.push(serde_json::from_str::<Record>(&l).map_err(|e| bad(n, e.to_string()))?);
    }
    Err(TransferError::Format(format!(
        "{}: no trailer: the backup was cut short; nothing was restored",
        path.display()
    )))
}

/// Restores a backup into the empty `store`; returns what moved and the
/// ID of the server the backup was taken from.
pub async fn restore(store: &dyn Store, path: &Path) -> Result<(Counts, String), TransferError> {
    let (records, server_id) = read_backup(path)?;
    check_empty(store).await?;
    Ok((write_all(store, records).await?, server_id))
}

/// Writes `v` as one JSON line.
fn line<T: Serialize>(w: &mut impl Write, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{MemoryStore, SledStore};

    async fn filled() -> Arc<dyn Store> {
        let s: Arc<dyn Store> = Arc::new(MemoryStore::default());
        s.create_entry(&crate::store::conformance::entry("a", "spiffe://td/a"))
            .await
            .unwrap();
        s.put_ca_key(&CaKeyRecord {
            id: "k".into(),
            cert_der: vec![1],
            key_pkcs8: vec![2],
            state: crate::store::CaKeyState::Active,
            tainted: false,
            owner: String::new(),
        })
        .await
        .unwrap();
        for _ in 0..5 {
            s.bump_counter("bundle_sequence").await.unwrap();
        }
        s
    }

    #[tokio::test]
    async fn a_backup_restores_into_an_empty_store_only_and_keeps_sequences() {
        let src = filled().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.jsonl");
        let n = backup(src.as_ref(), &file, "owner1").await.unwrap();
        assert_eq!((n.entries, n.keys), (1, 1));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dst: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        restore(dst.as_ref(), &file).await.unwrap();
        assert_eq!(dst.list_entries().await.unwrap().len(), 1);
        assert_eq!(dst.list_ca_keys().await.unwrap()[0].owner, "owner1");
        assert_eq!(dst.counter("bundle_sequence").await.unwrap(), 5);
        // Not twice.
        let err = restore(dst.as_ref(), &file).await.unwrap_err();
        assert!(matches!(err, TransferError::NotEmpty(_)), "{err}");
    }

    #[tokio::test]
    async fn a_cut_or_edited_backup_is_refused_before_writing() {
        let src = filled().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.jsonl");
        backup(src.as_ref(), &file, "o").await.unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let cut = dir.path().join("cut.jsonl");
        std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
        let dropped = dir.path().join("dropped.jsonl");
        let mut l = lines.clone();
        l.remove(1);
        std::fs::write(&dropped, l.join("\n")).unwrap();
        let garbage = dir.path().join("garbage.jsonl");
        std::fs::write(&garbage, b"\x00\x01 not json").unwrap();
        for (f, want) in [
            (&cut, "cut short"),
            (&dropped, "trailer counts"),
            (&garbage, "not a Lanyard backup"),
        ] {
            let dst = MemoryStore::default();
            let err = restore(&dst, f).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(
                (&dst as &dyn Store)
                    .list_entries()
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
