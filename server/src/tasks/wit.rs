//! Task WIT-SVIDs: the task's claims in a WIT bound to a workload's key.

use lanyard_core::SpiffeId;
use lanyard_core::clock::unix_secs;

use super::{TaskServiceError, Tasks};

impl Tasks {
    /// A WIT-SVID for an active task the agent holds, bound to `cnf`: the
    /// task's claims under [`lanyard_core::jwt::wit::TASK_CLAIM`], living
    /// the entry's JWT TTL but never past the task.
    pub async fn sign_wit(
        &self,
        agent: &SpiffeId,
        task_id: &str,
        cnf: &serde_json::Value,
        exe_sha256: &str,
    ) -> Result<lanyard_core::jwt::MintedJwt, TaskServiceError> {
        let now = self.inner.clock.now();
        let task = self.active_owned(agent, task_id, unix_secs(now)).await?;
        let entry = self.owned_entry(agent, task.entry_id.as_str())?;
        let remaining = lanyard_core::clock::from_unix_secs(task.grant.not_after)
            .duration_since(now)
            .unwrap_or_default();
        let ttl = entry
            .jwt_ttl
            .unwrap_or(self.inner.settings.default_jwt_svid_ttl)
            .min(remaining);
        let mut extra = serde_json::Map::new();
        extra.insert(
            lanyard_core::jwt::wit::TASK_CLAIM.into(),
            serde_json::Value::Object(
                task.grant
                    .jwt_claims(agent, Some(exe_sha256).filter(|h| !h.is_empty())),
            ),
        );
        lanyard_core::jwt::wit::sign_wit(
            &self.inner.ca.snapshot().wit_active,
            &task.grant.spiffe_id,
            cnf,
            ttl,
            now,
            extra,
        )
        .map_err(|e| TaskServiceError::Invalid(e.to_string()))
    }
}
