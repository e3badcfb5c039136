//! A decision before it is recorded.

/// What the checks and the policy say about one call.
pub(super) struct Verdict {
    /// Allowed.
    pub(super) allow: bool,
    /// Why.
    pub(super) reason: String,
    /// The deciding policies.
    pub(super) policy_ids: Vec<String>,
    /// A deciding forbid said `@quarantine` (and whether entry-wide).
    pub(super) quarantine: Option<bool>,
    /// A denial that counts towards quarantine (one because the workload
    /// is already quarantined does not).
    pub(super) counts: bool,
    /// The satisfied permits that want a person's approval first.
    pub(super) approvals: Vec<lanyard_policy::Approval>,
    /// Waiting for that approval.
    pub(super) pending: bool,
    /// The approval request, when the call needed one.
    pub(super) approval_id: String,
    /// When a pending request lapses, Unix seconds.
    pub(super) approval_expires_at: i64,
}

impl Verdict {
    /// A denial that counts towards quarantine.
    pub(super) fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reason: reason.into(),
            policy_ids: vec![],
            quarantine: None,
            counts: true,
            approvals: vec![],
            pending: false,
            approval_id: String::new(),
            approval_expires_at: 0,
        }
    }
}
