//! A call a policy allows only once a person approves: the decision point
//! never decides it alone. It asks the server, which owns every approval
//! request (opened, answered, used once); a server that cannot be asked
//! means deny, never allow.

use std::time::Duration;

use lanyard_proto::server::{ApprovalNeed, RequestApprovalRequest};

use super::{DecisionRecord, Pdp, ToolCall, Verdict};

/// Longest a decision point holds a call for its approval.
pub const MAX_APPROVAL_WAIT: Duration = Duration::from_secs(60);

impl Pdp {
    /// Turns an allowed verdict whose permits want approval into the
    /// server's answer: allowed (the approval used by this call), pending,
    /// or denied.
    pub(super) async fn approve(
        &self,
        mut verdict: Verdict,
        r: &DecisionRecord,
        req: &ToolCall,
    ) -> Verdict {
        let needs: Vec<ApprovalNeed> = verdict
            .approvals
            .iter()
            .map(|a| ApprovalNeed {
                policy_id: a.policy_id.clone(),
                approvers: a.approvers.to_string(),
                ttl_seconds: a
                    .ttl
                    .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            })
            .collect();
        let asked: Vec<String> = verdict
            .approvals
            .iter()
            .map(|a| format!("{} asks {}", a.policy_id, a.approvers))
            .collect();
        let wait = req.wait.min(MAX_APPROVAL_WAIT);
        let answer = self
            .owner
            .request_approval(RequestApprovalRequest {
                task_id: r.task_id.clone(),
                principal: r.principal.clone(),
                action: "UseTool".into(),
                tool: r.tool.clone(),
                resource: r.resource.clone(),
                arguments_json: req.context_json.clone(),
                needs,
                approval_id: req.approval_id.clone(),
                wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
                enforcement_point: r.enforcement_point.clone(),
                decision_id: r.decision_id.clone(),
            })
            .await;
        // Neither a pending request nor a person's "no" is the agent
        // misbehaving: they do not count towards quarantine.
        verdict.counts = false;
        match answer {
            Ok(a) if a.state == "used" => {
                verdict.reason = format!(
                    "approved by {} (approval {}){}",
                    a.answered_by,
                    a.approval_id,
                    if a.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", a.reason)
                    }
                );
                verdict.approval_id = a.approval_id;
                verdict.counts = true;
            }
            Ok(a) if a.state == "pending" => {
                verdict.allow = false;
                verdict.pending = true;
                verdict.reason = format!(
                    "waiting for a person's approval (approval {}; {})",
                    a.approval_id,
                    asked.join("; ")
                );
                verdict.approval_id = a.approval_id;
                verdict.approval_expires_at = a.expires_at;
            }
            Ok(a) => {
                verdict.allow = false;
                verdict.reason = if a.approval_id.is_empty() {
                    a.reason
                } else if a.answered_by.is_empty() {
                    format!("approval {}: {}", a.approval_id, a.reason)
                } else {
                    format!(
                        "approval {} denied by {}{}",
                        a.approval_id,
                        a.answered_by,
                        if a.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", a.reason)
                        }
                    )
                };
                verdict.approval_id = a.approval_id;
            }
            Err(e) => {
                tracing::warn!(err = %e, tool = %r.tool, task_id = %r.task_id, "a call needs approval and the server cannot be asked; denying");
                verdict.allow = false;
                verdict.reason = format!(
                    "needs a person's approval ({}), and the server cannot be asked: {e}",
                    asked.join("; ")
                );
            }
        }
        verdict
    }
}
