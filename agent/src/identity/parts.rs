//! The identity owner's state, in the parts its loop owns: the standing
//! SVIDs of the node's entries, the tasks held, and what the server says
//! to trust. (Enforcement state has its own file, `enforce_state.rs`.)
//! The loop is the only writer of each; workloads read them through the
//! published snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::EntryId;
use lanyard_core::jwt::JwtAuthority;
use lanyard_core::task::SensitivityLevels;
use tokio::sync::watch;

use super::tasks::{ActiveTask, TaskWork};
use crate::cache::{EntrySet, SvidMap};

/// A standing SVID that failed to sign: when to try again.
pub(super) struct Failure {
    pub(super) attempts: u32,
    pub(super) next_try: SystemTime,
}

/// The node's entries and their standing SVIDs.
pub(super) struct Standing {
    pub(super) entries: Arc<EntrySet>,
    pub(super) svids: SvidMap,
    pub(super) failures: HashMap<EntryId, Failure>,
    /// Standing-SVID batches in flight.
    pub(super) signing: usize,
    /// A reconcile was asked for while a round was in flight.
    pub(super) reconcile_wanted: bool,
}

impl Default for Standing {
    fn default() -> Self {
        Self {
            entries: Arc::new(EntrySet::new(Vec::new())),
            svids: SvidMap::default(),
            failures: HashMap::new(),
            signing: 0,
            reconcile_wanted: false,
        }
    }
}

/// The tasks this node's workloads hold.
pub(super) struct HeldTasks {
    /// Tasks held, newest first.
    pub(super) tasks: Vec<Arc<ActiveTask>>,
    /// Per-task upkeep: signing in flight, retry time.
    pub(super) task_work: HashMap<String, TaskWork>,
    /// Task ends not yet reported to the server.
    pub(super) pending_ends: Vec<(String, &'static str)>,
    /// The newest task bindings, for the writer task.
    pub(super) task_file: watch::Sender<Option<Arc<Vec<u8>>>>,
}

impl Default for HeldTasks {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            task_work: HashMap::new(),
            pending_ends: Vec::new(),
            task_file: watch::channel(None).0,
        }
    }
}

/// What the server says to trust and decide with: bundles, policies,
/// sensitivity levels.
pub(super) struct Trust {
    pub(super) bundle: Arc<Vec<Vec<u8>>>,
    pub(super) jwt_authorities: Arc<Vec<JwtAuthority>>,
    /// The keys that sign WIT-SVIDs.
    pub(super) wit_authorities: Arc<Vec<JwtAuthority>>,
    /// Tainted authority IDs from the bundle.
    pub(super) tainted: Arc<Vec<String>>,
    /// Subject key IDs of the CAs in the bundle.
    pub(super) bundle_ids: HashSet<String>,
    pub(super) bundle_sequence: u64,
    pub(super) policy_version: u64,
    pub(super) policy_text: Arc<str>,
    /// The server's sensitivity levels (the decision point ranks with them).
    pub(super) levels: Arc<SensitivityLevels>,
    /// A full sync has been applied.
    pub(super) synced: bool,
}

impl Trust {
    /// Trusting `bundle` (the bootstrap one) until the server says more.
    pub(super) fn new(bundle: Arc<Vec<Vec<u8>>>) -> Self {
        Self {
            bundle,
            jwt_authorities: Arc::new(Vec::new()),
            wit_authorities: Arc::new(Vec::new()),
            tainted: Arc::new(Vec::new()),
            bundle_ids: HashSet::new(),
            bundle_sequence: 0,
            policy_version: 0,
            policy_text: Arc::from(""),
            levels: Arc::default(),
            synced: false,
        }
    }

    /// Takes the server's sensitivity levels (none: a server that does not
    /// send them, whose levels are the defaults).
    pub(super) fn set_levels(&mut self, levels: Vec<String>) {
        let levels = if levels.is_empty() {
            lanyard_core::task::SensitivityLevels::default()
        } else {
            match lanyard_core::task::SensitivityLevels::new(levels) {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(%err, "ignoring invalid sensitivity levels from the server");
                    return;
                }
            }
        };
        if *self.levels != levels {
            tracing::info!(levels = ?levels.as_slice(), "sensitivity levels from the server");
            self.levels = Arc::new(levels);
        }
    }

    /// True when an SVID signed by `issuer` may still be served: the CA is
    /// in the bundle and not tainted.
    pub(super) fn issuer_ok(&self, issuer: Option<&str>) -> bool {
        match issuer {
            Some(i) => self.bundle_ids.contains(i) && !self.tainted.iter().any(|t| t == i),
            None => true,
        }
    }
}
