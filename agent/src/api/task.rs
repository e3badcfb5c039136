//! `lanyard.task.v1.TaskIdentity` on the agent's socket: BeginTask,
//! EndTask, ListTasks and DelegateTask for the calling process. The caller
//! is attested like a Workload API caller; a task belongs to the process
//! instance that began it, and only that process sees, ends or delegates it.

use std::sync::Arc;

use lanyard_core::task::TaskRequest;
use lanyard_proto::task::task_identity_server::TaskIdentity;
use lanyard_proto::task::{
    AuthorizeToolCallRequest, AuthorizeToolCallResponse, BeginTaskRequest, BeginTaskResponse,
    DelegateTaskRequest, DelegateTaskResponse, DeniedTool, EndTaskRequest, EndTaskResponse,
    ListTasksRequest, ListTasksResponse, RecordToolCallsRequest, RecordToolCallsResponse, Task,
};
use lanyard_proto::types;
use lanyard_proto::workload::{Jwtsvid, X509svid};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::caller::{Caller, Callers};
use super::status::WorkloadError;
use crate::cache::Snapshot;
use crate::identity::{ActiveTask, BeginRequest, CommandError, IdentityHandle, TaskOwner};
use crate::pdp::{CallCredential, PdpError, ToolCall};
use crate::workload_scope::WorkloadScope;

/// Most tasks one process instance may hold at once.
pub const MAX_TASKS_PER_PROCESS: usize = 64;

/// The TaskIdentity service.
#[derive(Clone)]
pub struct TaskApi {
    owner: IdentityHandle,
    callers: Arc<Callers>,
    pdp: Arc<crate::pdp::Pdp>,
}

impl TaskApi {
    /// The service over the identity owner.
    pub fn new(owner: IdentityHandle, callers: Arc<Callers>, pdp: Arc<crate::pdp::Pdp>) -> Self {
        Self {
            owner,
            callers,
            pdp,
        }
    }

    async fn attest<T>(&self, req: &Request<T>) -> Result<(Caller, TaskOwner), Status> {
        attest_task_caller(&self.owner, &self.callers, req).await
    }
}

/// Attests a caller of a task service: its selectors, refused when
/// quarantined, and the process instance it is.
pub(super) async fn attest_task_caller<T>(
    owner: &IdentityHandle,
    callers: &Callers,
    req: &Request<T>,
) -> Result<(Caller, TaskOwner), Status> {
    let snap = owner.snapshot();
    let caller = callers.attest(req, snap.entries.uses_sha256()).await?;
    if let Some(q) = owner
        .snapshot()
        .quarantine_of(&caller.selectors, caller.conn.instance.as_deref())
    {
        return Err(WorkloadError::Quarantined(q.reason.clone()).into());
    }
    let task_owner = caller
        .conn
        .instance
        .as_ref()
        .and_then(|i| TaskOwner::of(i, WorkloadScope::of(&caller.selectors)))
        .ok_or_else(|| {
            Status::failed_precondition(
                "the calling process cannot be identified (no PID and start time)",
            )
        })?;
    Ok((caller, task_owner))
}

pub(super) fn command_status(e: CommandError) -> Status {
    match e {
        // The server's decision (InvalidArgument, PermissionDenied with the
        // deciding policies, ...) reaches the workload as is.
        CommandError::Server(s) if s.code() == tonic::Code::Internal => {
            Status::unavailable("the server failed; retry")
        }
        CommandError::Server(s) => Status::new(s.code(), s.message().to_owned()),
        CommandError::NotConnected | CommandError::Stopped => Status::unavailable(e.to_string()),
        CommandError::NoTask(_) => Status::not_found(e.to_string()),
        CommandError::BadAnswer(_) => {
            tracing::error!(err = %e, "task answer refused");
            Status::internal(e.to_string())
        }
    }
}

