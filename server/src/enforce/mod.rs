//! Enforcement on the server: the revocation set and its CRLs, and
//! quarantines (records, the denial trigger, and what a quarantine
//! revokes).

mod issued;
mod quarantine;
mod reports;
mod revocations;

pub use issued::{Issued, IssuedSvid};
pub use quarantine::{DenialTrigger, QuarantineInput, QuarantineRecord, Quarantines, Scope};
pub use reports::Denial;
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
    reports: Arc<reports::ReportGate>,
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
            reports: Arc::default(),
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
        SpiffeId::new(&input.spiffe_id)
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
                    "pending": rec.pending,
                });
                e
            })
            .await;
        if !rec.pending {
            self.enforce_new(&rec).await?;
        }
        Ok(rec)
    }

    /// What a quarantine in force does on the server: the task revoked
    /// (with its descendants) and, entry-wide, every SVID of the SPIFFE ID
    /// issued so far.
    async fn enforce_new(&self, rec: &QuarantineRecord) -> Result<(), EnforceError> {
        let id = SpiffeId::new(&rec.spiffe_id)
            .map_err(|e| EnforceError::Invalid(format!("SPIFFE ID {}: {e}", rec.spiffe_id)))?;
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
        Ok(())
    }

    /// Denied tool calls reported by an enforcement point's agent. Each is
    /// a claim checked against the server's own records first
    /// ([`reports::check`]); one that holds counts towards its task's
    /// trigger, and a `@quarantine` forbid in the server's policy set, or
    /// going over the trigger, quarantines the task's holder. A refused
    /// report changes nothing and is audited.
    pub async fn report_denials(
        &self,
        reporter: &SpiffeId,
        denials: Vec<Denial>,
    ) -> Result<Vec<QuarantineRecord>, EnforceError> {
        let mut out = Vec::new();
        let mut rate_noted = false;
        for d in denials {
            let now = self.clock.now();
            if !self.reports.admit(reporter, now) {
                // One record per batch: a flood is not audited line by line.
                if !rate_noted {
                    self.report_refused(reporter, &d, "too many reports from this agent")
                        .await;
                    rate_noted = true;
                }
                continue;
            }
            let believed =
                match reports::check(&self.registry, &self.tasks, &self.quarantines, reporter, &d)
                    .await
                {
                    Ok(b) => b,
                    Err(why) => {
                        self.report_refused(reporter, &d, &why).await;
                        continue;
                    }
                };
            let over = self.quarantines.count_denial(&quarantine::workload_key(
                believed.task.grant.spiffe_id.as_str(),
                believed.task.agent_id.as_str(),
            ));
            if !(believed.quarantine.is_some() || over) {
                continue;
            }
            out.extend(
                self.quarantine_reported(reporter, &d, believed, now)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Quarantines the holder of a believed denial's task; an entry-wide
    /// `@quarantine` waits for an operator unless enforcement points on
    /// another node reported it too.
    async fn quarantine_reported(
        &self,
        reporter: &SpiffeId,
        d: &Denial,
        b: reports::Believed,
        now: std::time::SystemTime,
    ) -> Result<Vec<QuarantineRecord>, EnforceError> {
        let spiffe_id = b.task.grant.spiffe_id.to_string();
        let (source, reason) = if b.quarantine.is_some() {
            ("policy", format!("forbidden tool {}: {}", d.tool, b.reason))
        } else {
            (
                "denials",
                format!(
                    "too many denied tool calls (last: {} - {})",
                    d.tool, b.reason
                ),
            )
        };
        let input = |scope, task_id: Option<String>, pending| QuarantineInput {
            spiffe_id: spiffe_id.clone(),
            node: (scope == Scope::Instance).then(|| b.task.agent_id.to_string()),
            task_id,
            scope,
            reason: reason.clone(),
            source: source.into(),
            reported_by: b.enforcement_point.clone(),
            pending,
        };
        let task_id = Some(b.task.grant.task_id.to_string());
        let mut out = vec![
            self.quarantine(input(Scope::Instance, task_id, false))
                .await?,
        ];
        if b.quarantine == Some(true) {
            let nodes = self.reports.corroborate(&spiffe_id, reporter, now);
            let corroborated = nodes >= reports::CORROBORATING_NODES;
            let pending = self
                .quarantines
                .active()
                .into_iter()
                .find(|q| q.pending && q.scope == Scope::Entry && q.spiffe_id == spiffe_id);
            match pending {
                Some(p) if corroborated => {
                    let by = format!("{nodes} nodes' enforcement points");
                    if let Some(q) = self.confirm_quarantine(&p.id, &by).await? {
                        out.push(q);
                    }
                }
                Some(_) => {}
                None => out.push(
                    self.quarantine(input(Scope::Entry, None, !corroborated))
                        .await?,
                ),
            }
        }
        Ok(out)
    }

    /// Puts a pending quarantine in force (`by`: who decided), with what an
    /// entry-wide quarantine revokes. `None` when there is no such record.
    pub async fn confirm_quarantine(
        &self,
        id: &str,
        by: &str,
    ) -> Result<Option<QuarantineRecord>, EnforceError> {
        let Some((rec, changed)) = self.quarantines.confirm(id).await? else {
            return Ok(None);
        };
        if changed {
            self.audit
                .note(|a| {
                    a.event(lanyard_core::audit::Kind::QuarantineConfirmed)
                        .actor(by.to_owned())
                        .subject(rec.spiffe_id.clone())
                        .reason(rec.reason.clone())
                        .details(serde_json::json!({"quarantine_id": rec.id}))
                })
                .await;
            self.enforce_new(&rec).await?;
        }
        Ok(Some(rec))
    }

    /// Records a refused report: who sent it and what it claimed.
    async fn report_refused(&self, reporter: &SpiffeId, d: &Denial, why: &str) {
        tracing::warn!(%reporter, task_id = %d.task_id, spiffe_id = %d.spiffe_id, why, "enforcement report refused");
        self.audit
            .note(|a| {
                let mut e = a
                    .event(lanyard_core::audit::Kind::ReportRefused)
                    .actor(reporter.to_string())
                    .subject(d.spiffe_id.chars().take(2048).collect::<String>())
                    .task(d.task_id.chars().take(64).collect::<String>())
                    .reason(why.to_owned());
                e.details = serde_json::json!({
                    "tool": d.tool.chars().take(256).collect::<String>(),
                    "enforcement_point": d.enforcement_point.chars().take(2048).collect::<String>(),
                    "claimed_quarantine": d.quarantine,
                    "claimed_entry_wide": d.quarantine_entry,
                });
                e
            })
            .await;
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
