//! Asking about one call (or BeginTask): the open request for exactly
//! this call used if approved, reported if pending or denied, otherwise a
//! new request.

use lanyard_core::audit::Kind;
use lanyard_core::task::TaskState;
use lanyard_policy::Approvers;

use super::{
    ApprovalRecord, Approvals, Ask, AskError, Binding, MAX_OPEN, MAX_OPEN_PER_TASK, MAX_WAIT,
    State, Subject, Verdict, arguments_digest, random_id,
};
use crate::tasks::TaskServiceError;

impl Approvals {
    /// Decides what becomes of one call that needs approval: the open
    /// request for exactly this call (or the one named) used if approved,
    /// reported if pending or denied; otherwise a new request. A pending
    /// answer is held up to `ask.wait` for the approver.
    pub async fn ask(&self, ask: &Ask) -> Result<Verdict, AskError> {
        if ask.tool.is_empty() || ask.tool.len() > 256 {
            return Err(AskError::Invalid("tool: 1 to 256 bytes is required".into()));
        }
        if ask.resource.len() > 256 {
            return Err(AskError::Invalid("resource: at most 256 bytes".into()));
        }
        match (ask.action.as_str(), ask.begin.is_some()) {
            ("UseTool", false) if !ask.task_id.is_empty() => {}
            ("BeginTask", true) if ask.task_id.is_empty() => {}
            _ => {
                return Err(AskError::Invalid(format!(
                    "action {:?}: UseTool calls (with their task) and BeginTask requests are held for approval",
                    ask.action
                )));
            }
        }
        if ask.needs.is_empty() {
            return Err(AskError::Invalid(
                "needs: the permits that ask for approval are required".into(),
            ));
        }
        let digest = arguments_digest(&ask.arguments_json).map_err(AskError::Invalid)?;
        let wait = ask.wait.min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.subscribe();
        loop {
            changes.borrow_and_update();
            let v = self.step(ask, &digest).await?;
            if v.state != State::Pending {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(v),
            }
        }
    }

    async fn step(&self, ask: &Ask, digest: &str) -> Result<Verdict, AskError> {
        let subject = match &ask.begin {
            Some(b) => {
                if let Some(q) = self.quarantined(&ask.principal, "") {
                    return Ok(Verdict::deny(format!("quarantined: {q}")));
                }
                Subject {
                    on_behalf_of: b.on_behalf_of.clone(),
                    task_type: ask.tool.clone(),
                    intent: b.intent.clone(),
                    not_after: None,
                }
            }
            None => match self.task_subject(ask).await? {
                Ok(s) => s,
                Err(v) => return Ok(v),
            },
        };
        let now = self.now();
        let binding = Binding {
            principal: &ask.principal,
            task_id: &ask.task_id,
            action: &ask.action,
            tool: &ask.tool,
            resource: &ask.resource,
            arguments_sha256: digest,
        };
        for _ in 0..8 {
            let found = self.find(ask.approval_id.as_deref(), &binding, now);
            let r = match found {
                Err(v) => return Ok(v),
                Ok(Some(r)) => r,
                Ok(None) => return self.open(ask, &subject, &binding).await,
            };
            match r.state {
                State::Pending => return Ok(Verdict::of(&r, State::Pending)),
                State::Denied => return Ok(Verdict::of(&r, State::Denied)),
                State::Approved => {
                    let mut used = r.clone();
                    used.state = State::Used;
                    used.used_at = now;
                    used.used_by = ask.decision_id.clone();
                    if self.swap(Some(&r), &used).await? {
                        self.note(&used, Kind::ApprovalUsed, "server").await;
                        return Ok(Verdict::of(&used, State::Used));
                    }
                    // Another call (or server) changed it first: look again.
                }
                _ => return self.open(ask, &subject, &binding).await,
            }
        }
        Err(AskError::Invalid(
            "the request is being changed concurrently; retry".into(),
        ))
    }

    /// The live task a call is for, or the answer when it is not live.
    async fn task_subject(&self, ask: &Ask) -> Result<Result<Subject, Verdict>, AskError> {
        let task = match self.inner.tasks.get(&ask.task_id).await {
            Ok(t) => t,
            Err(TaskServiceError::NotFound(_) | TaskServiceError::Invalid(_)) => {
                return Ok(Err(Verdict::deny(format!(
                    "task {} is unknown",
                    ask.task_id
                ))));
            }
            Err(TaskServiceError::Store(e)) => return Err(AskError::Store(e)),
            Err(e) => return Err(AskError::Invalid(e.to_string())),
        };
        let state = task.state_at(self.now());
        if state != TaskState::Active {
            return Ok(Err(Verdict::deny(format!(
                "task {} is {}",
                ask.task_id,
                state.as_str()
            ))));
        }
        if task.grant.spiffe_id.as_str() != ask.principal {
            return Err(AskError::Invalid(format!(
                "task {} is not held by {}",
                ask.task_id, ask.principal
            )));
        }
        if let Some(q) = self.quarantined(task.grant.spiffe_id.as_str(), &ask.task_id) {
            return Ok(Err(Verdict::deny(format!("quarantined: {q}"))));
        }
        Ok(Ok(Subject {
            on_behalf_of: task.grant.on_behalf_of,
            task_type: task.grant.task_type,
            intent: task.intent,
            not_after: Some(task.grant.not_after),
        }))
    }

