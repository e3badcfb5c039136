//! One approval request as it is stored (a document shared by every
//! server), and what binds it to exactly one call.

use serde::{Deserialize, Serialize};

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for an approver.
    Pending,
    /// Approved, not used yet.
    Approved,
    /// Denied by an approver (answers the same call with a denial until
    /// it lapses).
    Denied,
    /// Approved and used by one call.
    Used,
    /// Lapsed unanswered, or approved and not used in time.
    Expired,
    /// Ended with its task (ended, revoked or quarantined).
    Ended,
}

impl State {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Used => "used",
            Self::Expired => "expired",
            Self::Ended => "ended",
        }
    }

    /// Pending or approved: something may still come of it.
    pub fn open(self) -> bool {
        matches!(self, Self::Pending | Self::Approved)
    }
}

/// The call a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The workload asking.
    pub principal: &'a str,
    /// Task (empty for a BeginTask).
    pub task_id: &'a str,
    /// `UseTool`.
    pub action: &'a str,
    /// Tool.
    pub tool: &'a str,
    /// Resource (may be empty).
    pub resource: &'a str,
    /// Hex SHA-256 of the RFC 8785 arguments.
    pub arguments_sha256: &'a str,
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Random ID.
    pub id: String,
    /// Where it stands.
    pub state: State,
    /// The task that asked (empty for a BeginTask).
    pub task_id: String,
    /// The task's holder.
    pub principal: String,
    /// Whom the task acts for.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// The task's type.
    pub task_type: String,
    /// The task's stated intent.
    #[serde(default)]
    pub intent: String,
    /// `UseTool` or `BeginTask`.
    pub action: String,
    /// The tool called (for a BeginTask: the task type).
    pub tool: String,
    /// What it is called on.
    #[serde(default)]
    pub resource: String,
    /// The call's arguments (a JSON object, as the enforcement point saw it).
    #[serde(default)]
    pub arguments_json: String,
    /// Hex SHA-256 of their RFC 8785 form.
    pub arguments_sha256: String,
    /// The permits that asked for approval.
    pub policy_ids: Vec<String>,
    /// Whom each names.
    pub approvers: Vec<String>,
    /// The declared approvers who may answer.
    pub eligible: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds: lapses then.
    pub expires_at: u64,
    /// Who answered.
    #[serde(default)]
    pub answered_by: String,
    /// When, Unix seconds (0: not yet).
    #[serde(default)]
    pub answered_at: u64,
    /// The approver's reason, or why it ended.
    #[serde(default)]
    pub reason: String,
    /// When it was used, Unix seconds (0: not yet).
    #[serde(default)]
    pub used_at: u64,
    /// The decision that used it.
    #[serde(default)]
    pub used_by: String,
    /// The enforcement point that asked.
    #[serde(default)]
    pub enforcement_point: String,
    /// Its node's agent.
    #[serde(default)]
    pub node: String,
    /// The decision that asked.
    #[serde(default)]
    pub decision_id: String,
}

impl ApprovalRecord {
    /// Whether it is for exactly this call.
    pub fn binds(&self, b: &Binding<'_>) -> bool {
        self.principal == b.principal
            && self.task_id == b.task_id
            && self.action == b.action
            && self.tool == b.tool
            && self.resource == b.resource
            && self.arguments_sha256 == b.arguments_sha256
    }

    /// Whether it still answers a call at `now`: pending or approved and
    /// not lapsed, or denied (a denial stands until the request would have
    /// lapsed, so that asking again does not page the approvers again).
    pub fn answers(&self, now: u64) -> bool {
        now < self.expires_at && (self.state.open() || self.state == State::Denied)
    }
}

impl From<&ApprovalRecord> for lanyard_proto::types::Approval {
    fn from(r: &ApprovalRecord) -> Self {
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        Self {
            id: r.id.clone(),
            state: r.state.as_str().into(),
            task_id: r.task_id.clone(),
            principal: r.principal.clone(),
            on_behalf_of: r.on_behalf_of.clone().unwrap_or_default(),
            task_type: r.task_type.clone(),
            intent: r.intent.clone(),
            action: r.action.clone(),
            tool: r.tool.clone(),
            resource: r.resource.clone(),
            arguments_json: r.arguments_json.clone(),
            arguments_sha256: r.arguments_sha256.clone(),
            policy_ids: r.policy_ids.clone(),
            approvers: r.approvers.clone(),
            eligible: r.eligible.clone(),
            created_at: secs(r.created_at),
            expires_at: secs(r.expires_at),
            answered_by: r.answered_by.clone(),
            answered_at: secs(r.answered_at),
            reason: r.reason.clone(),
            used_at: secs(r.used_at),
            enforcement_point: r.enforcement_point.clone(),
            node: r.node.clone(),
        }
    }
}
