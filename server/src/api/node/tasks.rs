//! Tasks through the node API: BeginTask, SignTaskSvid, EndTask,
//! DelegateTask.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A task X.509-SVID as the node API sends it.
fn task_svid_msg(s: TaskSvid) -> types::X509Svid {
    types::X509Svid {
        spiffe_id: s.spiffe_id.to_string(),
        cert_chain: vec![s.cert_der],
        expires_at: i64::try_from(s.not_after).unwrap_or(i64::MAX),
    }
}

impl NodeApi {
    /// `begin task` (see the `Node` service).
    pub(super) async fn begin_task_rpc(
        &self,
        req: Request<BeginTaskRequest>,
    ) -> Result<Response<BeginTaskResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let input = BeginInput {
            entry_id: req.entry_id,
            candidates: req.candidate_entry_ids,
            spec: lanyard_proto::convert::task_request(
                req.spec
                    .ok_or_else(|| Status::invalid_argument("spec is required"))?,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
            csr: req.csr,
            jwt_audiences: req.jwt_audiences,
            caller: Caller {
                agent_id: Some(agent.spiffe_id.clone()),
                selectors: req.selectors,
                exe_path: req.exe_path,
                exe_sha256: req.exe_sha256,
            },
            approved: None,
        };
        let denied_as = denied_task(&self.audit, &agent.spiffe_id, &input);
        // Policy evaluation and signing take tens of microseconds: inline.
        let begun = match self.tasks.begin(&agent.spiffe_id, input.clone()).await {
            Err(crate::tasks::TaskServiceError::NeedsApproval(b)) => {
                let mut input = input;
                input.approved = Some(self.begin_approval(&agent.spiffe_id, &b).await?);
                self.tasks.begin(&agent.spiffe_id, input).await
            }
            other => other,
        };
        let (record, minted) = match begun {
            Ok(v) => v,
            Err(e) => {
                if let crate::tasks::TaskServiceError::Denied(why) = &e {
                    self.audit.note(denied_as.reason(why.clone())).await;
                }
                return Err(e.into());
            }
        };
        self.audited_task(&agent.spiffe_id, &record, minted.svid.as_ref(), true)
            .await?;
        let (jwt, jwt_expires_at) = minted.jwt.unwrap_or_default();
        Ok(Response::new(BeginTaskResponse {
            task: Some(types::TaskInfo::from(&record)),
            svid: minted.svid.map(task_svid_msg),
            jwt,
            jwt_expires_at: i64::try_from(jwt_expires_at).unwrap_or(i64::MAX),
        }))
    }

    /// A BeginTask a policy holds for approval: the approval's ID once it
    /// is approved (and now used by this request); otherwise the answer
    /// (FailedPrecondition "approval pending", PermissionDenied).
    async fn begin_approval(
        &self,
        agent: &SpiffeId,
        b: &crate::tasks::BeginApproval,
    ) -> Result<String, Status> {
        let asked: Vec<String> = b
            .needs
            .iter()
            .map(|a| format!("{} asks {}", a.policy_id, a.approvers))
            .collect();
        let ask = crate::approvals::Ask {
            principal: b.spiffe_id.clone(),
            action: "BeginTask".into(),
            tool: b.task_type.clone(),
            arguments_json: b.arguments_json.clone(),
            needs: b
                .needs
                .iter()
                .map(|a| (a.policy_id.clone(), a.approvers.clone(), a.ttl))
                .collect(),
            node: agent.to_string(),
            begin: Some(crate::approvals::BeginFacts {
                on_behalf_of: b.on_behalf_of.clone(),
                intent: b.intent.clone(),
            }),
            ..Default::default()
        };
        let v = self.approvals.ask(&ask).await?;
        match v.state {
            crate::approvals::State::Used => Ok(v.id),
            crate::approvals::State::Pending => Err(Status::failed_precondition(format!(
                "approval pending: BeginTask {} waits for a person's approval (approval {}; {}); begin the same task again once approved",
                b.task_type,
                v.id,
                asked.join("; ")
            ))),
            _ => Err(Status::permission_denied(if v.answered_by.is_empty() {
                format!("task denied: {}", v.reason)
            } else {
                format!(
                    "task denied: approval {} denied by {}{}",
                    v.id,
                    v.answered_by,
                    if v.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", v.reason)
                    }
                )
            })),
        }
    }

    /// `sign task svid` (see the `Node` service).
    pub(super) async fn sign_task_svid_rpc(
        &self,
        req: Request<SignTaskSvidRequest>,
    ) -> Result<Response<SignTaskSvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let minted = self
            .tasks
            .sign(
                &agent.spiffe_id,
                &req.task_id,
                &req.csr,
                &req.jwt_audiences,
                &req.exe_sha256,
            )
            .await?;
        if let Ok(record) = self.tasks.get(&req.task_id).await {
            self.audited_task(&agent.spiffe_id, &record, minted.svid.as_ref(), false)
                .await?;
        }
        let (jwt, jwt_expires_at) = minted.jwt.unwrap_or_default();
        Ok(Response::new(SignTaskSvidResponse {
            svid: minted.svid.map(task_svid_msg),
            jwt,
            jwt_expires_at: i64::try_from(jwt_expires_at).unwrap_or(i64::MAX),
        }))
    }

    /// `end task` (see the `Node` service).
    pub(super) async fn end_task_rpc(
        &self,
        req: Request<EndTaskRequest>,
    ) -> Result<Response<EndTaskResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let reason = if req.reason.is_empty() {
            "ended".to_owned()
        } else {
            req.reason.chars().take(128).collect()
        };
        self.tasks
            .end(
                Some(&agent.spiffe_id),
                &req.task_id,
                lanyard_core::task::TaskState::Ended,
                &reason,
            )
            .await?;
        Ok(Response::new(EndTaskResponse {}))
    }

    /// `delegate task` (see the `Node` service).
    pub(super) async fn delegate_task_rpc(
        &self,
        req: Request<DelegateTaskRequest>,
    ) -> Result<Response<DelegateTaskResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let caller = Caller {
            agent_id: Some(agent.spiffe_id.clone()),
            selectors: req.selectors,
            exe_path: req.exe_path,
            exe_sha256: req.exe_sha256,
        };
        let tools = req.tools.clone();
        let (token, expires_at) = self
            .tasks
            .delegate(
                &agent.spiffe_id,
                &req.task_id,
                &req.to_spiffe_id,
                req.tools,
                lanyard_proto::convert::ttl_seconds(req.ttl_seconds)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                &caller,
            )
            .await?;
        self.audited(
            self.audit
                .event(Kind::TaskDelegated)
                .actor(agent.spiffe_id.to_string())
                .subject(req.to_spiffe_id.clone())
                .node(agent.spiffe_id.to_string())
                .task(req.task_id.clone())
                .details(serde_json::json!({"tools": tools, "token_expires_at": expires_at})),
        )
        .await?;
        Ok(Response::new(DelegateTaskResponse {
            token,
            expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
        }))
    }
}
