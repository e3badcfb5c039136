//! A task as the server records it: the grant plus where it came from and
//! where it is in its life.

use super::grant::TaskGrant;
use crate::entry::EntryId;
use crate::spiffe_id::SpiffeId;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Credentials may be issued.
    Active,
    /// Ended by its process (EndTask or exit).
    Ended,
    /// Ended by an operator or with an ended parent.
    Revoked,
    /// Its window passed.
    Expired,
}

impl TaskState {
    /// The state's name as shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Ended => "ended",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// A recorded task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskRecord {
    /// What the task holds.
    pub grant: TaskGrant,
    /// The entry it was begun under.
    pub entry_id: EntryId,
    /// The agent that holds it.
    pub agent_id: SpiffeId,
    /// Tools requested but denied, with reasons.
    pub denied: Vec<(String, String)>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Current state.
    pub state: TaskState,
    /// Why it ended.
    pub end_reason: String,
    /// The intent text the task was begun with (credentials carry only its
    /// digest; approvers read it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intent: String,
}

impl TaskRecord {
    /// The state at `now` (an active task past its window is expired).
    pub fn state_at(&self, now_secs: u64) -> TaskState {
        if self.state == TaskState::Active && now_secs >= self.grant.not_after {
            TaskState::Expired
        } else {
            self.state
        }
    }
}
