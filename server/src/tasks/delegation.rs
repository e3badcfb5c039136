//! Delegation: a task hands a sub-task to another workload. Tokens are 256
//! random bits, base64url, stored by SHA-256 so the store never holds a
//! usable token; single use, at most 60 seconds, bound to the target
//! SPIFFE ID. The child's grant stays within the parent's.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use lanyard_core::clock::unix_secs;
use lanyard_core::task::{TaskRecord, TaskRequest, TaskState};
use lanyard_core::{RegistrationEntry, SpiffeId, TaskId};
use serde_json::Map;

use super::decide::{Caller, denial_text, principal};
use super::error::TaskServiceError;
use super::service::Tasks;
use crate::store::DelegationRecord;
use lanyard_policy::TaskContext;

/// Longest life of a delegation token.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(60);

/// A new token and its hash.
pub(crate) fn new_token() -> Result<(String, String), TaskServiceError> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| TaskServiceError::no_randomness())?;
    let token = URL_SAFE_NO_PAD.encode(b);
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The stored form of a token.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

impl Tasks {
    /// Takes a delegation token and checks it against the request, begun
    /// under one of `entries`; returns the active parent task and the
    /// SPIFFE ID the token was issued to (the entries of any other ID are
    /// out of the running).
    pub(super) async fn redeem(
        &self,
        parent_id: &TaskId,
        token: &str,
        entries: &[RegistrationEntry],
        request: &TaskRequest,
        now: u64,
    ) -> Result<(TaskRecord, SpiffeId), TaskServiceError> {
        let refused = |why: &str| TaskServiceError::Denied(format!("delegation refused: {why}"));
        let d = self
            .inner
            .store
            .take_delegation(&token_hash(token))
            .await?
            .ok_or_else(|| refused("unknown or already used delegation token"))?;
        if d.expires_at <= now {
            return Err(refused("the delegation token has expired"));
        }
        if &d.parent_task_id != parent_id {
            return Err(refused("the token was issued for another parent task"));
        }
        if !entries.iter().any(|e| e.spiffe_id == d.to_spiffe_id) {
            let mut ours: Vec<String> = entries.iter().map(|e| e.spiffe_id.to_string()).collect();
            ours.dedup();
            return Err(refused(&format!(
                "the token was issued to {}, not {}",
                d.to_spiffe_id,
                ours.join(" or ")
            )));
        }
        let parent = self
            .inner
            .store
            .get_task(parent_id)
            .await?
            .ok_or_else(|| refused("the parent task does not exist"))?;
        if parent.state_at(now) != TaskState::Active {
            return Err(refused("the parent task is no longer active"));
        }
        if let Some(extra) = request.tools.iter().find(|t| !d.tools.contains(t)) {
            return Err(refused(&format!(
                "tool {extra:?} is outside the delegated grant"
            )));
        }
        if request.ttl.as_secs() > d.ttl_seconds {
            return Err(refused(&format!(
                "TTL {}s exceeds the delegated {}s",
                request.ttl.as_secs(),
                d.ttl_seconds
            )));
        }
        let levels = &self.inner.levels;
        if levels.rank(&request.data_sensitivity)? > levels.rank(&parent.grant.data_sensitivity)? {
            return Err(refused(&format!(
                "data sensitivity {:?} exceeds the parent's {:?}",
                request.data_sensitivity, parent.grant.data_sensitivity
            )));
        }
        Ok((parent, d.to_spiffe_id))
    }

    /// Issues a delegation token for a sub-task of `task_id`.
    pub async fn delegate(
        &self,
        agent: &SpiffeId,
        task_id: &str,
        to: &str,
        mut tools: Vec<String>,
        ttl: std::time::Duration,
        caller: &Caller,
    ) -> Result<(String, u64), TaskServiceError> {
        let inner = &self.inner;
        let now = unix_secs(inner.clock.now());
        let parent = self.active_owned(agent, task_id, now).await?;
        let to = lanyard_core::SpiffeId::new(to)
            .map_err(|e| TaskServiceError::Invalid(format!("to_spiffe_id: {e}")))?;
        tools.sort();
        tools.dedup();
        if tools.len() > lanyard_core::task::MAX_TOOLS {
            return Err(lanyard_core::TaskError::TooManyTools.into());
        }
        tools
            .iter()
            .try_for_each(|t| lanyard_core::task::check_tool(t))?;
        let remaining = parent.grant.not_after.saturating_sub(now);
        let ttl = ttl.as_secs();
        if ttl > remaining {
            return Err(TaskServiceError::Denied(format!(
                "delegation refused: TTL {ttl}s exceeds the parent's remaining {remaining}s"
            )));
        }
        if let Some(extra) = tools.iter().find(|t| !parent.grant.tools.contains(t)) {
            return Err(TaskServiceError::Denied(format!(
                "delegation refused: tool {extra:?} is not in the parent's grant"
            )));
        }
        if let Some(policy) = inner.policies.enforced() {
            let entry = self.owned_entry(agent, parent.entry_id.as_str())?;
            let request = TaskRequest {
                task_type: parent.grant.task_type.clone(),
                tools: tools.clone(),
                destinations: parent.grant.destinations.clone(),
                data_sensitivity: parent.grant.data_sensitivity.clone(),
                ttl: Duration::from_secs(ttl),
                on_behalf_of: parent.grant.on_behalf_of.clone(),
                parent_task_id: Some(parent.grant.task_id.clone()),
                ..Default::default()
            };
            let mut ctx =
                TaskContext::for_begin(&request, &inner.levels, inner.clock.now(), Map::new());
            ctx.delegate_to = to.to_string();
            let d = policy.book.decide(&lanyard_policy::Request {
                principal: &principal(&entry, caller),
                action: lanyard_policy::Action::Delegate,
                resource: &parent.grant.task_type,
                context: &ctx,
            });
            if !d.allowed {
                return Err(TaskServiceError::Denied(format!(
                    "delegation refused: {}",
                    denial_text(
                        lanyard_policy::Action::Delegate,
                        &parent.grant.task_type,
                        &d
                    )
                )));
            }
        }
        let (token, hash) = new_token()?;
        let expires_at = (now + TOKEN_TTL.as_secs()).min(parent.grant.not_after);
        inner
            .store
            .create_delegation(&DelegationRecord {
                token_hash: hash,
                parent_task_id: parent.grant.task_id.clone(),
                to_spiffe_id: to.clone(),
                tools,
                ttl_seconds: ttl,
                expires_at,
            })
            .await?;
        tracing::info!(parent = %parent.grant.task_id, to = %to, "delegation token issued");
        Ok((token, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), ha);
        assert_ne!(ha, a);
    }
}
