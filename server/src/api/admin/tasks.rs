//! The admin API's policy and task calls (the `Admin` trait impl in
//! the service (`mod.rs`) forwards here): policy set/show/check/test, task
//! list/show/revoke.

use std::time::Duration;

use lanyard_core::task::{TaskRequest, TaskState};
use lanyard_proto::admin::{
    CheckPolicyRequest, CheckPolicyResponse, GetPolicyRequest, ListTasksRequest, ListTasksResponse,
    SetPolicyRequest, TaskRequest as TaskIdRequest, TestPolicyRequest, TestPolicyResponse,
    ToolDecision,
};
use lanyard_proto::convert::spiffe_id;
use lanyard_proto::types;
use tonic::Status;

use super::AdminApi;
#[allow(clippy::wildcard_imports)]
use super::*;
use crate::policy::{LoadedPolicy, Policies, PolicySetError};
use crate::tasks::{Caller, TaskServiceError};

impl From<PolicySetError> for Status {
    fn from(e: PolicySetError) -> Self {
        match &e {
            PolicySetError::Invalid(_) => Status::invalid_argument(e.to_string()),
            PolicySetError::NoVersion(_) | PolicySetError::None(_) => {
                Status::not_found(e.to_string())
            }
            PolicySetError::Store(_) => {
                tracing::error!(err = %e, "policy store error");
                Status::internal("internal error")
            }
        }
    }
}

fn source(name: &str) -> &str {
    if name.is_empty() { "policy" } else { name }
}

fn policy_info(record: &crate::store::PolicyRecord, count: usize) -> types::PolicyInfo {
    types::PolicyInfo {
        version: record.version,
        shadow: record.shadow,
        text: record.text.clone(),
        sha256: hex::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, record.text.as_bytes()).as_ref(),
        ),
        created_at: i64::try_from(record.created_at).unwrap_or(i64::MAX),
        policy_count: u32::try_from(count).unwrap_or(u32::MAX),
    }
}

fn loaded_info(l: &LoadedPolicy) -> types::PolicyInfo {
    policy_info(&l.record, l.book.len())
}

impl AdminApi {
    pub(crate) async fn set_policy_impl(
        &self,
        r: SetPolicyRequest,
    ) -> Result<types::PolicyInfo, Status> {
        let loaded = self
            .policies
            .set(&r.text, r.shadow, source(&r.source_name))
            .await?;
        Ok(loaded_info(&loaded))
    }

    pub(crate) async fn get_policy_impl(
        &self,
        r: GetPolicyRequest,
    ) -> Result<types::PolicyInfo, Status> {
        let (record, count) = self.policies.get(r.version, r.shadow).await?;
        Ok(policy_info(&record, count))
    }

    pub(crate) fn check_policy_impl(
        &self,
        r: CheckPolicyRequest,
    ) -> Result<CheckPolicyResponse, Status> {
        let n = Policies::check(&r.text, source(&r.source_name))?;
        Ok(CheckPolicyResponse {
            policy_count: u32::try_from(n).unwrap_or(u32::MAX),
        })
    }

