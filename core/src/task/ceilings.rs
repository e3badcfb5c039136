//! Entry ceilings: the limits an entry puts on its tasks, decided without
//! any policy engine. Fail closed: an entry that names no task type or no
//! tool permits none; `*` has to be written to allow any.

use std::time::Duration;

use super::grant::TaskRequest;
use super::sensitivity::SensitivityLevels;
use crate::entry::TaskLimits;

/// Task lifetime used when an entry sets no maximum.
pub const DEFAULT_MAX_TASK_TTL: Duration = Duration::from_secs(3600);

/// The ceilings' verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeilingDecision {
    /// Set when the task as a whole is refused (type, TTL, sensitivity).
    pub task_denied: Option<String>,
    /// Requested tools the entry does not allow, with the reason.
    pub denied_tools: Vec<(String, String)>,
}

impl CeilingDecision {
    /// Whether `tool` passed the ceilings.
    pub fn tool_allowed(&self, tool: &str) -> bool {
        !self.denied_tools.iter().any(|(t, _)| t == tool)
    }
}

fn allows(list: &[String], item: &str) -> bool {
    list.iter().any(|a| a == "*" || a == item)
}

/// Checks a validated request against an entry's limits.
pub fn check_ceilings(
    limits: &TaskLimits,
    levels: &SensitivityLevels,
    request: &TaskRequest,
) -> CeilingDecision {
    let max_ttl = limits.max_task_ttl.unwrap_or(DEFAULT_MAX_TASK_TTL);
    let task_denied = if !allows(&limits.allowed_task_types, &request.task_type) {
        Some(if limits.allowed_task_types.is_empty() {
            "the entry allows no task types (--allow-task-type)".to_owned()
        } else {
            format!(
                "task type {:?} is not allowed by the entry",
                request.task_type
            )
        })
    } else if request.ttl > max_ttl {
        Some(format!(
            "task TTL {}s exceeds the entry's maximum of {}s",
            request.ttl.as_secs(),
            max_ttl.as_secs()
        ))
    } else {
        sensitivity_denial(limits, levels, &request.data_sensitivity)
    };
    let denied_tools = request
        .tools
        .iter()
        .filter(|t| !allows(&limits.allowed_tools, t))
        .map(|t| {
            let reason = if limits.allowed_tools.is_empty() {
                "the entry allows no tools (--allow-tool)".to_owned()
            } else {
                "tool not allowed by the entry".to_owned()
            };
            (t.clone(), reason)
        })
        .collect();
    CeilingDecision {
        task_denied,
        denied_tools,
    }
}

/// Whether an entry's tasks may be handed credentials from the provider
/// `name` (fail closed: an entry that names no provider permits none).
pub fn credential_allowed(limits: &TaskLimits, name: &str) -> Result<(), String> {
    if allows(&limits.allowed_credentials, name) {
        Ok(())
    } else if limits.allowed_credentials.is_empty() {
        Err("the entry allows no credential providers (--allow-credential)".to_owned())
    } else {
        Err(format!(
            "credential provider {name:?} is not allowed by the entry"
        ))
    }
}

fn sensitivity_denial(
    limits: &TaskLimits,
    levels: &SensitivityLevels,
    asked: &str,
) -> Option<String> {
    let max = limits.max_sensitivity.as_deref()?;
    match (levels.rank(asked), levels.rank(max)) {
        (Ok(a), Ok(m)) if a <= m => None,
        (Ok(_), Ok(_)) => Some(format!(
            "data sensitivity {asked:?} exceeds the entry's maximum {max:?}"
        )),
        (Err(e), _) => Some(e.to_string()),
        (_, Err(_)) => Some(format!(
            "the entry's maximum sensitivity {max:?} is not a configured level"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ttl: u64, tools: &[&str], level: &str) -> TaskRequest {
        TaskRequest {
            task_type: "report.generate".into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            ttl: Duration::from_secs(ttl),
            data_sensitivity: level.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fail_closed_and_explicit_wildcards() {
        let levels = SensitivityLevels::default();
        let none = TaskLimits::default();
        let d = check_ceilings(&none, &levels, &req(60, &["crm.read"], "public"));
        assert!(d.task_denied.is_some());
        assert!(!d.tool_allowed("crm.read"));

        let any = TaskLimits {
            allowed_task_types: vec!["*".into()],
            allowed_tools: vec!["*".into()],
            max_task_ttl: None,
            max_sensitivity: None,
            allowed_credentials: vec!["*".into()],
        };
        let d = check_ceilings(&any, &levels, &req(60, &["x", "y"], "restricted"));
        assert_eq!(d.task_denied, None);
        assert!(d.denied_tools.is_empty());
        assert!(credential_allowed(&any, "github").is_ok());
        let e = credential_allowed(&none, "github").unwrap_err();
        assert!(e.contains("--allow-credential"), "{e}");
    }

    #[test]
    fn ttl_sensitivity_and_tools() {
        let levels = SensitivityLevels::default();
        let l = TaskLimits {
            allowed_task_types: vec!["report.generate".into()],
            allowed_tools: vec!["crm.read".into()],
            max_task_ttl: Some(Duration::from_secs(300)),
            max_sensitivity: Some("confidential".into()),
            allowed_credentials: vec!["github".into()],
        };
        assert!(credential_allowed(&l, "github").is_ok());
        let e = credential_allowed(&l, "crm-api-key").unwrap_err();
        assert!(
            e.contains("crm-api-key") && e.contains("not allowed"),
            "{e}"
        );
        assert_eq!(
            check_ceilings(&l, &levels, &req(300, &["crm.read"], "confidential")).task_denied,
            None
        );
        assert!(
            check_ceilings(&l, &levels, &req(301, &[], "public"))
                .task_denied
                .is_some()
        );
        assert!(
            check_ceilings(&l, &levels, &req(60, &[], "restricted"))
                .task_denied
                .is_some()
        );
        let d = check_ceilings(&l, &levels, &req(60, &["crm.read", "email.send"], "public"));
        assert!(d.tool_allowed("crm.read"));
        assert!(!d.tool_allowed("email.send"));
    }
}
