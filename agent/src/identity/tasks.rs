//! Task SVIDs held by the agent: which process holds which task, the
//! task's current X.509-SVID, and the checks on what the server sends.
//! The owner loop (`manager`) drives them: begin, rotate inside the task's
//! window, end on EndTask, expiry, revocation or process exit.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::task::TaskRecord;
use lanyard_core::x509::SvidKey;
use lanyard_core::{RegistrationEntry, TaskClaims};
use lanyard_proto::types;

use super::reconcile::accept_signed;
use crate::attestor::{ProcessInstance, process_start_time};
use crate::cache::CachedSvid;
use crate::workload_scope::WorkloadScope;

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

/// A BeginTask as the Task API hands it to the owner.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    /// The entries the task may be begun under, in serving order (one when
    /// the caller named a SPIFFE ID with a single entry); the server begins
    /// it under the one whose ceilings and policy permit it.
    pub entries: Vec<RegistrationEntry>,
    /// What the workload asked for.
    pub spec: types::TaskSpec,
    /// Who asks.
    pub owner: TaskOwner,
    /// The caller's attested selectors (for policy).
    pub selectors: Vec<String>,
    /// Executable path, if known.
    pub exe_path: String,
    /// Executable hash, if the agent computed it already.
    pub exe_sha256: String,
    /// Audiences of a task JWT-SVID.
    pub jwt_audiences: Vec<String>,
}

/// A begun task and its credentials.
#[derive(Debug, Clone)]
pub struct BegunTask {
    /// The task as held.
    pub task: Arc<ActiveTask>,
    /// The task JWT-SVID, when audiences were given.
    pub jwt: Option<String>,
}

/// A task binding as stored in the data directory (no keys: SVIDs are
/// minted again after a restart).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PersistedTask {
    pub record: TaskRecord,
    pub pid: i32,
    pub start_time: u64,
    #[serde(default)]
    pub exe_sha256: String,
    #[serde(default)]
    pub scope: Option<WorkloadScope>,
}

/// Checks a task SVID the server signed for `key`, and makes it servable.
pub(crate) fn accept_task_svid(
    record: &TaskRecord,
    entry_revision: u64,
    key: &SvidKey,
    chain: Vec<Vec<u8>>,
    now: SystemTime,
) -> Result<CachedSvid, String> {
    let svid = accept_signed(
        &record.entry_id,
        &record.grant.spiffe_id,
        entry_revision,
        format!("task:{}", record.grant.task_id),
        key,
        chain,
        now,
    )
    .map_err(|e| format!("task {e}"))?;
    let leaf = svid.chain.first().ok_or("empty certificate chain")?;
    let claims = TaskClaims::from_x509(leaf)
        .map_err(|e| e.to_string())?
        .ok_or("task SVID has no task claims")?;
    if claims != record.grant.claims() {
        return Err("task SVID claims differ from the task's grant".into());
    }
    if svid.not_after > lanyard_core::clock::from_unix_secs(record.grant.not_after) {
        return Err("task SVID outlives its task".into());
    }
    Ok(svid)
}

/// The owner's upkeep state for one task.
#[derive(Debug)]
pub(crate) struct TaskWork {
    /// A signing call is in flight.
    pub signing: bool,
    /// Failed signings in a row.
    pub attempts: u32,
    /// No new signing before this.
    pub next_try: SystemTime,
}

/// A BeginTask waiting for the server.
pub(crate) struct PendingBegin {
    pub req: BeginRequest,
    pub key: SvidKey,
    pub reply: tokio::sync::oneshot::Sender<Result<BegunTask, super::CommandError>>,
    pub result: Result<lanyard_proto::server::BeginTaskResponse, super::CommandError>,
}
