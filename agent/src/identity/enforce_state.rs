//! What the identity owner keeps for enforcement: revocations and CRLs,
//! quarantines (the server's, and those this node decided), and the
//! reports not yet sent.

use std::collections::HashSet;
use std::sync::Arc;

use lanyard_core::revocation::RevocationSet;
use lanyard_proto::server::Denial;

use super::tasks::TaskOwner;
use crate::cache::Quarantined;
use crate::workload_scope::WorkloadScope;

/// What the owner keeps for enforcement.
#[derive(Default)]
pub(crate) struct EnforceState {
    pub(crate) revocations: Arc<RevocationSet>,
    pub(crate) generation: u64,
    pub(crate) crls: Arc<Vec<Vec<u8>>>,
    /// The server's quarantines in force.
    pub(super) server: Vec<Quarantined>,
    /// Quarantines this agent decided, until the server's record arrives.
    pub(super) local: Vec<Quarantined>,
    /// Quarantine IDs already acted on (tasks ended, SVIDs reported).
    pub(super) acted: HashSet<String>,
    /// Denials not yet reported.
    pub(super) denials: Vec<Denial>,
    /// Certificates to revoke, with the reason, not yet reported.
    pub(super) revoke: Vec<(Vec<u8>, String)>,
    /// A report is in flight.
    pub(super) reporting: bool,
    /// Send SIGSTOP to quarantined processes.
    pub(crate) freeze: bool,
    /// The server's quarantines as they were before a restart (with the
    /// instances they held), until the server's list arrives.
    pub(super) restored: Vec<Quarantined>,
    /// What was last written to the data dir.
    pub(super) saved: Vec<u8>,
    /// The holders of recently ended tasks: a quarantine for a task can
    /// arrive after the task's own end (both are pushed; the end may come
    /// first), and must still find the process.
    pub(super) recent_owners:
        std::collections::VecDeque<(String, (i32, u64), Option<WorkloadScope>)>,
}

/// How many ended tasks' holders are remembered.
const RECENT_OWNERS: usize = 4096;

impl EnforceState {
    /// Remembers who held a task that just ended.
    pub(crate) fn task_ended(&mut self, task_id: &str, owner: &TaskOwner) {
        if self.recent_owners.len() >= RECENT_OWNERS {
            self.recent_owners.pop_front();
        }
        self.recent_owners.push_back((
            task_id.to_owned(),
            (owner.pid, owner.start_time),
            owner.scope.clone(),
        ));
    }
}

impl EnforceState {
    /// Every quarantine in force (the server's, then local ones, then any
    /// restored from before a restart that the server has not listed yet).
    pub(crate) fn all(&self) -> Vec<Quarantined> {
        self.server
            .iter()
            .chain(&self.local)
            .chain(&self.restored)
            .cloned()
            .collect()
    }
}