/// Checks what the agent can check alone (everything but the sensitivity
/// levels and the ceilings, which are the server's), so that an absurd
/// request never reaches the server; the request as the domain holds it.
fn precheck(spec: types::TaskSpec, jwt_audiences: &[String]) -> Result<TaskRequest, Status> {
    if spec.data_sensitivity.len() > 64 {
        return Err(Status::invalid_argument("data_sensitivity is too long"));
    }
    if !lanyard_core::jwt::audiences_ok(jwt_audiences) {
        return Err(WorkloadError::BadAudience.into());
    }
    if spec.delegation_token.len() > 256 {
        return Err(Status::invalid_argument("delegation_token is too long"));
    }
    lanyard_proto::convert::task_request(spec)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .check_shape()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// An AuthorizeToolCall as the decision point takes it.
#[allow(clippy::result_large_err)]
fn tool_call(r: AuthorizeToolCallRequest) -> Result<ToolCall, Status> {
    use lanyard_proto::task::authorize_tool_call_request::Credential;
    let wait = std::time::Duration::from_millis(u64::from(r.wait_ms));
    if wait > crate::pdp::MAX_APPROVAL_WAIT {
        return Err(Status::invalid_argument(format!(
            "wait_ms: at most {}",
            crate::pdp::MAX_APPROVAL_WAIT.as_millis()
        )));
    }
    if r.approval_id.len() > 64 || !r.approval_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::invalid_argument(
            "approval_id: an approval ID as AuthorizeToolCall returned it",
        ));
    }
    Ok(ToolCall {
        tool: r.tool,
        resource: r.resource,
        context_json: r.context_json,
        credential: r.credential.map(|c| match c {
            Credential::X509Chain(c) => CallCredential::X509Chain(c.certs),
            Credential::JwtSvid(t) => CallCredential::Jwt(t),
            Credential::Wit(w) => CallCredential::Wit(crate::pdp::WitCall {
                wit: w.wit_svid,
                wpt: w.wpt,
                txn_token: w.txn_token,
                other_tokens: w.other_tokens.into_iter().collect(),
            }),
        }),
        target_uri: r.target_uri,
        audience: r.audience,
        probe: r.probe,
        outcome_follows: r.outcome_follows,
        approval_id: r.approval_id,
        wait,
    })
}

