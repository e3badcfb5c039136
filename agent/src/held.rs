//! What the agent holds for workloads, shared by the identity owner that
//! changes it and the snapshots the APIs read: X.509-SVIDs of entries, and
//! tasks with the process instance that holds each.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::task::TaskRecord;
use lanyard_core::{EntryId, SpiffeId};

use crate::attestor::{ProcessInstance, process_start_time};
use crate::workload_scope::WorkloadScope;

/// An X.509-SVID the agent holds for one entry.
pub struct CachedSvid {
    /// The entry it was issued for.
    pub entry_id: EntryId,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// DER chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER private key.
    pub key_pkcs8: Vec<u8>,
    /// Serial, hex.
    pub serial: String,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// When the agent re-issues it.
    pub renew_at: SystemTime,
    /// The entry revision it reflects.
    pub entry_revision: u64,
    /// Subject key ID of the CA that signed it.
    pub issuer_id: Option<String>,
    /// The entry's hint when it was issued (an entry update bumps the
    /// revision, which re-issues the SVID).
    pub hint: String,
}

impl std::fmt::Debug for CachedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The process instance a task belongs to: PID and start time (the pair
/// names one process; exec keeps both, so `task run` can exec into the
/// command that holds the task).
#[derive(Debug, Clone)]
pub struct TaskOwner {
    /// Process ID.
    pub pid: i32,
    /// Start time, ticks since boot.
    pub start_time: u64,
    /// The process as pinned on the connection that began the task (its
    /// pidfd tells exit exactly); absent after an agent restart.
    pub instance: Option<Arc<ProcessInstance>>,
    /// The workload it belongs to (what a quarantine of its task holds).
    pub scope: Option<WorkloadScope>,
}

impl TaskOwner {
    /// The owner behind a connection's pinned process, in `scope`.
    pub fn of(instance: &Arc<ProcessInstance>, scope: Option<WorkloadScope>) -> Option<Self> {
        Some(Self {
            pid: instance.pid(),
            start_time: instance.start_time()?,
            instance: Some(instance.clone()),
            scope,
        })
    }

    /// Whether `instance` is this owner.
    pub fn is(&self, instance: &ProcessInstance) -> bool {
        instance.pid() == self.pid && instance.start_time() == Some(self.start_time)
    }

    /// Whether `other` names the same process instance.
    pub fn same_process(&self, other: &TaskOwner) -> bool {
        self.pid == other.pid && self.start_time == other.start_time
    }

    /// Whether the owner process still runs.
    pub fn alive(&self) -> bool {
        match &self.instance {
            Some(i) => i.alive(),
            None => process_start_time(self.pid).ok() == Some(self.start_time),
        }
    }
}

/// A task the agent holds.
#[derive(Debug)]
pub struct ActiveTask {
    /// The task as the server recorded it.
    pub record: TaskRecord,
    /// Who holds it.
    pub owner: TaskOwner,
    /// Its current X.509-SVID (absent until minted, e.g. after a restart).
    pub svid: Option<Arc<CachedSvid>>,
    /// The holder's executable hash when the agent knew it.
    pub exe_sha256: String,
}

impl ActiveTask {
    /// The task ID.
    pub fn id(&self) -> &str {
        self.record.grant.task_id.as_str()
    }

    /// The hint its SVIDs carry.
    pub fn hint(&self) -> String {
        format!("task:{}", self.record.grant.task_id)
    }

    /// When the task ends.
    pub fn not_after(&self) -> SystemTime {
        lanyard_core::clock::from_unix_secs(self.record.grant.not_after)
    }
}