    pub(crate) fn test_policy_impl(
        &self,
        r: TestPolicyRequest,
    ) -> Result<TestPolicyResponse, Status> {
        let id = spiffe_id("spiffe_id", &r.spiffe_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let entry = self
            .registry
            .list(None, None)
            .into_iter()
            .find(|e| e.spiffe_id == id)
            .ok_or_else(|| Status::not_found(format!("no entry issues {id}")))?;
        let extra = match r.context_json.trim() {
            "" => serde_json::Map::new(),
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => return Err(Status::invalid_argument("--context must be a JSON object")),
                Err(e) => return Err(Status::invalid_argument(format!("--context: {e}"))),
            },
        };
        let request = TaskRequest {
            task_type: r.task_type,
            intent: r.intent,
            tools: r.tools,
            destinations: r.destinations,
            data_sensitivity: r.data_sensitivity,
            ttl: Duration::from_secs(if r.ttl_seconds > 0 {
                r.ttl_seconds.unsigned_abs()
            } else {
                300
            }),
            on_behalf_of: Some(r.on_behalf_of).filter(|s| !s.is_empty()),
            ..Default::default()
        };
        let exe_path = entry
            .selectors
            .iter()
            .find_map(|s| {
                s.value()
                    .strip_prefix("path:")
                    .filter(|_| s.kind() == "unix")
            })
            .unwrap_or_default()
            .to_owned();
        let caller = Caller {
            agent_id: Some(entry.parent_id.clone()),
            selectors: entry.selectors.iter().map(ToString::to_string).collect(),
            exe_path,
            exe_sha256: String::new(),
        };
        let (verdict, version) = self.tasks.dry_run(&entry, &caller, request, extra)?;
        Ok(TestPolicyResponse {
            task_approval: verdict
                .task_approval
                .iter()
                .map(|a| a.approvers.to_string())
                .collect(),
            task_allowed: verdict.task_allowed,
            policy_ids: verdict.policy_ids.clone(),
            reasons: if verdict.task_allowed {
                vec![]
            } else {
                vec![verdict.task_reason.clone()]
            },
            tools: verdict
                .tools
                .into_iter()
                .map(|t| ToolDecision {
                    tool: t.tool,
                    allowed: t.allowed,
                    policy_ids: t.policy_ids,
                    reasons: if t.reason.is_empty() {
                        vec![]
                    } else {
                        vec![t.reason]
                    },
                    approval: t.approval,
                })
                .collect(),
            entry_id: entry.id.to_string(),
            policy_version: version,
        })
    }

    pub(crate) async fn list_tasks_impl(
        &self,
        r: ListTasksRequest,
    ) -> Result<ListTasksResponse, Status> {
        let parse = |field, s: &str| {
            if s.is_empty() {
                Ok(None)
            } else {
                spiffe_id(field, s)
                    .map(Some)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            }
        };
        let sid = parse("spiffe_id", &r.spiffe_id)?;
        let agent = parse("agent_id", &r.agent_id)?;
        let tasks = self.tasks.list(sid.as_ref(), agent.as_ref(), r.all).await?;
        Ok(ListTasksResponse {
            tasks: tasks.iter().map(types::TaskInfo::from).collect(),
        })
    }

    pub(crate) async fn get_task_impl(&self, r: TaskIdRequest) -> Result<types::TaskInfo, Status> {
        let mut t = self.tasks.get(&r.task_id).await?;
        t.state = t.state_at(lanyard_core::clock::unix_secs(self.clock.now()));
        Ok(types::TaskInfo::from(&t))
    }

    pub(crate) async fn revoke_task_impl(
        &self,
        r: TaskIdRequest,
        actor: &str,
    ) -> Result<types::TaskInfo, Status> {
        let t = self
            .tasks
            .end_as(
                actor,
                None,
                &r.task_id,
                TaskState::Revoked,
                "revoked by an operator",
            )
            .await
            .map_err(|e| match e {
                TaskServiceError::Invalid(_) => Status::invalid_argument(e.to_string()),
                other => Status::from(other),
            })?;
        Ok(types::TaskInfo::from(&t))
    }
}

impl AdminApi {
    pub(super) async fn list_tasks_rpc(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.list_tasks_impl(req.into_inner())
            .await
            .map(Response::new)
    }

    pub(super) async fn get_task_rpc(
        &self,
        req: Request<lanyard_proto::admin::TaskRequest>,
    ) -> Result<Response<types::TaskInfo>, Status> {
        self.get_task_impl(req.into_inner())
            .await
            .map(Response::new)
    }

    pub(super) async fn revoke_task_rpc(
        &self,
        req: Request<lanyard_proto::admin::TaskRequest>,
    ) -> Result<Response<types::TaskInfo>, Status> {
        let actor = admin_actor(&req);
        self.revoke_task_impl(req.into_inner(), &actor)
            .await
            .map(Response::new)
    }
}
