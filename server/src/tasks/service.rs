//! The owner of task records: begin, sign, end, revoke, delegate, list.
//! Every state change is a compare-and-swap on the stored record, so an
//! EndTask racing a revoke or a parent's cascade cannot undo either.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::revocation::{Revocation, RevokedKind};
use lanyard_core::task::{Actor, SensitivityLevels, TaskGrant, TaskRecord, TaskRequest, TaskState};
use lanyard_core::{RegistrationEntry, SpiffeId, TaskId};
use serde_json::Map;
use tokio::sync::watch;

use crate::enforce::Revocations;

use super::candidates::choose;
use super::decide::{BeginVerdict, Caller, decide_begin};
use super::error::TaskServiceError;
use super::mint::{MintRequest, MintedTask, check_audiences, mint};
use crate::ca::Ca;
use crate::ca::IssuanceSettings;
use crate::policy::Policies;
use crate::registry::Registry;
use crate::store::Store;
use lanyard_policy::TaskContext;

/// How often a contended state change is retried.
const SWAP_ATTEMPTS: usize = 16;

/// A BeginTask forwarded by an agent.
#[derive(Debug, Clone)]
pub struct BeginInput {
    /// The entry the agent matched for the caller (the first candidate).
    pub entry_id: String,
    /// When the caller named no SPIFFE ID: every entry it may begin a task
    /// under, in serving order (`entry_id` among them); the task is begun
    /// under the one identity that permits it. Empty: `entry_id` alone.
    pub candidates: Vec<String>,
    /// What the workload asked for (converted, not yet checked).
    pub spec: TaskRequest,
    /// PKCS#10 DER for the task X.509-SVID.
    pub csr: Vec<u8>,
    /// Audiences of a task JWT-SVID, if one is wanted.
    pub jwt_audiences: Vec<String>,
    /// What the agent attested.
    pub caller: Caller,
    /// The approval this request was approved with, when a policy holds
    /// the task for a person's approval (the caller has used it).
    pub approved: Option<String>,
}

/// The services tasks are decided and minted with.
pub struct TaskParts {
    /// Entries (ceilings).
    pub registry: Registry,
    /// The CA that mints task SVIDs.
    pub ca: Ca,
    /// Cedar policies.
    pub policies: Policies,
    /// Where ended tasks are revoked.
    pub revocations: Revocations,
}

/// The tasks, behind a cheap clone.
#[derive(Clone)]
pub struct Tasks {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn Store>,
    pub(super) registry: Registry,
    pub(super) ca: Ca,
    pub(super) policies: Policies,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) levels: SensitivityLevels,
    pub(super) settings: IssuanceSettings,
    /// Where an ended task's ID is revoked, so every peer refuses its
    /// credentials before they expire.
    pub(super) revocations: Revocations,
    /// Revoked, not yet expired tasks per agent (task -> expiry): pushed to
    /// agents so they drop the credentials. (Tasks an agent ended itself
    /// are not pushed back to it.)
    pub(super) ended: Mutex<HashMap<SpiffeId, BTreeMap<TaskId, u64>>>,
    /// Where task ends and revocations are recorded.
    pub(super) audit: crate::audit::AuditHook,
    /// Active delegated tasks under each of their ancestors, so that ending
    /// a task finds its descendants without scanning the store.
    pub(super) descendants: Mutex<HashMap<TaskId, Vec<TaskId>>>,
    pub(super) changes: watch::Sender<u64>,
    /// Every task this server ends or revokes, as it happens (credential
    /// leases end with their task).
    pub(super) ends: tokio::sync::broadcast::Sender<TaskId>,
}

