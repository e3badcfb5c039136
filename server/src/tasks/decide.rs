//! One task decision: the entry's ceilings always, then the Cedar policy set
//! when one is loaded (both must permit). Each tool is its own `UseTool`
//! decision, so a grant can be narrowed.

use std::collections::HashMap;

use lanyard_core::RegistrationEntry;
use lanyard_core::SpiffeId;
use lanyard_core::task::{SensitivityLevels, TaskRequest, check_ceilings};
use lanyard_policy::{Action, Decision, PolicyBook, Principal, Request, TaskContext};

/// What the agent attested about the workload asking.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The agent (node) it runs on.
    pub agent_id: Option<SpiffeId>,
    /// Its attested selectors.
    pub selectors: Vec<String>,
    /// Its executable path, or empty.
    pub exe_path: String,
    /// Its executable's SHA-256, or empty.
    pub exe_sha256: String,
}

/// The verdict on one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolVerdict {
    /// The tool.
    pub tool: String,
    /// Permitted.
    pub allowed: bool,
    /// The policies that decided.
    pub policy_ids: Vec<String>,
    /// Why, for a denial: one line.
    pub reason: String,
    /// Whom a call needs approval from, when an `@approval` permit
    /// matches (at call time, with the call's arguments, this may differ).
    pub approval: Vec<String>,
}

/// The verdict on a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginVerdict {
    /// The task itself (type, TTL, sensitivity) is permitted.
    pub task_allowed: bool,
    /// Why not, when not.
    pub task_reason: String,
    /// The policies that decided the task.
    pub policy_ids: Vec<String>,
    /// One verdict per requested tool.
    pub tools: Vec<ToolVerdict>,
    /// A deciding `forbid` carries `@quarantine`.
    pub quarantine: bool,
    /// The task is permitted once a person approves: the `@approval`
    /// permits that ask (empty: no approval needed).
    pub task_approval: Vec<lanyard_policy::Approval>,
}

impl BeginVerdict {
    /// The denied tools with their reasons.
    pub fn denied(&self) -> Vec<(String, String)> {
        self.tools
            .iter()
            .filter(|t| !t.allowed)
            .map(|t| (t.tool.clone(), t.reason.clone()))
            .collect()
    }

    /// The permitted tools.
    pub fn granted(&self) -> Vec<String> {
        self.tools
            .iter()
            .filter(|t| t.allowed)
            .map(|t| t.tool.clone())
            .collect()
    }
}

/// The text of a Cedar denial: the deciding policies and their reasons, or
/// that nothing permitted.
pub(crate) fn denial_text(action: Action, resource: &str, d: &Decision) -> String {
    if d.policy_ids.is_empty() {
        return format!("no policy permits {} on {resource:?}", action.name());
    }
    let mut s = format!("denied by policy {}", d.policy_ids.join(", "));
    if !d.reasons.is_empty() {
        s.push_str(": ");
        s.push_str(&d.reasons.join("; "));
    }
    s
}

/// The Cedar principal for a caller of `entry`.
pub(crate) fn principal(entry: &RegistrationEntry, caller: &Caller) -> Principal {
    Principal {
        spiffe_id: entry.spiffe_id.to_string(),
        node: caller
            .agent_id
            .as_ref()
            .unwrap_or(&entry.parent_id)
            .to_string(),
        selectors: caller.selectors.clone(),
        exe_path: caller.exe_path.clone(),
        exe_sha256: caller.exe_sha256.clone(),
        // The agent hashes the program only when an entry selects on it,
        // and a path can be unknown: a policy reading either then fails
        // closed instead of comparing with a blank.
        unknown: lanyard_policy::Unknown {
            exe_path: caller.exe_path.is_empty(),
            exe_sha256: caller.exe_sha256.is_empty(),
            ..lanyard_policy::Unknown::none()
        },
    }
}

