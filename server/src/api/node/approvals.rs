//! `RequestApproval`: a node's decision point asks about a call a policy
//! holds for a person's approval.

#[allow(clippy::wildcard_imports)]
use super::*;

use std::time::Duration;

use lanyard_proto::server::{RequestApprovalRequest, RequestApprovalResponse};

use crate::approvals::{Ask, MAX_WAIT};

/// The request as the domain takes it, or InvalidArgument.
fn ask(agent: &SpiffeId, r: RequestApprovalRequest) -> Result<Ask, Status> {
    let mut needs = Vec::with_capacity(r.needs.len());
    for n in r.needs {
        let who = lanyard_policy::Approvers::parse(&n.approvers)
            .map_err(|e| Status::invalid_argument(format!("needs: {e}")))?;
        let ttl = (n.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(n.ttl_seconds)));
        needs.push((n.policy_id, who, ttl));
    }
    if needs.len() > 64 {
        return Err(Status::invalid_argument("needs: at most 64 permits"));
    }
    let wait = Duration::from_millis(u64::from(r.wait_ms));
    if wait > MAX_WAIT {
        return Err(Status::invalid_argument(format!(
            "wait_ms: at most {}",
            MAX_WAIT.as_millis()
        )));
    }
    Ok(Ask {
        task_id: r.task_id,
        principal: r.principal,
        action: r.action,
        tool: r.tool,
        resource: r.resource,
        arguments_json: r.arguments_json,
        needs,
        approval_id: Some(r.approval_id).filter(|s| !s.is_empty()),
        wait,
        enforcement_point: r.enforcement_point,
        node: agent.to_string(),
        decision_id: r.decision_id,
        begin: None,
    })
}

impl NodeApi {
    /// `request approval` (see the `Node` service).
    pub(super) async fn request_approval_rpc(
        &self,
        req: Request<RequestApprovalRequest>,
    ) -> Result<Response<RequestApprovalResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let ask = ask(&agent.spiffe_id, req.into_inner())?;
        let v = self.approvals.ask(&ask).await?;
        Ok(Response::new(RequestApprovalResponse {
            state: v.state.as_str().into(),
            approval_id: v.id,
            reason: v.reason,
            answered_by: v.answered_by,
            expires_at: i64::try_from(v.expires_at).unwrap_or(i64::MAX),
        }))
    }
}
