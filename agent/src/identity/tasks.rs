//! Task SVIDs held by the agent: which process holds which task, the
//! task's current X.509-SVID, and the checks on what the server sends.
//! The owner loop (`manager`) drives them: begin, rotate inside the task's
//! window, end on EndTask, expiry, revocation or process exit.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::task::{TaskRecord, TaskRequest};
use lanyard_core::x509::SvidKey;
use lanyard_core::{RegistrationEntry, TaskClaims};

use super::signed::accept_signed;
use crate::held::CachedSvid;
use crate::workload_scope::WorkloadScope;

pub use crate::held::{ActiveTask, TaskOwner};

/// A BeginTask as the Task API hands it to the owner.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    /// The entries the task may be begun under, in serving order (one when
    /// the caller named a SPIFFE ID with a single entry); the server begins
    /// it under the one whose ceilings and policy permit it.
    pub entries: Vec<RegistrationEntry>,
    /// What the workload asked for (its shape checked).
    pub spec: TaskRequest,
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

/// Writes the task bindings file whenever the owner publishes new bindings:
/// one write per burst (a write in progress is followed by one more with
/// the newest bindings), each atomic and synced, never on the owner's loop.
pub(crate) async fn write_task_bindings(
    storage: crate::storage::AgentStorage,
    mut latest: tokio::sync::watch::Receiver<Option<Arc<Vec<u8>>>>,
) {
    while latest.changed().await.is_ok() {
        let Some(bytes) = latest.borrow_and_update().clone() else {
            continue;
        };
        let st = storage.clone();
        match tokio::task::spawn_blocking(move || st.save_tasks(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(%e, "cannot persist task bindings"),
            Err(_) => return,
        }
    }
}
