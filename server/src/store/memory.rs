//! An in-memory [`Store`] for unit tests of the code around the store seam.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::watch;

use super::{ChangeKind, EntryId, Feed, LocalFeed, Row, Store, StoreError, Swap, Table, Write};

/// One stored record: its key and JSON, and its identity where the table
/// keeps one.
type Stored = (String, Value, Option<String>);

#[derive(Default)]
struct Inner {
    /// Per table, by [`Table::order`].
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Stored>>,
    counters: BTreeMap<String, u64>,
}

/// A [`Store`] in a mutex-guarded map, with an in-process change feed.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    feed: LocalFeed,
}

fn order(table: Table, key: &str) -> Result<Vec<u8>, StoreError> {
    table
        .order(key)
        .ok_or_else(|| StoreError::NotFound(format!("{} {key}", table.what())))
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn announce(&self, table: Table, key: &str) {
        if let Some(kind) = table.change() {
            self.feed.push(kind, key);
        }
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError> {
        let k = order(table, key)?;
        Ok(self.with(|i| {
            i.tables
                .get(&table)
                .and_then(|t| t.get(&k))
                .map(|(_, v, _)| v.clone())
        }))
    }

    async fn list(&self, table: Table) -> Result<Vec<(String, Value)>, StoreError> {
        Ok(self.with(|i| {
            i.tables
                .get(&table)
                .map(|t| t.values().map(|(k, v, _)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()
        }))
    }

    async fn write(&self, table: Table, row: &Row, how: Write) -> Result<(), StoreError> {
        let k = order(table, &row.key)?;
        self.with(|i| {
            let t = i.tables.entry(table).or_default();
            match (how, t.contains_key(&k)) {
                (Write::New, true) => {
                    return Err(StoreError::AlreadyExists(format!(
                        "{} {}",
                        table.what(),
                        row.key
                    )));
                }
                (Write::Replace, false) => {
                    return Err(StoreError::NotFound(format!(
                        "{} {}",
                        table.what(),
                        row.key
                    )));
                }
                _ => {}
            }
            if let Some(ident) = &row.identity
                && let Some((other, _, _)) = t
                    .values()
                    .find(|(key, _, i)| key != &row.key && i.as_ref() == Some(ident))
            {
                let id = EntryId::new(other).map_err(|e| StoreError::Corrupt {
                    key: format!("{}/{other}", table.name()),
                    reason: e.to_string(),
                })?;
                return Err(StoreError::DuplicateEntry(id));
            }
            t.insert(k, (row.key.clone(), row.data.clone(), row.identity.clone()));
            Ok(())
        })?;
        self.announce(table, &row.key);
        Ok(())
    }

    async fn swap(
        &self,
        table: Table,
        key: &str,
        matches: &(dyn for<'v> Fn(Option<&'v Value>) -> bool + Send + Sync),
        new: Option<&Row>,
    ) -> Result<Swap<Value>, StoreError> {
        let k = order(table, key)?;
        let r = self.with(|i| {
            let t = i.tables.entry(table).or_default();
            let current = t.get(&k).map(|(_, v, _)| v);
            if !matches(current) {
                return Err(current.cloned());
            }
            match new {
                Some(row) => t.insert(k, (key.to_owned(), row.data.clone(), None)),
                None => t.remove(&k),
            };
            Ok(())
        });
        if r.is_ok() {
            self.announce(table, key);
        }
        Ok(r)
    }

    async fn take(
        &self,
        table: Table,
        key: &str,
        announce: bool,
    ) -> Result<Option<Value>, StoreError> {
        let k = order(table, key)?;
        let old = self.with(|i| i.tables.get_mut(&table).and_then(|t| t.remove(&k)));
        if announce && old.is_some() {
            self.announce(table, key);
        }
        Ok(old.map(|(_, v, _)| v))
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