/// Decides a validated request under `entry`'s ceilings and, when given,
/// a policy set.
pub fn decide_begin(
    entry: &RegistrationEntry,
    levels: &SensitivityLevels,
    book: Option<&PolicyBook>,
    caller: &Caller,
    request: &TaskRequest,
    ctx: &TaskContext,
) -> BeginVerdict {
    let ceilings = check_ceilings(&entry.task_limits, levels, request);
    let principal = principal(entry, caller);
    let mut verdict = BeginVerdict {
        task_allowed: true,
        task_reason: String::new(),
        policy_ids: vec![],
        tools: vec![],
        quarantine: false,
        task_approval: vec![],
    };
    if let Some(reason) = &ceilings.task_denied {
        verdict.task_allowed = false;
        verdict.task_reason = format!("entry {}: {reason}", entry.id);
    } else if let Some(book) = book {
        let d = book.decide(&Request {
            principal: &principal,
            action: Action::BeginTask,
            resource: &request.task_type,
            context: ctx,
        });
        verdict.policy_ids = d.policy_ids.clone();
        verdict.quarantine |= d.quarantine;
        if !d.allowed {
            verdict.task_allowed = false;
            verdict.task_reason = denial_text(Action::BeginTask, &request.task_type, &d);
        } else if d.needs_approval() {
            verdict.task_approval = d.approvals;
        }
    }
    let passed: Vec<String> = request
        .tools
        .iter()
        .filter(|t| ceilings.tool_allowed(t))
        .cloned()
        .collect();
    // One UseTool decision per tool that passed the ceilings (tool names
    // are de-duplicated, so they key the decisions).
    let mut cedar: HashMap<&str, Decision> = match book {
        Some(b) => passed
            .iter()
            .map(String::as_str)
            .zip(b.decide_many(&principal, ctx, Action::UseTool, &passed))
            .collect(),
        None => HashMap::new(),
    };
    for tool in &request.tools {
        let v = if let Some((_, reason)) = ceilings.denied_tools.iter().find(|(t, _)| t == tool) {
            ToolVerdict {
                tool: tool.clone(),
                allowed: false,
                policy_ids: vec![],
                reason: format!("entry {}: {reason}", entry.id),
                approval: vec![],
            }
        } else if let Some(d) = cedar.remove(tool.as_str()) {
            verdict.quarantine |= d.quarantine;
            ToolVerdict {
                tool: tool.clone(),
                allowed: d.allowed,
                reason: if d.allowed {
                    String::new()
                } else {
                    denial_text(Action::UseTool, tool, &d)
                },
                approval: d
                    .approvals
                    .iter()
                    .map(|a| a.approvers.to_string())
                    .collect(),
                policy_ids: d.policy_ids,
            }
        } else {
            // No policy set loaded: the ceilings alone decide.
            ToolVerdict {
                tool: tool.clone(),
                allowed: true,
                policy_ids: vec![],
                reason: String::new(),
                approval: vec![],
            }
        };
        verdict.tools.push(v);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::TaskLimits;
    use serde_json::Map;
    use std::time::Duration;

    fn noon() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(12 * 3600)
    }

    fn entry(limits: TaskLimits) -> RegistrationEntry {
        let mut e = crate::store::conformance::entry("e1", "spiffe://td/agent/planner");
        e.task_limits = limits;
        e
    }

    fn request(tools: &[&str]) -> TaskRequest {
        TaskRequest {
            task_type: "report.generate".into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            data_sensitivity: "internal".into(),
            ttl: Duration::from_secs(60),
            ..Default::default()
        }
    }

    #[test]
    fn ceilings_then_cedar_per_tool() {
        let levels = SensitivityLevels::default();
        let e = entry(TaskLimits {
            allowed_task_types: vec!["*".into()],
            allowed_tools: vec!["crm.read".into(), "email.send".into(), "shell.exec".into()],
            max_task_ttl: None,
            max_sensitivity: None,
            allowed_credentials: vec![],
        });
        let book = PolicyBook::compile(
            r#"
            permit (principal, action == Lanyard::Action::"BeginTask", resource);
            permit (principal, action == Lanyard::Action::"UseTool", resource);
            @id("no-shell") @reason("no shells") @quarantine
            forbid (principal, action, resource == Lanyard::Tool::"shell.exec");
            "#,
            "t.cedar",
        )
        .unwrap();
        let r = request(&["crm.read", "db.drop", "email.send", "shell.exec"]);
        let ctx = TaskContext::for_begin(&r, &levels, noon(), Map::new());
        let v = decide_begin(&e, &levels, Some(&book), &Caller::default(), &r, &ctx);
        assert!(v.task_allowed);
        assert_eq!(v.granted(), vec!["crm.read", "email.send"]);
        let denied = v.denied();
        assert_eq!(denied.len(), 2);
        assert!(
            denied[0].1.contains("tool not allowed by the entry"),
            "{denied:?}"
        );
        assert_eq!(denied[1].1, "denied by policy no-shell: no shells");
        assert!(v.quarantine);

        // Without a policy set the ceilings alone decide.
        let v = decide_begin(&e, &levels, None, &Caller::default(), &r, &ctx);
        assert_eq!(v.granted(), vec!["crm.read", "email.send", "shell.exec"]);

        // A set that permits nothing denies the task by default.
        let none = PolicyBook::compile("", "empty.cedar").unwrap();
        let v = decide_begin(&e, &levels, Some(&none), &Caller::default(), &r, &ctx);
        assert!(!v.task_allowed);
        assert_eq!(
            v.task_reason,
            "no policy permits BeginTask on \"report.generate\""
        );
    }
}
