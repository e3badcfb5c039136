//! What the task side decides when a task asks for a credential: the task
//! is active and held by the asking agent, its entry allows the provider
//! (fail closed), and the policy permits `GetCredential` on it with the
//! scopes and target asked for. Also mints the JWT-SVIDs of a task that a
//! token exchange presents, for the task itself or the root task it works
//! for.

use std::time::Duration;

use lanyard_core::clock::{from_unix_secs, unix_secs};
use lanyard_core::task::{TaskRecord, TaskState};
use lanyard_core::{RegistrationEntry, SpiffeId};
use lanyard_policy::{Action, TaskContext};

use super::decide::{Caller, denial_text, principal};
use super::error::TaskServiceError;
use super::service::Tasks;

/// A task's request for a credential.
#[derive(Debug, Clone, Copy)]
pub struct CredentialAsk<'a> {
    /// The agent that holds the task.
    pub agent: &'a SpiffeId,
    /// The task.
    pub task_id: &'a str,
    /// The provider.
    pub provider: &'a str,
    /// Scopes asked for (empty: all the provider allows).
    pub scopes: &'a [String],
    /// Where the credential will be used, or empty.
    pub target: &'a str,
    /// The calling workload, as its agent attested it.
    pub caller: &'a Caller,
}

/// The task a credential may be issued for, and its entry.
#[derive(Debug, Clone)]
pub struct CredentialGrant {
    /// The active task.
    pub task: TaskRecord,
    /// Its entry.
    pub entry: RegistrationEntry,
}

impl Tasks {
    /// Decides whether `ask`'s task may be handed a credential from its
    /// provider: the task is active and the agent's, the entry's
    /// `--allow-credential` names the provider, and the policy in force
    /// permits `GetCredential` on `Lanyard::Credential::"NAME"`.
    pub async fn authorize_credential(
        &self,
        ask: CredentialAsk<'_>,
    ) -> Result<CredentialGrant, TaskServiceError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let task = self
            .active_owned(ask.agent, ask.task_id, unix_secs(now))
            .await?;
        let entry = self.owned_entry(ask.agent, task.entry_id.as_str())?;
        lanyard_core::task::credential_allowed(&entry.task_limits, ask.provider)
            .map_err(|why| TaskServiceError::Denied(format!("credential refused: {why}")))?;
        if let Some(policy) = inner.policies.enforced() {
            let ctx = TaskContext::for_credential(
                &task.grant,
                &inner.levels,
                now,
                ask.scopes,
                ask.target,
            );
            let d = policy.book.decide(&lanyard_policy::Request {
                principal: &principal(&entry, ask.caller),
                action: Action::GetCredential,
                resource: ask.provider,
                context: &ctx,
            });
            if !d.allowed {
                return Err(TaskServiceError::Denied(format!(
                    "credential refused: {}",
                    denial_text(Action::GetCredential, ask.provider, &d)
                )));
            }
        }
        Ok(CredentialGrant { task, entry })
    }

    /// The root task `task` works for (itself when it is not delegated);
    /// it must be active.
    pub async fn root_of(&self, task: &TaskRecord) -> Result<TaskRecord, TaskServiceError> {
        let Some(root) = task.grant.chain.last() else {
            return Ok(task.clone());
        };
        let record = self.get(root.task_id.as_str()).await?;
        let now = unix_secs(self.inner.clock.now());
        match record.state_at(now) {
            TaskState::Active => Ok(record),
            s => Err(TaskServiceError::NotActive(
                root.task_id.to_string(),
                s.as_str(),
            )),
        }
    }

    /// A JWT-SVID of `task` for `audience`, living at most `max_ttl` and
    /// never past the task's end (what a token exchange presents).
    pub fn task_jwt(
        &self,
        task: &TaskRecord,
        audience: &str,
        max_ttl: Duration,
    ) -> Result<(String, u64), TaskServiceError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let remaining = from_unix_secs(task.grant.not_after)
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        if remaining.is_zero() {
            return Err(TaskServiceError::NotActive(
                task.grant.task_id.to_string(),
                "expired",
            ));
        }
        let snap = inner.ca.snapshot();
        let minted = snap
            .jwt_active
            .sign_svid(
                &inner.settings.jwt_issuer,
                &task.grant.spiffe_id,
                &[audience.to_owned()],
                max_ttl.min(remaining),
                now,
                task.grant.jwt_claims(&task.agent_id, None),
            )
            .map_err(TaskServiceError::signing)?;
        Ok((minted.token, unix_secs(minted.expires_at)))
    }

    /// The server's JWT issuer URL (`iss` of what it signs).
    pub fn jwt_issuer(&self) -> &str {
        &self.inner.settings.jwt_issuer
    }

    /// The JWT key in use, for tokens the server signs besides SVIDs.
    pub fn jwt_signer(&self) -> std::sync::Arc<lanyard_core::jwt::JwtSigner> {
        self.inner.ca.snapshot().jwt_active.clone()
    }
}

impl Tasks {
    /// A JWT-SVID of the workload `spiffe_id` itself (no task claims),
    /// for `audience`, living `ttl`: the client assertion of a revocation
    /// made after its task ended.
    pub fn workload_jwt(
        &self,
        spiffe_id: &SpiffeId,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, TaskServiceError> {
        let inner = &self.inner;
        let snap = inner.ca.snapshot();
        let minted = snap
            .jwt_active
            .sign_svid(
                &inner.settings.jwt_issuer,
                spiffe_id,
                &[audience.to_owned()],
                ttl,
                inner.clock.now(),
                serde_json::Map::new(),
            )
            .map_err(TaskServiceError::signing)?;
        Ok(minted.token)
    }
}
