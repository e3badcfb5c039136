//! A declared approver's answer to a pending request.

use super::{ApprovalRecord, Approvals, State};
use crate::store::StoreError;
use lanyard_core::audit::Kind;

/// Longest reason an approver may give.
pub const MAX_REASON: usize = 1024;

/// Why an answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// No such request.
    #[error("approval {0} not found")]
    NotFound(String),
    /// The name is not a declared approver, or not one this request names.
    #[error("{0}")]
    NotAllowed(String),
    /// The request is no longer pending.
    #[error("approval {0} is {1}, not pending")]
    NotPending(String, &'static str),
    /// Malformed (the message says which part).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Approvals {
    /// Approves or denies a pending request as the declared approver
    /// `approver`; `via` names the channel for the audit record (e.g. the
    /// admin socket's `uid:N`).
    pub async fn answer(
        &self,
        id: &str,
        approve: bool,
        approver: &str,
        reason: &str,
        via: &str,
    ) -> Result<ApprovalRecord, AnswerError> {
        if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(AnswerError::Invalid(format!(
                "reason: at most {MAX_REASON} bytes, no control characters"
            )));
        }
        if self.settings().approver(approver).is_none() {
            return Err(AnswerError::NotAllowed(format!(
                "{approver:?} is not a declared approver (see [[approver]] in the server's configuration)"
            )));
        }
        for _ in 0..8 {
            // The stored record, not this server's view: another server
            // may have answered or ended it a moment ago.
            self.refresh(id).await?;
            let Some(r) = self.get(id) else {
                return Err(AnswerError::NotFound(id.to_owned()));
            };
            if r.state != State::Pending {
                return Err(AnswerError::NotPending(id.to_owned(), r.state.as_str()));
            }
            if self.now() >= r.expires_at {
                return Err(AnswerError::NotPending(id.to_owned(), "expired"));
            }
            if !r.eligible.iter().any(|e| e == approver) {
                return Err(AnswerError::NotAllowed(format!(
                    "{approver} may not answer approval {id} (it asks {}; eligible: {})",
                    r.approvers.join(" and "),
                    r.eligible.join(", ")
                )));
            }
            let mut next = r.clone();
            next.state = if approve {
                State::Approved
            } else {
                State::Denied
            };
            next.answered_by = approver.to_owned();
            next.answered_at = self.now();
            next.reason = reason.to_owned();
            if self.swap(Some(&r), &next).await? {
                tracing::info!(id, approver, approve, "approval answered");
                let kind = if approve {
                    Kind::ApprovalApproved
                } else {
                    Kind::ApprovalDenied
                };
                self.note(&next, kind, &format!("{approver} via {via}"))
                    .await;
                return Ok(next);
            }
        }
        Err(AnswerError::Invalid(format!(
            "approval {id} is being changed concurrently; retry"
        )))
    }
}
