//! Calls a policy holds for a person's approval (`@approval`).
//!
//! The server owns every request: stored as a document (shared by every
//! server on PostgreSQL), bound to exactly one task, tool, resource and
//! argument digest, answered only by a declared approver the request names
//! as eligible, used once, and ended by expiry, by the task's end and by a
//! quarantine. A node's decision point asks here for every call that needs
//! approval ([`Approvals::ask`]) and never decides one alone, so a node
//! that cannot reach a server denies such a call.

mod answer;
mod ask;
mod record;
mod sweep;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lanyard_core::audit::Kind;
use lanyard_core::clock::{Clock, unix_secs};
use lanyard_policy::Approvers;
use tokio::sync::watch;

pub use answer::AnswerError;
pub use record::{ApprovalRecord, Binding, State};
pub use webhook::{signature, webhook_client};

use crate::config::approvers::ApprovalSettings;
use crate::enforce::Quarantines;
use crate::store::{DocKind, Store, StoreError};
use crate::tasks::Tasks;

/// Longest a decision point may hold a call for its answer.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most requests one task may have waiting at once.
pub const MAX_OPEN_PER_TASK: usize = 16;
/// Most requests waiting at once on the whole trust domain.
pub const MAX_OPEN: usize = 10_000;
/// How long answered, used and lapsed requests stay listed.
pub const KEEP_CLOSED: Duration = Duration::from_secs(3600);
/// Largest arguments object, bytes of JSON.
pub const MAX_ARGUMENTS: usize = lanyard_policy::context::MAX_CALL_CONTEXT;

/// What a decision point asks about one call (or the server about one
/// BeginTask).
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The caller's task (empty for a BeginTask).
    pub task_id: String,
    /// The caller's SPIFFE ID, as its credential says.
    pub principal: String,
    /// `UseTool` or `BeginTask`.
    pub action: String,
    /// Tool (for a BeginTask: the task type).
    pub tool: String,
    /// Resource (may be empty).
    pub resource: String,
    /// The call's arguments: a JSON object, or empty.
    pub arguments_json: String,
    /// The satisfied permits that want approval: ID, whom, wait.
    pub needs: Vec<(String, Approvers, Option<Duration>)>,
    /// The request asked for earlier, when the caller names it.
    pub approval_id: Option<String>,
    /// How long to hold a pending call for its answer.
    pub wait: Duration,
    /// The enforcement point and its node's agent.
    pub enforcement_point: String,
    /// The agent that asked.
    pub node: String,
    /// The decision asking.
    pub decision_id: String,
    /// For a BeginTask (there is no task record yet): whom it would act
    /// for, and its intent.
    pub begin: Option<BeginFacts>,
}

/// What a BeginTask waiting for approval would be.
#[derive(Debug, Clone, Default)]
pub struct BeginFacts {
    /// Whom the task would act for.
    pub on_behalf_of: Option<String>,
    /// Its intent.
    pub intent: String,
}

/// The task (or would-be task) a request is for.
struct Subject {
    on_behalf_of: Option<String>,
    task_type: String,
    intent: String,
    /// The request lapses no later than this (the task's end).
    not_after: Option<u64>,
}

/// The answer for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Pending`, `Used` (approved, and used by this call) or `Denied`.
    pub state: State,
    /// The request (empty when denied without one).
    pub id: String,
    /// The approver's reason, or why denied.
    pub reason: String,
    /// Who answered.
    pub answered_by: String,
    /// When the request lapses, Unix seconds.
    pub expires_at: u64,
}

impl Verdict {
    fn deny(reason: impl Into<String>) -> Self {
        Self {
            state: State::Denied,
            id: String::new(),
            reason: reason.into(),
            answered_by: String::new(),
            expires_at: 0,
        }
    }

    fn of(r: &ApprovalRecord, state: State) -> Self {
        Self {
            state,
            id: r.id.clone(),
            reason: r.reason.clone(),
            answered_by: r.answered_by.clone(),
            expires_at: r.expires_at,
        }
    }
}

/// Why a request could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Malformed (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The requests, and who may answer them.
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: ApprovalSettings,
    tasks: Tasks,
    quarantines: Quarantines,
    audit: crate::audit::AuditHook,
    records: RwLock<HashMap<String, ApprovalRecord>>,
    /// Bumped on every change, here or (through the feed) on another
    /// server: held calls look again.
    changes: watch::Sender<u64>,
    /// One request opened at a time on this server (no two for one call).
    opening: tokio::sync::Mutex<()>,
    /// Delivers webhooks (`None` when none are configured).
    webhook_client: Option<lanyard_fetch::Client>,
}

fn decode(key: &str, v: serde_json::Value) -> Result<ApprovalRecord, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        key: format!("approval/{key}"),
        reason: e.to_string(),
    })
}

