//! Enforcement on the server: the revocation set and its CRLs, and
//! quarantines (records, the denial trigger, and what a quarantine
//! revokes).

mod quarantine;
mod revocations;

pub use quarantine::{DenialTrigger, QuarantineInput, QuarantineRecord, Quarantines, Scope};
pub use revocations::{CRL_REFRESH, CRL_VALIDITY, Revocations};

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::SpiffeId;
use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::entry::MAX_SVID_TTL;
use lanyard_core::revocation::{Revocation, RevokedKind};
use lanyard_core::task::TaskState;

use crate::registry::Registry;
use crate::store::StoreError;
use crate::tasks::{TaskServiceError, Tasks};

/// Why an enforcement action failed.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Ending the quarantined task failed.
    #[error(transparent)]
    Task(#[from] TaskServiceError),
    /// The request names nothing (or something malformed).
    #[error("{0}")]
    Invalid(String),
}

/// Revocations and quarantines, with what a quarantine does to tasks.
#[derive(Clone)]
pub struct Enforcement {
    /// The revocation set and CRLs.
    pub revocations: Revocations,
    /// The quarantine records.
    pub quarantines: Quarantines,
    tasks: Tasks,
    registry: Registry,
    clock: Arc<dyn Clock>,
    audit: Arc<crate::audit::AuditHook>,
}

/// How long a SPIFFE ID revocation is kept: longer than any SVID lives.
const ID_REVOCATION_KEEP: Duration = MAX_SVID_TTL;

impl Enforcement {
    /// Ties the parts together.
    pub fn new(
        revocations: Revocations,
        quarantines: Quarantines,
        tasks: Tasks,
        registry: Registry,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            revocations,
            quarantines,
            tasks,
            registry,
            clock,
            audit: Arc::default(),
        }
    }

    /// Connects the audit log (quarantines and revocations are recorded).
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        self.revocations.set_audit(audit.clone());
        self.audit.set(audit);
    }

    /// Revokes every SVID of `spiffe_id` issued up to now.
    pub async fn revoke_spiffe_id(
        &self,
        spiffe_id: &SpiffeId,
        reason: &str,
    ) -> Result<Revocation, EnforceError> {
        let now = unix_secs(self.clock.now());
        let r = Revocation {
            kind: RevokedKind::SpiffeId,
            value: spiffe_id.to_string(),
            revoked_at: now,
            expires_at: now + ID_REVOCATION_KEEP.as_secs(),
            reason: reason.to_owned(),
            issuer: None,
        };
        self.revocations.revoke(vec![r.clone()]).await?;
        Ok(r)
    }

    /// Quarantines a workload: the record (shared with every server and
    /// pushed to every agent), its task revoked (with its descendants),
    /// and for an entry-wide quarantine every SVID of the SPIFFE ID issued
    /// so far. The workload's node agent does the rest for the instance:
    /// its tasks and standing SVIDs, its calls and streams.
    pub async fn quarantine(
        &self,
        input: QuarantineInput,
    ) -> Result<QuarantineRecord, EnforceError> {
        let id = SpiffeId::new(&input.spiffe_id)
            .map_err(|e| EnforceError::Invalid(format!("SPIFFE ID {}: {e}", input.spiffe_id)))?;
        let (rec, new) = self.quarantines.add(input).await?;
        if !new {
            return Ok(rec);
        }
        self.audit
            .note(|a| {
                let mut e = a
                    .event(lanyard_core::audit::Kind::QuarantineAdded)
                    .actor(rec.reported_by.clone())
                    .subject(rec.spiffe_id.clone())
                    .node(rec.node.clone().unwrap_or_default())
                    .task(rec.task_id.clone().unwrap_or_default())
                    .reason(rec.reason.clone());
                e.details = serde_json::json!({
                    "quarantine_id": rec.id,
                    "scope": rec.scope.as_str(),
                    "source": rec.source,
                });
                e
            })
            .await;
        if let Some(task) = &rec.task_id {
            match self
                .tasks
                .end_as(
                    &rec.reported_by,
                    None,
                    task,
                    TaskState::Revoked,
                    &format!("quarantined: {}", rec.reason),
                )
                .await
            {
                Ok(_) | Err(TaskServiceError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if rec.scope == Scope::Entry || (rec.task_id.is_none() && rec.node.is_none()) {
            self.revoke_spiffe_id(&id, &format!("quarantined: {}", rec.reason))
                .await?;
        }
        Ok(rec)
    }

    /// Denied tool calls reported by an enforcement point's agent: each
    /// counts towards its task's trigger; a `@quarantine` policy, or going
    /// over the trigger, quarantines the task's holder.
    pub async fn report_denials(
        &self,
        reporter: &SpiffeId,
        denials: Vec<lanyard_proto::server::Denial>,
    ) -> Result<Vec<QuarantineRecord>, EnforceError> {
        let mut out = Vec::new();
        for d in denials {
            if d.task_id.is_empty() || SpiffeId::new(&d.spiffe_id).is_err() {
                continue;
            }
            let over = self.quarantines.count_denial(&d.task_id);
            if !(d.quarantine || over) {
                continue;
            }
            let node = self
                .tasks
                .get(&d.task_id)
                .await
                .ok()
                .map(|t| t.agent_id.to_string());
            let (source, reason) = if d.quarantine {
                ("policy", format!("forbidden tool {}: {}", d.tool, d.reason))
            } else {
                (
                    "denials",
                    format!(
                        "too many denied tool calls (last: {} - {})",
                        d.tool, d.reason
                    ),
                )
            };
            let scope = if d.quarantine && d.quarantine_entry {
                Scope::Entry
            } else {
                Scope::Instance
            };
            out.push(
                self.quarantine(QuarantineInput {
                    spiffe_id: d.spiffe_id.clone(),
                    node,
                    task_id: Some(d.task_id.clone()),
                    scope,
                    reason,
                    source: source.into(),
                    reported_by: if d.enforcement_point.is_empty() {
                        reporter.to_string()
                    } else {
                        d.enforcement_point.clone()
                    },
                })
                .await?,
            );
        }
        Ok(out)
    }

    /// After an entry was deleted: its SVIDs are revoked, unless another
    /// entry still issues the same SPIFFE ID.
    pub async fn entry_deleted(&self, spiffe_id: &SpiffeId) -> Result<(), EnforceError> {
        if !self.registry.list(Some(spiffe_id), None).is_empty() {
            return Ok(());
        }
        self.revoke_spiffe_id(spiffe_id, "entry deleted").await?;
        Ok(())
    }
}
