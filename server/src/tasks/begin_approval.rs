//! A task a policy holds for a person's approval (`@approval` on a
//! `BeginTask` permit): what the approvers are shown and what the approval
//! is bound to, the request exactly as asked.

use lanyard_core::RegistrationEntry;
use lanyard_core::task::TaskRequest;
use lanyard_policy::Approval;

use super::decide::BeginVerdict;

/// What a BeginTask waiting for approval asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginApproval {
    /// The identity the task would be begun under.
    pub spiffe_id: String,
    /// Task type.
    pub task_type: String,
    /// Whom it would act for.
    pub on_behalf_of: Option<String>,
    /// Its stated intent.
    pub intent: String,
    /// The permits that ask for approval.
    pub needs: Vec<Approval>,
    /// The request as the approvers see it and the approval binds (a JSON
    /// object: type, tools, destinations, sensitivity, lifetime, on behalf
    /// of, intent, parent).
    pub arguments_json: String,
}

impl BeginApproval {
    /// The request `verdict` holds for approval under `entry`.
    pub fn new(entry: &RegistrationEntry, verdict: &BeginVerdict, r: &TaskRequest) -> Self {
        let arguments = serde_json::json!({
            "task_type": r.task_type,
            "tools": r.tools,
            "destinations": r.destinations,
            "data_sensitivity": r.data_sensitivity,
            "ttl_seconds": r.ttl.as_secs(),
            "on_behalf_of": r.on_behalf_of,
            "intent": r.intent,
            "parent_task_id": r.parent_task_id.as_ref().map(ToString::to_string),
        });
        Self {
            spiffe_id: entry.spiffe_id.to_string(),
            task_type: r.task_type.clone(),
            on_behalf_of: r.on_behalf_of.clone(),
            intent: r.intent.clone(),
            needs: verdict.task_approval.clone(),
            arguments_json: arguments.to_string(),
        }
    }
}