    /// The quarantine in force on this task or its SPIFFE ID, by reason.
    pub(super) fn quarantined(&self, spiffe_id: &str, task_id: &str) -> Option<String> {
        self.inner
            .quarantines
            .in_force()
            .into_iter()
            .find(|q| {
                q.task_id.as_deref() == Some(task_id)
                    || (q.scope == crate::enforce::Scope::Entry && q.spiffe_id == spiffe_id)
            })
            .map(|q| q.reason)
    }

    /// The request that answers this call: the one named (if it is for
    /// this call), else the newest that still answers it. `Err` answers
    /// the call at once.
    fn find(
        &self,
        named: Option<&str>,
        b: &Binding<'_>,
        now: u64,
    ) -> Result<Option<ApprovalRecord>, Verdict> {
        let all = self.read();
        if let Some(id) = named {
            let Some(r) = all.get(id) else {
                return Err(Verdict::deny(format!("approval {id} is unknown")));
            };
            if !r.binds(b) {
                return Err(Verdict::deny(format!(
                    "approval {id} was asked for another call (its task, tool, resource or arguments differ)"
                )));
            }
            if r.answers(now) {
                return Ok(Some(r.clone()));
            }
        }
        Ok(all
            .values()
            .filter(|r| r.binds(b) && r.answers(now))
            .max_by_key(|r| (r.created_at, r.id.clone()))
            .cloned())
    }

    /// Opens a request for this call (or finds the one another call just
    /// opened).
    async fn open(&self, ask: &Ask, task: &Subject, b: &Binding<'_>) -> Result<Verdict, AskError> {
        let _one = self.inner.opening.lock().await;
        let now = self.now();
        if let Ok(Some(r)) = self.find(None, b, now) {
            return Ok(Verdict::of(&r, r.state));
        }
        let needs: Vec<Approvers> = ask.needs.iter().map(|(_, a, _)| a.clone()).collect();
        let eligible = match self
            .inner
            .settings
            .eligible(&needs, task.on_behalf_of.as_deref())
        {
            Ok(e) => e,
            Err(why) => return Ok(Verdict::deny(format!("needs approval, but {why}"))),
        };
        let open: Vec<ApprovalRecord> = self
            .read()
            .values()
            .filter(|r| r.state == State::Pending && r.answers(now))
            .cloned()
            .collect();
        let mine = open
            .iter()
            .filter(|r| r.task_id == ask.task_id && r.principal == ask.principal)
            .count();
        if mine >= MAX_OPEN_PER_TASK {
            return Ok(Verdict::deny(format!(
                "{} already has {MAX_OPEN_PER_TASK} requests waiting for approval",
                if ask.task_id.is_empty() {
                    ask.principal.as_str()
                } else {
                    ask.task_id.as_str()
                }
            )));
        }
        if open.len() >= MAX_OPEN {
            return Ok(Verdict::deny(format!(
                "{MAX_OPEN} calls are waiting for approval already"
            )));
        }
        let ttl = ask
            .needs
            .iter()
            .filter_map(|(_, _, t)| *t)
            .min()
            .unwrap_or(self.inner.settings.default_ttl);
        let r = ApprovalRecord {
            id: random_id(),
            state: State::Pending,
            task_id: ask.task_id.clone(),
            principal: ask.principal.clone(),
            on_behalf_of: task.on_behalf_of.clone(),
            task_type: task.task_type.clone(),
            intent: task.intent.clone(),
            action: ask.action.clone(),
            tool: ask.tool.clone(),
            resource: ask.resource.clone(),
            arguments_json: ask.arguments_json.clone(),
            arguments_sha256: b.arguments_sha256.to_owned(),
            policy_ids: ask.needs.iter().map(|(p, _, _)| p.clone()).collect(),
            approvers: needs.iter().map(ToString::to_string).collect(),
            eligible,
            created_at: now,
            expires_at: now
                .saturating_add(ttl.as_secs())
                .min(task.not_after.unwrap_or(u64::MAX)),
            answered_by: String::new(),
            answered_at: 0,
            reason: String::new(),
            used_at: 0,
            used_by: String::new(),
            enforcement_point: ask.enforcement_point.clone(),
            node: ask.node.clone(),
            decision_id: ask.decision_id.clone(),
        };
        if !self.swap(None, &r).await? {
            return Err(AskError::Invalid("approval ID collision; retry".into()));
        }
        tracing::info!(
            id = %r.id, task_id = %r.task_id, tool = %r.tool, eligible = ?r.eligible,
            action = %r.action, "held for approval"
        );
        self.note(&r, Kind::ApprovalRequested, &r.node.clone())
            .await;
        self.announce(&r);
        Ok(Verdict::of(&r, State::Pending))
    }
}