fn task_msg(t: &ActiveTask) -> Task {
    let g = &t.record.grant;
    Task {
        task_id: g.task_id.to_string(),
        spiffe_id: g.spiffe_id.to_string(),
        task_type: g.task_type.clone(),
        granted_tools: g.tools.clone(),
        data_sensitivity: g.data_sensitivity.clone(),
        expires_at: i64::try_from(g.not_after).unwrap_or(i64::MAX),
        on_behalf_of: g.on_behalf_of.clone().unwrap_or_default(),
        parent_task_id: g
            .parent_task_id()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// Most outcomes in one RecordToolCalls.
const MAX_OUTCOMES: usize = 1000;

/// The SPIFFE ID of the caller's enforcement-point entry. Only an
/// enforcement point may ask for decisions and record outcomes:
/// certificate chains are public, and anyone else could rack up denials
/// against a victim's task.
fn enforcement_point(snap: &Snapshot, caller: &Caller) -> Result<String, Status> {
    snap.entries_for(&caller.selectors)
        .into_iter()
        .find(|e| e.enforcement_point)
        .map(|e| e.spiffe_id.to_string())
        .ok_or_else(|| {
            Status::permission_denied(
                "the caller is not an enforcement point (its entry needs --enforcement-point)",
            )
        })
}

fn pdp_status(e: PdpError) -> Status {
    match e {
        PdpError::Invalid(m) => Status::invalid_argument(m),
        PdpError::Refused(m) => Status::permission_denied(m),
        PdpError::NotFound(m) => Status::not_found(m),
        PdpError::Unavailable(m) => Status::unavailable(m),
    }
}

/// The caller's own active task `id`.
fn own_task(snap: &Snapshot, owner: &TaskOwner, id: &str) -> Result<Arc<ActiveTask>, Status> {
    snap.tasks
        .iter()
        .find(|t| t.id() == id && t.owner.same_process(owner))
        .cloned()
        .ok_or_else(|| Status::not_found(format!("task {id:?} not found among the caller's tasks")))
}

/// Whether `caller` has every selector of `task`'s entry (not only the
/// boundary ones BeginTask matched on).
pub(super) fn matches_in_full(snap: &Snapshot, task: &ActiveTask, caller: &Caller) -> bool {
    snap.entries
        .get(&task.record.entry_id)
        .is_some_and(|e| e.selectors.iter().all(|s| caller.selectors.contains(s)))
}

pub(super) fn selector_value<'a>(caller: &'a Caller, prefix: &str) -> &'a str {
    caller
        .selectors
        .iter()
        .find_map(|s| {
            (s.kind() == "unix")
                .then(|| s.value().strip_prefix(prefix))
                .flatten()
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TaskIdentity for TaskApi {
    #[instrument(skip_all)]
    async fn begin_task(
        &self,
        req: Request<BeginTaskRequest>,
    ) -> Result<Response<BeginTaskResponse>, Status> {
        let (caller, owner) = self.attest(&req).await?;
        let r = req.into_inner();
        let spec = types::TaskSpec {
            task_type: r.task_type,
            intent: r.intent,
            tools: r.tools,
            destinations: r.destinations,
            data_sensitivity: r.data_sensitivity,
            ttl_seconds: r.ttl_seconds,
            on_behalf_of: r.on_behalf_of,
            allow_partial: r.allow_partial,
            parent_task_id: r.parent_task_id,
            delegation_token: r.delegation_token,
        };
        let spec = precheck(spec, &r.jwt_audiences)?;
        let snap = self.owner.snapshot();
        let held = snap
            .tasks
            .iter()
            .filter(|t| t.owner.same_process(&owner))
            .count();
        if held >= MAX_TASKS_PER_PROCESS {
            return Err(Status::resource_exhausted(format!(
                "this process already holds {held} tasks (at most {MAX_TASKS_PER_PROCESS}); end some first"
            )));
        }
        // Every identity the caller may begin a task under (or those of the
        // SPIFFE ID it named), in serving order: the server decides which
        // one permits the task, never whichever comes first.
        let mut entries: Vec<_> = snap
            .entries
            .for_task(&caller.selectors)
            .into_iter()
            .filter(|e| r.spiffe_id.is_empty() || e.spiffe_id.as_str() == r.spiffe_id)
            .cloned()
            .collect();
        // No task under an identity a quarantine withholds from this
        // caller's workload.
        let mut withheld = None;
        entries.retain(
            |e| match snap.withheld(e.spiffe_id.as_str(), owner.scope.as_ref()) {
                Some(q) => {
                    withheld.get_or_insert_with(|| q.reason.clone());
                    false
                }
                None => true,
            },
        );
        if let (true, Some(reason)) = (entries.is_empty(), withheld) {
            return Err(WorkloadError::Quarantined(reason).into());
        }
        if entries.is_empty() {
            return Err(if !snap.synced {
                WorkloadError::NotSynced.into()
            } else if r.spiffe_id.is_empty() {
                caller.no_identity().into()
            } else {
                WorkloadError::NotYours(r.spiffe_id).into()
            });
        };
        let begun = self
            .owner
            .begin_task(BeginRequest {
                entries,
                spec,
                owner,
                selectors: caller.selectors.iter().map(ToString::to_string).collect(),
                exe_path: selector_value(&caller, "path:").to_owned(),
                exe_sha256: selector_value(&caller, "sha256:").to_owned(),
                jwt_audiences: r.jwt_audiences,
            })
            .await
            .map_err(command_status)?;
        caller.recheck()?;
        let t = &begun.task;
        let snap = self.owner.snapshot();
        // The credentials themselves go only to a caller that matches the
        // entry in full now (a `task run` that will exec into the entry's
        // program gets them through the Workload API after the exec).
        let full_match = matches_in_full(&snap, t, &caller);
        let x509_svid = t.svid.as_ref().filter(|_| full_match).map(|s| X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: s.chain.concat(),
            x509_svid_key: s.key_pkcs8.clone(),
            bundle: snap.bundle.concat(),
            hint: t.hint(),
        });
        Ok(Response::new(BeginTaskResponse {
            task_id: t.id().to_owned(),
            granted_tools: t.record.grant.tools.clone(),
            denied: t
                .record
                .denied
                .iter()
                .map(|(tool, reason)| DeniedTool {
                    tool: tool.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            expires_at: i64::try_from(t.record.grant.not_after).unwrap_or(i64::MAX),
            x509_svid,
            jwt_svid: begun.jwt.filter(|_| full_match).map(|svid| Jwtsvid {
                spiffe_id: t.record.grant.spiffe_id.to_string(),
                svid,
                hint: t.hint(),
            }),
        }))
    }

    #[instrument(skip_all)]
    async fn end_task(
        &self,
        req: Request<EndTaskRequest>,
    ) -> Result<Response<EndTaskResponse>, Status> {
        let (_, owner) = self.attest(&req).await?;
        let id = req.into_inner().task_id;
        own_task(&self.owner.snapshot(), &owner, &id)?;
        self.owner
            .end_task(&id, "ended")
            .await
            .map_err(command_status)?;
        Ok(Response::new(EndTaskResponse {}))
    }

    #[instrument(skip_all)]
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let (_, owner) = self.attest(&req).await?;
        let snap = self.owner.snapshot();
        let tasks = snap
            .tasks
            .iter()
            .filter(|t| t.owner.same_process(&owner))
            .map(|t| task_msg(t))
            .collect();
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    #[instrument(skip_all)]
    async fn delegate_task(
        &self,
        req: Request<DelegateTaskRequest>,
    ) -> Result<Response<DelegateTaskResponse>, Status> {
        let (caller, owner) = self.attest(&req).await?;
        let r = req.into_inner();
        let snap = self.owner.snapshot();
        let task = own_task(&snap, &owner, &r.task_id)?;
        // BeginTask matches only boundary selectors (so `task run` can exec
        // into the entry's program); handing the task's tools on takes the
        // entry in full, as its credentials do.
        if !matches_in_full(&snap, &task, &caller) {
            return Err(Status::permission_denied(
                "the caller does not match its task's entry in full (its program differs): only the entry's program may delegate",
            ));
        }
        let (token, expires_at) = self
            .owner
            .delegate_task(lanyard_proto::server::DelegateTaskRequest {
                task_id: r.task_id,
                to_spiffe_id: r.to_spiffe_id,
                tools: r.tools,
                ttl_seconds: r.ttl_seconds,
                selectors: caller.selectors.iter().map(ToString::to_string).collect(),
                exe_path: selector_value(&caller, "path:").to_owned(),
                exe_sha256: selector_value(&caller, "sha256:").to_owned(),
            })
            .await
            .map_err(command_status)?;
        Ok(Response::new(DelegateTaskResponse {
            delegation_token: token,
            expires_at,
        }))
    }

    #[instrument(skip_all)]
    async fn authorize_tool_call(
        &self,
        req: Request<AuthorizeToolCallRequest>,
    ) -> Result<Response<AuthorizeToolCallResponse>, Status> {
        let (caller, _) = self.attest(&req).await?;
        let ep = enforcement_point(&self.owner.snapshot(), &caller)?;
        let d = self
            .pdp
            .authorize(&ep, tool_call(req.into_inner())?)
            .await
            .map_err(pdp_status)?;
        caller.recheck()?;
        Ok(Response::new(AuthorizeToolCallResponse {
            allow: d.allow,
            reason: d.reason,
            policy_ids: d.policy_ids,
            decision_id: d.decision_id,
            task_id: d.task_id,
            principal: d.principal,
            pending: d.pending,
            approval_id: d.approval_id,
            approval_expires_at: d.approval_expires_at,
        }))
    }

    #[instrument(skip_all)]
    async fn record_tool_calls(
        &self,
        req: Request<RecordToolCallsRequest>,
    ) -> Result<Response<RecordToolCallsResponse>, Status> {
        let (caller, _) = self.attest(&req).await?;
        let ep = enforcement_point(&self.owner.snapshot(), &caller)?;
        let r = req.into_inner();
        if r.outcomes.len() > MAX_OUTCOMES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_OUTCOMES} outcomes per call"
            )));
        }
        let mut unknown = vec![];
        for o in r.outcomes {
            let outcome = crate::pdp::Outcome {
                upstream: o.upstream,
                method: o.method,
                status: o.status,
                bytes_in: o.bytes_in,
                bytes_out: o.bytes_out,
                latency: std::time::Duration::from_micros(o.latency_us),
                error: o.error,
            };
            match self.pdp.record_outcome(&ep, &o.decision_id, &outcome) {
                Ok(()) => {}
                Err(PdpError::NotFound(_)) => unknown.push(o.decision_id),
                Err(e) => return Err(pdp_status(e)),
            }
        }
        Ok(Response::new(RecordToolCallsResponse { unknown }))
    }
}
