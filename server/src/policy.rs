//! The server's Cedar policy sets: the enforced one and an optional shadow
//! (candidate) set, each the newest stored version of its kind. A new set
//! is validated against the schema before it is stored, so a bad file never
//! replaces the set in force; every change is versioned in the store and
//! announced on a `watch` so agents receive it over their sync streams.

use std::sync::{Arc, Mutex, RwLock};

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_policy::{PolicyBook, PolicyError};
use tokio::sync::watch;

use crate::store::{PolicyRecord, Store, StoreError};

/// Why a policy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicySetError {
    /// The text does not parse or validate (`source:line:col: message`).
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    /// No such version.
    #[error("no policy version {0}")]
    NoVersion(u64),
    /// No policy set has been loaded.
    #[error("no {0} policy set is loaded")]
    None(&'static str),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A loaded policy set.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// Its stored version.
    pub record: PolicyRecord,
    /// Compiled.
    pub book: Arc<PolicyBook>,
}

#[derive(Default)]
struct Current {
    enforced: Option<Arc<LoadedPolicy>>,
    shadow: Option<Arc<LoadedPolicy>>,
}

/// The policy sets, shared by the node and admin APIs.
#[derive(Clone)]
pub struct Policies {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    current: Arc<RwLock<Current>>,
    /// Serialises `set` (version allocation and replacement).
    writer: Arc<Mutex<()>>,
    changed: watch::Sender<u64>,
}

fn source_name(version: u64) -> String {
    format!("policy v{version}")
}

impl Policies {
    /// Loads the newest enforced and shadow sets from the store. A stored
    /// set that no longer validates stops the server: it must not start
    /// without the policies an operator put in force.
    pub fn load(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, PolicySetError> {
        let mut current = Current::default();
        for record in store.list_policies()? {
            let book = PolicyBook::compile(&record.text, &source_name(record.version))?;
            let loaded = Some(Arc::new(LoadedPolicy { record, book }));
            if loaded.as_ref().is_some_and(|l| l.record.shadow) {
                current.shadow = loaded;
            } else {
                current.enforced = loaded;
            }
        }
        let version = current.enforced.as_ref().map_or(0, |l| l.record.version);
        Ok(Self {
            store,
            clock,
            current: Arc::new(RwLock::new(current)),
            writer: Arc::new(Mutex::new(())),
            changed: watch::channel(version).0,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The enforced set, if any.
    pub fn enforced(&self) -> Option<Arc<LoadedPolicy>> {
        self.read().enforced.clone()
    }

    /// The shadow set, if any.
    pub fn shadow(&self) -> Option<Arc<LoadedPolicy>> {
        self.read().shadow.clone()
    }

    /// Follows changes (the value is the enforced version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Validates `text` without loading it; returns how many policies it has.
    pub fn check(text: &str, source: &str) -> Result<usize, PolicySetError> {
        Ok(PolicyBook::compile(text, source)?.len())
    }

    /// Validates, stores and puts in force a new set (or, with `shadow`,
    /// a new candidate set).
    pub fn set(
        &self,
        text: &str,
        shadow: bool,
        source: &str,
    ) -> Result<Arc<LoadedPolicy>, PolicySetError> {
        let book = PolicyBook::compile(text, source)?;
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.store.bump_counter("policy_version")?;
        let record = PolicyRecord {
            version,
            shadow,
            text: text.to_owned(),
            created_at: unix_secs(self.clock.now()),
        };
        self.store.create_policy(&record)?;
        let loaded = Arc::new(LoadedPolicy { record, book });
        {
            let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
            if shadow {
                cur.shadow = Some(loaded.clone());
            } else {
                cur.enforced = Some(loaded.clone());
            }
        }
        if !shadow {
            self.changed.send_replace(version);
        }
        tracing::info!(
            version,
            shadow,
            policies = loaded.book.len(),
            "policy set loaded"
        );
        Ok(loaded)
    }

    /// A stored version, or the current one (`version` 0), with how many
    /// policies it holds (from the loaded set when it is in force; only an
    /// older version is compiled again to count them).
    pub fn get(&self, version: u64, shadow: bool) -> Result<(PolicyRecord, usize), PolicySetError> {
        let loaded = [self.enforced(), self.shadow()]
            .into_iter()
            .flatten()
            .find(|l| {
                if version == 0 {
                    l.record.shadow == shadow
                } else {
                    l.record.version == version
                }
            });
        if let Some(l) = loaded {
            return Ok((l.record.clone(), l.book.len()));
        }
        if version == 0 {
            return Err(PolicySetError::None(if shadow {
                "shadow"
            } else {
                "enforced"
            }));
        }
        let record = self
            .store
            .list_policies()?
            .into_iter()
            .find(|p| p.version == version)
            .ok_or(PolicySetError::NoVersion(version))?;
        // A version that no longer validates is still shown (count 0).
        let count = Self::check(&record.text, &source_name(version)).unwrap_or(0);
        Ok((record, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use lanyard_core::clock::SystemClock;

    #[test]
    fn versions_survive_reload_and_bad_sets_change_nothing() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let p = Policies::load(store.clone(), Arc::new(SystemClock)).unwrap();
        assert!(p.enforced().is_none());
        let mut rx = p.subscribe();
        let v1 = p
            .set("permit (principal, action, resource);", false, "a.cedar")
            .unwrap();
        assert_eq!(v1.record.version, 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        let err = p.set("permit (", false, "b.cedar").unwrap_err().to_string();
        assert!(err.starts_with("b.cedar:1:"), "{err}");
        assert_eq!(p.enforced().unwrap().record.version, 1);
        p.set("forbid (principal, action, resource);", true, "c.cedar")
            .unwrap();
        assert!(!rx.has_changed().unwrap(), "shadow sets are not pushed");
        let again = Policies::load(store, Arc::new(SystemClock)).unwrap();
        assert_eq!(again.enforced().unwrap().record.version, 1);
        assert_eq!(again.shadow().unwrap().record.version, 2);
        assert_eq!(again.get(2, false).unwrap().0.version, 2);
        assert_eq!(again.get(1, false).unwrap(), (v1.record.clone(), 1));
        assert_eq!(again.get(0, true).unwrap().0.version, 2);
        assert!(again.get(9, false).is_err());
    }
}
