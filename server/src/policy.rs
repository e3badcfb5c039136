//! The server's Cedar policy sets: the enforced one and an optional shadow
//! (candidate) set, each the newest stored version of its kind. A new set
//! is validated against the schema before it is stored, so a bad file never
//! replaces the set in force; every change is versioned in the store and
//! announced on a `watch` so agents receive it over their sync streams.

use std::sync::{Arc, RwLock};

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_policy::{PolicyBook, PolicyError};
use tokio::sync::watch;

use crate::store::{PolicyRecord, Store, StoreError};

/// Why a policy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicySetError {
    /// The text does not parse or validate (`source:line:col: message`).
    #[error(transparent)]
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
    /// Serialises `set` and `refresh` (version allocation and replacement).
    writer: Arc<tokio::sync::Mutex<()>>,
    changed: watch::Sender<u64>,
}

fn source_name(version: u64) -> String {
    format!("policy v{version}")
}

impl Policies {
    /// Loads the newest enforced and shadow sets from the store. A stored
    /// set that no longer validates stops the server: it must not start
    /// without the policies an operator put in force.
    pub async fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PolicySetError> {
        let current = Self::stored(store.as_ref(), None).await?;
        let version = current.enforced.as_ref().map_or(0, |l| l.record.version);
        Ok(Self {
            store,
            clock,
            current: Arc::new(RwLock::new(current)),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            changed: watch::channel(version).0,
        })
    }

    /// The newest enforced and shadow sets in the store, reusing the
    /// compiled sets of `known` where the version is the same.
    async fn stored(store: &dyn Store, known: Option<&Current>) -> Result<Current, PolicySetError> {
        let records = store.list_policies().await?;
        let newest = |shadow: bool| records.iter().rev().find(|r| r.shadow == shadow).cloned();
        let mut current = Current::default();
        for (shadow, record) in [(false, newest(false)), (true, newest(true))] {
            let Some(record) = record.filter(|r| !r.cleared) else {
                continue;
            };
            let same = known
                .and_then(|k| {
                    if shadow {
                        k.shadow.clone()
                    } else {
                        k.enforced.clone()
                    }
                })
                .filter(|l| l.record == record);
            let loaded = match same {
                Some(l) => l,
                None => {
                    let book = PolicyBook::compile(&record.text, &source_name(record.version))?;
                    Arc::new(LoadedPolicy { record, book })
                }
            };
            if shadow {
                current.shadow = Some(loaded);
            } else {
                current.enforced = Some(loaded);
            }
        }
        Ok(current)
    }

    /// Brings the sets in memory in step with the store (after a change on
    /// the feed, possibly made through another server). A stored set that
    /// does not compile here (a newer server's syntax) is logged and the
    /// sets in force are kept.
    pub async fn refresh(&self) -> Result<(), PolicySetError> {
        let _guard = self.writer.lock().await;
        let known = Current {
            enforced: self.enforced(),
            shadow: self.shadow(),
        };
        let next = Self::stored(self.store.as_ref(), Some(&known)).await?;
        let version = next.enforced.as_ref().map_or(0, |l| l.record.version);
        let changed = version != *self.changed.borrow();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        if changed {
            tracing::info!(version, "policy set loaded from the store");
            self.changed.send_replace(version);
        }
        Ok(())
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
    pub async fn set(
        &self,
        text: &str,
        shadow: bool,
        source: &str,
    ) -> Result<Arc<LoadedPolicy>, PolicySetError> {
        let book = PolicyBook::compile(text, source)?;
        let _guard = self.writer.lock().await;
        let version = self.store.bump_counter("policy_version").await?;
        let record = PolicyRecord {
            version,
            shadow,
            text: text.to_owned(),
            created_at: unix_secs(self.clock.now()),
            cleared: false,
        };
        self.store.create_policy(&record).await?;
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

    /// Unloads the enforced (or shadow) set: a stored version records it,
    /// so every server and agent follows. Returns that version.
    pub async fn clear(&self, shadow: bool) -> Result<u64, PolicySetError> {
        let _guard = self.writer.lock().await;
        let version = self.store.bump_counter("policy_version").await?;
        self.store
            .create_policy(&PolicyRecord {
                version,
                shadow,
                text: String::new(),
                created_at: unix_secs(self.clock.now()),
                cleared: true,
            })
            .await?;
        {
            let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
            if shadow {
                cur.shadow = None;
            } else {
                cur.enforced = None;
            }
        }
        if !shadow {
            self.changed.send_replace(0);
        }
        tracing::info!(version, shadow, "policy set cleared");
        Ok(version)
    }

    /// A stored version, or the current one (`version` 0), with how many
    /// policies it holds (from the loaded set when it is in force; only an
    /// older version is compiled again to count them).
    pub async fn get(
        &self,
        version: u64,
        shadow: bool,
    ) -> Result<(PolicyRecord, usize), PolicySetError> {
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
            .list_policies()
            .await?
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

    #[tokio::test]
    async fn versions_survive_reload_and_bad_sets_change_nothing() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let p = Policies::load(store.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        assert!(p.enforced().is_none());
        let mut rx = p.subscribe();
        let v1 = p
            .set("permit (principal, action, resource);", false, "a.cedar")
            .await
            .unwrap();
        assert_eq!(v1.record.version, 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        let err = p
            .set("permit (", false, "b.cedar")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.cedar:1:"), "{err}");
        assert_eq!(p.enforced().unwrap().record.version, 1);
        p.set("forbid (principal, action, resource);", true, "c.cedar")
            .await
            .unwrap();
        assert!(!rx.has_changed().unwrap(), "shadow sets are not pushed");
        let again = Policies::load(store, Arc::new(SystemClock)).await.unwrap();
        assert_eq!(again.enforced().unwrap().record.version, 1);
        assert_eq!(again.shadow().unwrap().record.version, 2);
        assert_eq!(again.get(2, false).await.unwrap().0.version, 2);
        assert_eq!(again.get(1, false).await.unwrap(), (v1.record.clone(), 1));
        assert_eq!(again.get(0, true).await.unwrap().0.version, 2);
        assert!(again.get(9, false).await.is_err());
    }
}
