//! Workload attestation: from the kernel-verified credentials of a caller on
//! the agent socket to the selectors that describe it.

mod cgroup_trust;
mod instance;
mod k8s;
mod proc_info;
mod systemd;
mod unix;
mod users;

pub use cgroup_trust::CgroupTrust;
pub use instance::{ExeId, InstanceChanged, ProcessInstance};
pub use k8s::K8sAttestor;
pub use unix::{DEFAULT_MAX_HASH_BYTES, UnixAttestor};

/// The process instances (PID, start time) `pid` descends from, nearest
/// first, at most `max_depth` generations up (init excluded). A parent
/// that exits hands its children to a reaper, so a broken line of descent
/// never reaches the old parent: each step reads a live process's parent.
pub fn ancestors(pid: i32, max_depth: usize) -> Vec<(i32, u64)> {
    let root = std::path::Path::new("/proc");
    let mut out = Vec::new();
    let mut cur = pid;
    for _ in 0..max_depth {
        let Ok((parent, _)) = proc_info::parent_and_start(root, cur) else {
            break;
        };
        if parent <= 1 {
            break;
        }
        let Ok(start) = proc_info::start_time(root, parent) else {
            break;
        };
        out.push((parent, start));
        cur = parent;
    }
    out
}

/// Whether process `pid` descends from the process instance (`ancestor`,
/// `ancestor_start`), within `max_depth` generations.
pub fn descends_from(pid: i32, ancestor: i32, ancestor_start: u64, max_depth: usize) -> bool {
    ancestors(pid, max_depth).contains(&(ancestor, ancestor_start))
}

/// The start time of process `pid` (ticks since boot): with the PID it
/// names one process instance.
pub fn process_start_time(pid: i32) -> std::io::Result<u64> {
    proc_info::start_time(std::path::Path::new("/proc"), pid)
}

use lanyard_core::Selector;

/// Kernel-verified credentials of a socket peer (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process ID (may be missing on some platforms).
    pub pid: Option<i32>,
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
    /// When the connection was accepted, in ticks since boot (the unit of
    /// process start times); a process that started later reused the PID.
    pub connected_ticks: Option<u64>,
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The kernel did not report a PID for the caller.
    #[error("caller PID is unavailable")]
    NoPid,
    /// The process exited or its PID was reused during attestation.
    #[error("process {0} exited or its PID was reused during attestation")]
    ProcessChanged(i32),
    /// The process's credentials differ from the socket's.
    #[error("process {0} changed its credentials since it connected")]
    CredentialsChanged(i32),
    /// Reading /proc failed.
    #[error("reading process {pid} information: {source}")]
    Proc {
        /// The process.
        pid: i32,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What an attestation may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestOptions {
    /// With `false` the attestor answers `Ok(None)` instead of doing slow
    /// work (hashing a new executable), so the caller can run it on a
    /// blocking thread; the common, cached case then costs no thread
    /// hand-off.
    pub allow_slow: bool,
    /// Report `unix:sha256` (hash the executable): only when an entry
    /// selects on it.
    pub hash_executable: bool,
}

/// Something that turns a peer's credentials into selectors.
pub trait WorkloadAttestor: Send + Sync + 'static {
    /// The selectors of the caller.
    fn attest(
        &self,
        peer: PeerCred,
        opts: AttestOptions,
    ) -> Result<Option<Vec<Selector>>, AttestError>;
}