impl Tasks {
    /// Builds the service and its index of ended tasks from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        parts: TaskParts,
        clock: Arc<dyn Clock>,
        levels: SensitivityLevels,
        settings: IssuanceSettings,
    ) -> Result<Self, TaskServiceError> {
        let TaskParts {
            registry,
            ca,
            policies,
            revocations,
        } = parts;
        let (ended, descendants) = Self::indexes(store.as_ref(), clock.as_ref()).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                registry,
                ca,
                policies,
                clock,
                levels,
                settings,
                revocations,
                ended: Mutex::new(ended),
                descendants: Mutex::new(descendants),
                changes: watch::channel(0).0,
                ends: tokio::sync::broadcast::channel(1024).0,
                audit: crate::audit::AuditHook::default(),
            }),
        })
    }

    /// Connects the audit log (task state changes are recorded).
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        self.inner.audit.set(audit);
    }

    /// Wakes on every revocation (an operator's, or a cascade from an ended
    /// ancestor).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Tells of every task this server ends or revokes. A receiver that
    /// lags loses some: whoever needs all of them also sweeps.
    pub fn ends(&self) -> tokio::sync::broadcast::Receiver<TaskId> {
        self.inner.ends.subscribe()
    }

    /// The configured sensitivity levels.
    pub fn levels(&self) -> &SensitivityLevels {
        &self.inner.levels
    }

    /// Decides a request without creating anything (`policy test`).
    pub fn dry_run(
        &self,
        entry: &RegistrationEntry,
        caller: &Caller,
        request: TaskRequest,
        extra: Map<String, serde_json::Value>,
    ) -> Result<(BeginVerdict, u64), TaskServiceError> {
        let request = request.check(&self.inner.levels)?;
        let ctx =
            TaskContext::for_begin(&request, &self.inner.levels, self.inner.clock.now(), extra);
        let enforced = self.inner.policies.enforced();
        let verdict = decide_begin(
            entry,
            &self.inner.levels,
            enforced.as_ref().map(|l| l.book.as_ref()),
            caller,
            &request,
            &ctx,
        );
        Ok((verdict, enforced.map_or(0, |l| l.record.version)))
    }

    /// Decides, records and mints a task for a workload `agent` attested.
    pub async fn begin(
        &self,
        agent: &SpiffeId,
        input: BeginInput,
    ) -> Result<(TaskRecord, MintedTask), TaskServiceError> {
        let inner = &self.inner;
        let mut entries = self.candidate_entries(agent, &input)?;
        let request = input.spec.check(&inner.levels)?;
        check_audiences(&input.jwt_audiences).map_err(TaskServiceError::Invalid)?;
        lanyard_core::x509::parse_csr_public_key(&input.csr)
            .map_err(|e| TaskServiceError::Invalid(format!("csr: {e}")))?;
        let now = inner.clock.now();
        let now_secs = unix_secs(now);
        let parent = match (&request.parent_task_id, &request.delegation_token) {
            (Some(p), Some(token)) => {
                let (parent, to) = self.redeem(p, token, &entries, &request, now_secs).await?;
                entries.retain(|e| e.spiffe_id == to);
                Some(parent)
            }
            _ => None,
        };
        let ctx = TaskContext::for_begin(&request, &inner.levels, now, Map::new());
        let enforced = inner.policies.enforced();
        let considered = entries
            .into_iter()
            .map(|entry| {
                let verdict = decide_begin(
                    &entry,
                    &inner.levels,
                    enforced.as_ref().map(|l| l.book.as_ref()),
                    &input.caller,
                    &request,
                    &ctx,
                );
                (entry, verdict)
            })
            .collect();
        let chosen = choose(considered, request.allow_partial);
        if let Some(shadow) = inner.policies.shadow()
            && let Ok((entry, verdict)) = &chosen
        {
            let candidate = decide_begin(
                entry,
                &inner.levels,
                Some(shadow.book.as_ref()),
                &input.caller,
                &request,
                &ctx,
            );
            tracing::info!(
                spiffe_id = %entry.spiffe_id,
                task_type = %request.task_type,
                shadow_version = shadow.record.version,
                enforced_allows = verdict.task_allowed,
                shadow_allows = candidate.task_allowed,
                enforced_tools = ?verdict.granted(),
                shadow_tools = ?candidate.granted(),
                differs = *verdict != candidate,
                "shadow policy decision"
            );
        }
        let (entry, verdict) = chosen?;
        if !verdict.task_approval.is_empty() && input.approved.is_none() {
            return Err(TaskServiceError::NeedsApproval(Box::new(
                super::BeginApproval::new(&entry, &verdict, &request),
            )));
        }
        let denied = verdict.denied();
        let mut not_after = now_secs.saturating_add(request.ttl.as_secs());
        let mut chain = Vec::new();
        if let Some(p) = &parent {
            not_after = not_after.min(p.grant.not_after);
            chain.push(Actor {
                spiffe_id: p.grant.spiffe_id.clone(),
                task_id: p.grant.task_id.clone(),
            });
            chain.extend(p.grant.chain.iter().cloned());
        }
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| TaskServiceError::no_randomness())?;
        let grant = TaskGrant {
            task_id: TaskId::from_random(id),
            spiffe_id: entry.spiffe_id.clone(),
            task_type: request.task_type.clone(),
            tools: verdict.granted(),
            destinations: request.destinations.clone(),
            data_sensitivity: request.data_sensitivity.clone(),
            on_behalf_of: request.on_behalf_of.clone(),
            intent_sha256: request.intent_sha256(),
            not_after,
            chain,
        };
        let record = TaskRecord {
            grant,
            entry_id: entry.id.clone(),
            agent_id: agent.clone(),
            denied,
            created_at: now_secs,
            state: TaskState::Active,
            end_reason: String::new(),
            intent: request.intent.clone(),
        };
        let minted = mint(
            &inner.ca,
            &inner.settings,
            &record.grant,
            &MintRequest {
                entry: &entry,
                node: agent,
                csr: &input.csr,
                audiences: &input.jwt_audiences,
                exe_sha256: Some(input.caller.exe_sha256.as_str()).filter(|h| !h.is_empty()),
                issued: inner.revocations.issued(),
            },
            now,
        )?;
        if let Err(found) = inner
            .store
            .swap_task(&record.grant.task_id, None, &record)
            .await?
        {
            tracing::error!(task_id = %record.grant.task_id, ?found, "task ID collision");
            return Err(TaskServiceError::Contended(
                record.grant.task_id.to_string(),
            ));
        }
        if !record.grant.chain.is_empty() {
            {
                let mut d = inner.descendants.lock().unwrap_or_else(|p| p.into_inner());
                for a in &record.grant.chain {
                    d.entry(a.task_id.clone())
                        .or_default()
                        .push(record.grant.task_id.clone());
                }
            }
            // The parent was active when the token was redeemed; it may
            // have ended since. Indexed first, then checked in the store:
            // an ancestor ending now either finds the child in the index,
            // or is seen ended here (and the child goes with it).
            if let Some(ended) = self.revoke_if_orphaned(&record).await? {
                return Err(TaskServiceError::Denied(format!(
                    "delegation refused: the parent task {ended} ended"
                )));
            }
        }
        tracing::info!(
            task_id = %record.grant.task_id,
            spiffe_id = %record.grant.spiffe_id,
            %agent,
            task_type = %record.grant.task_type,
            tools = ?record.grant.tools,
            denied = record.denied.len(),
            parent = ?record.grant.parent_task_id(),
            "task begun"
        );
        Ok((record, minted))
    }

    pub(super) async fn active_owned(
        &self,
        agent: &SpiffeId,
        task_id: &str,
        now: u64,
    ) -> Result<TaskRecord, TaskServiceError> {
        let task = self.get(task_id).await?;
        if &task.agent_id != agent {
            return Err(TaskServiceError::NotFound(task_id.to_owned()));
        }
        match task.state_at(now) {
            TaskState::Active => Ok(task),
            s => Err(TaskServiceError::NotActive(task_id.to_owned(), s.as_str())),
        }
    }

    /// Mints new credentials for an active task the agent holds.
    pub async fn sign(
        &self,
        agent: &SpiffeId,
        task_id: &str,
        csr: &[u8],
        audiences: &[String],
        exe_sha256: &str,
    ) -> Result<MintedTask, TaskServiceError> {
        let now = self.inner.clock.now();
        let task = self.active_owned(agent, task_id, unix_secs(now)).await?;
        check_audiences(audiences).map_err(TaskServiceError::Invalid)?;
        if csr.is_empty() && audiences.is_empty() {
            return Err(TaskServiceError::Invalid(
                "a CSR or JWT audiences are required".into(),
            ));
        }
        let entry = self.owned_entry(agent, task.entry_id.as_str())?;
        mint(
            &self.inner.ca,
            &self.inner.settings,
            &task.grant,
            &MintRequest {
                entry: &entry,
                node: agent,
                csr,
                audiences,
                exe_sha256: Some(exe_sha256).filter(|h| !h.is_empty()),
                issued: self.inner.revocations.issued(),
            },
            now,
        )
    }

    /// One task by ID.
    pub async fn get(&self, task_id: &str) -> Result<TaskRecord, TaskServiceError> {
        let id = TaskId::new(task_id)?;
        self.inner
            .store
            .get_task(&id)
            .await?
            .ok_or_else(|| TaskServiceError::NotFound(task_id.to_owned()))
    }

    /// Tasks, newest first, optionally only active ones, filtered by
    /// workload and agent.
    pub async fn list(
        &self,
        spiffe_id: Option<&SpiffeId>,
        agent: Option<&SpiffeId>,
        all: bool,
    ) -> Result<Vec<TaskRecord>, TaskServiceError> {
        let now = unix_secs(self.inner.clock.now());
        let mut tasks: Vec<TaskRecord> = self
            .inner
            .store
            .list_tasks()
            .await?
            .into_iter()
            .map(|mut t| {
                t.state = t.state_at(now);
                t
            })
            .filter(|t| all || t.state == TaskState::Active)
            .filter(|t| spiffe_id.is_none_or(|s| &t.grant.spiffe_id == s))
            .filter(|t| agent.is_none_or(|a| &t.agent_id == a))
            .collect();
        tasks.sort_by(|a, b| {
            (b.created_at, &b.grant.task_id).cmp(&(a.created_at, &a.grant.task_id))
        });
        Ok(tasks)
    }

    /// Ends a task: by its agent (`agent` set: EndTask, expiry, exit) or by
    /// an operator (revoke). Every descendant is revoked with it. Ending an
    /// already ended task changes nothing.
    pub async fn end(
        &self,
        agent: Option<&SpiffeId>,
        task_id: &str,
        state: TaskState,
        reason: &str,
    ) -> Result<TaskRecord, TaskServiceError> {
        let actor = agent.map_or_else(|| "server".to_owned(), ToString::to_string);
        self.end_as(&actor, agent, task_id, state, reason).await
    }

    /// [`Tasks::end`], with who ended it named in the audit record (an
    /// operator's `uid:N`, a quarantine's reporter).
    pub async fn end_as(
        &self,
        actor: &str,
        agent: Option<&SpiffeId>,
        task_id: &str,
        state: TaskState,
        reason: &str,
    ) -> Result<TaskRecord, TaskServiceError> {
        let task = self.get(task_id).await?;
        if agent.is_some_and(|a| a != &task.agent_id) {
            return Err(TaskServiceError::NotFound(task_id.to_owned()));
        }
        let ended = self
            .set_state(actor, &task.grant.task_id, state, reason)
            .await?;
        // Cascade: every task whose chain holds this one.
        let descendants = self
            .inner
            .descendants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task.grant.task_id)
            .unwrap_or_default();
        let cascaded = !descendants.is_empty();
        for child in descendants {
            match self
                .set_state(
                    "server",
                    &child,
                    TaskState::Revoked,
                    &format!("ancestor task {} ended", task.grant.task_id),
                )
                .await
            {
                Ok(_) | Err(TaskServiceError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if state == TaskState::Revoked || cascaded {
            self.inner.changes.send_modify(|v| *v += 1);
        }
        Ok(ended)
    }

    pub(super) async fn set_state(
        &self,
        actor: &str,
        id: &TaskId,
        state: TaskState,
        reason: &str,
    ) -> Result<TaskRecord, TaskServiceError> {
        for _ in 0..SWAP_ATTEMPTS {
            let Some(cur) = self.inner.store.get_task(id).await? else {
                return Err(TaskServiceError::NotFound(id.to_string()));
            };
            if cur.state != TaskState::Active {
                return Ok(cur);
            }
            let mut next = cur.clone();
            next.state = state;
            next.end_reason = reason.to_owned();
            if self
                .inner
                .store
                .swap_task(id, Some(&cur), &next)
                .await?
                .is_ok()
            {
                if state == TaskState::Revoked {
                    self.inner
                        .ended
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(next.agent_id.clone())
                        .or_default()
                        .insert(id.clone(), next.grant.not_after);
                }
                tracing::info!(task_id = %id, state = state.as_str(), reason, "task ended");
                let kind = if state == TaskState::Revoked {
                    lanyard_core::audit::Kind::TaskRevoked
                } else {
                    lanyard_core::audit::Kind::TaskEnded
                };
                self.inner
                    .audit
                    .note(|a| {
                        let mut e = a
                            .event(kind)
                            .actor(actor)
                            .subject(next.grant.spiffe_id.to_string())
                            .node(next.agent_id.to_string())
                            .task(id.to_string())
                            .reason(reason);
                        e.task.chain = next.grant.chain.iter().map(|a| a.task_id.to_string()).collect();
                        e.details = serde_json::json!({"state": state.as_str(), "task_type": next.grant.task_type});
                        e
                    })
                    .await;
                if matches!(state, TaskState::Ended | TaskState::Revoked) {
                    let now = unix_secs(self.inner.clock.now());
                    self.inner
                        .revocations
                        .revoke(vec![Revocation {
                            kind: RevokedKind::Task,
                            value: id.to_string(),
                            revoked_at: now,
                            expires_at: next.grant.not_after,
                            reason: format!("task {}: {reason}", state.as_str()),
                            issuer: None,
                        }])
                        .await?;
                    let _ = self.inner.ends.send(id.clone());
                }
                return Ok(next);
            }
        }
        Err(TaskServiceError::Contended(id.to_string()))
    }
}

#[cfg(test)]
mod tests;
