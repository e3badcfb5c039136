//! Requests end without an answer: at expiry, with their task (ended,
//! revoked, expired) and on a quarantine; and answered ones are forgotten
//! after a while. Every server sweeps; the store's compare-and-swap lets
//! exactly one of them record each ending.

use std::time::Duration;

use lanyard_core::audit::Kind;
use lanyard_core::task::TaskState;

use super::{Approvals, KEEP_CLOSED, State};
use crate::store::{DocKind, StoreError};

/// How often requests are looked over when nothing wakes the sweep.
const EVERY: Duration = Duration::from_secs(1);

impl Approvals {
    /// Ends what has ended, once. Returns how many requests ended.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let keep = KEEP_CLOSED.as_secs();
        let mut ended = 0;
        let all: Vec<_> = self.read().values().cloned().collect();
        for r in all {
            if !r.state.open() {
                let since = r.answered_at.max(r.used_at).max(r.expires_at);
                if now >= since.saturating_add(keep) {
                    self.inner
                        .store
                        .delete_doc(DocKind::Approval, &r.id)
                        .await?;
                    self.write().remove(&r.id);
                }
                continue;
            }
            let why = if now >= r.expires_at {
                Some((State::Expired, "expired unanswered".to_owned()))
            } else if r.task_id.is_empty() {
                // A BeginTask: no task yet; an entry-wide quarantine ends it.
                self.quarantined(&r.principal, "")
                    .map(|q| (State::Ended, format!("quarantined: {q}")))
            } else {
                match self.inner.tasks.get(&r.task_id).await {
                    Ok(t) if t.state_at(now) == TaskState::Active => self
                        .quarantined(&r.principal, &r.task_id)
                        .map(|q| (State::Ended, format!("quarantined: {q}"))),
                    Ok(t) => Some((State::Ended, format!("task {}", t.state_at(now).as_str()))),
                    Err(crate::tasks::TaskServiceError::NotFound(_)) => {
                        Some((State::Ended, "task unknown".to_owned()))
                    }
                    Err(_) => None,
                }
            };
            let Some((state, reason)) = why else {
                continue;
            };
            let mut next = r.clone();
            if r.state == State::Approved && state == State::Expired {
                next.reason = format!("approved by {}, not used in time", r.answered_by);
            } else {
                next.reason = reason;
            }
            next.state = state;
            if self.swap(Some(&r), &next).await? {
                ended += 1;
                tracing::info!(id = %r.id, task_id = %r.task_id, reason = %next.reason, "approval request ended");
                let kind = if state == State::Expired {
                    Kind::ApprovalExpired
                } else {
                    Kind::ApprovalEnded
                };
                self.note(&next, kind, "server").await;
            }
        }
        Ok(ended)
    }

    /// Sweeps every second, and at once when a task ends or a quarantine
    /// changes, until `stop`.
    pub fn run_sweeper(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        let mut tasks = self.inner.tasks.subscribe();
        let mut quarantines = self.inner.quarantines.subscribe();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.sweep().await {
                    tracing::warn!(err = %e, "approval sweep failed; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    r = tasks.changed() => if r.is_err() { return },
                    r = quarantines.changed() => if r.is_err() { return },
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            }
        });
    }
}