fn encode(r: &ApprovalRecord) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(r).map_err(|e| StoreError::caused(e.to_string(), e))
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// The hex SHA-256 of the RFC 8785 form of a call's arguments (an empty
/// text is the empty object), or why they are refused.
pub fn arguments_digest(json: &str) -> Result<String, String> {
    if json.len() > MAX_ARGUMENTS {
        return Err(format!("arguments: at most {MAX_ARGUMENTS} bytes"));
    }
    let v: serde_json::Value = if json.trim().is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(json).map_err(|e| format!("arguments: {e}"))?
    };
    if !v.is_object() {
        return Err("arguments: must be a JSON object".into());
    }
    let text = lanyard_core::task::canonical_json_any(&v).map_err(|e| format!("arguments: {e}"))?;
    Ok(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        text.as_bytes(),
    )))
}

impl Approvals {
    /// Loads the requests from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: ApprovalSettings,
        tasks: Tasks,
        quarantines: Quarantines,
        webhook_client: Option<lanyard_fetch::Client>,
    ) -> Result<Self, StoreError> {
        let a = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                settings,
                tasks,
                quarantines,
                audit: crate::audit::AuditHook::default(),
                records: RwLock::default(),
                changes: watch::channel(0).0,
                opening: tokio::sync::Mutex::new(()),
                webhook_client,
            }),
        };
        a.reload().await?;
        Ok(a)
    }

    /// Connects the audit log.
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        self.inner.audit.set(audit);
    }

    /// Who may approve.
    pub fn settings(&self) -> &ApprovalSettings {
        &self.inner.settings
    }

    /// Re-reads every request (after a gap in the change feed).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let mut all = HashMap::new();
        for (key, v) in self.inner.store.list_docs(DocKind::Approval).await? {
            let r = decode(&key, v)?;
            all.insert(r.id.clone(), r);
        }
        *self.write() = all;
        self.bump();
        Ok(())
    }

    /// Re-reads one request (the change feed names it).
    pub async fn refresh(&self, id: &str) -> Result<(), StoreError> {
        match self.inner.store.get_doc(DocKind::Approval, id).await? {
            Some(v) => {
                let r = decode(id, v)?;
                self.write().insert(r.id.clone(), r);
            }
            None => {
                self.write().remove(id);
            }
        }
        self.bump();
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ApprovalRecord>> {
        self.inner
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ApprovalRecord>> {
        self.inner.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// One request.
    pub fn get(&self, id: &str) -> Option<ApprovalRecord> {
        self.read().get(id).cloned()
    }

    /// Requests, oldest first: pending ones, or (`all`) every one kept.
    pub fn list(&self, all: bool) -> Vec<ApprovalRecord> {
        let mut out: Vec<ApprovalRecord> = self
            .read()
            .values()
            .filter(|r| all || r.state == State::Pending)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    fn now(&self) -> u64 {
        unix_secs(self.inner.clock.now())
    }

    /// Replaces `old` with `new` if nobody changed it meanwhile; `false`
    /// when someone did (the view is refreshed).
    async fn swap(
        &self,
        old: Option<&ApprovalRecord>,
        new: &ApprovalRecord,
    ) -> Result<bool, StoreError> {
        let expected = old.map(encode).transpose()?;
        let matches = |cur: Option<&serde_json::Value>| match (cur, &expected) {
            (None, None) => true,
            (Some(c), Some(_)) => {
                ApprovalRecord::deserialize_from(c).is_some_and(|c| Some(&c) == old)
            }
            _ => false,
        };
        let doc = encode(new)?;
        let won = self
            .inner
            .store
            .swap_doc(DocKind::Approval, &new.id, &matches, Some(&doc))
            .await?
            .is_ok();
        if won {
            self.write().insert(new.id.clone(), new.clone());
            self.bump();
        } else {
            self.refresh(&new.id).await?;
        }
        Ok(won)
    }

    /// Records what became of a request.
    async fn note(&self, r: &ApprovalRecord, kind: Kind, actor: &str) {
        self.inner
            .audit
            .note(|a| {
                let mut e = a
                    .event(kind)
                    .actor(actor.to_owned())
                    .subject(r.principal.clone())
                    .task(r.task_id.clone())
                    .reason(r.reason.clone());
                e.tool = r.tool.clone();
                e.resource = r.resource.clone();
                e.policy_ids = r.policy_ids.clone();
                e.correlation.decision_id = r.decision_id.clone();
                e.details = serde_json::json!({
                    "approval_id": r.id,
                    "state": r.state.as_str(),
                    "on_behalf_of": r.on_behalf_of,
                    "arguments_sha256": r.arguments_sha256,
                    "approvers": r.approvers,
                    "eligible": r.eligible,
                    "answered_by": r.answered_by,
                    "expires_at": r.expires_at,
                    "used_by": r.used_by,
                    "enforcement_point": r.enforcement_point,
                });
                e
            })
            .await;
    }
}

impl ApprovalRecord {
    fn deserialize_from(v: &serde_json::Value) -> Option<Self> {
        <Self as serde::Deserialize>::deserialize(v).ok()
    }
}
