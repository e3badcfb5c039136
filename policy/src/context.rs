//! The Cedar context of a decision, built in one place for every side that
//! decides: the server at `BeginTask` and `Delegate`, the node agent's
//! decision point at each tool call, and the server again when it checks a
//! reported denial. Two copies had drifted (one ranked sensitivity with the
//! default levels, the other with the configured ones); one builder, fed
//! the configured levels on both sides, keeps them the same.

use std::time::SystemTime;

use lanyard_core::clock::unix_secs;
use lanyard_core::task::{SensitivityLevels, TaskGrant, TaskRequest};
use serde_json::{Map, Value};

use crate::TaskContext;

/// Largest call context accepted, bytes of JSON.
pub const MAX_CALL_CONTEXT: usize = 16 * 1024;

/// The rank of `level` among `levels` (0 = lowest), or `i64::MAX` for a
/// name the levels do not hold, so that `sensitivity_rank <= N` never
/// holds for it.
pub fn sensitivity_rank(levels: &SensitivityLevels, level: &str) -> i64 {
    levels
        .rank(level)
        .map_or(i64::MAX, |r| i64::try_from(r).unwrap_or(i64::MAX))
}

/// The UTC hour of `now`, 0-23.
pub fn hour(now: SystemTime) -> i64 {
    i64::try_from(unix_secs(now) / 3600 % 24).unwrap_or(0)
}

/// What a tool call is decided on, whichever side decides it: the task's
/// grant (from its claims at the tool, from its record on the server) and
/// the call.
#[derive(Debug, Clone, Default)]
pub struct CallFacts<'a> {
    /// The task's type.
    pub task_type: &'a str,
    /// Its granted tools.
    pub tools: &'a [String],
    /// Its data sensitivity level.
    pub sensitivity: &'a str,
    /// Whom it acts for.
    pub on_behalf_of: Option<&'a str>,
    /// Its parent task, for a delegated one.
    pub parent_task_id: Option<String>,
    /// When it ends.
    pub not_after: Option<SystemTime>,
    /// Recent denials of the workload.
    pub recent_denials: i64,
    /// What the tool is called on.
    pub resource: &'a str,
    /// The call's arguments as `key=value` strings ([`call_strings`]).
    pub call: Vec<String>,
}

impl<'a> CallFacts<'a> {
    /// What a task's grant says (no call yet: add the resource, the call
    /// and the recent denials).
    pub fn of_grant(g: &'a TaskGrant) -> Self {
        Self {
            task_type: &g.task_type,
            tools: &g.tools,
            sensitivity: &g.data_sensitivity,
            on_behalf_of: g.on_behalf_of.as_deref(),
            parent_task_id: g.parent_task_id().map(ToString::to_string),
            not_after: Some(lanyard_core::clock::from_unix_secs(g.not_after)),
            ..Default::default()
        }
    }
}

impl TaskContext {
    /// The context of a `GetCredential` by the task `g` at `now`: the
    /// task's facts and destinations, with the `scopes` asked for and the
    /// `target` (where the credential will be used, or the enforcement
    /// point it is released to).
    pub fn for_credential(
        g: &TaskGrant,
        levels: &SensitivityLevels,
        now: SystemTime,
        scopes: &[String],
        target: &str,
    ) -> Self {
        let mut ctx = Self::for_call(CallFacts::of_grant(g), levels, now);
        ctx.at_call = false;
        ctx.destinations.clone_from(&g.destinations);
        ctx.scopes = scopes.to_vec();
        target.clone_into(&mut ctx.target);
        ctx
    }

    /// The context of a `BeginTask` (and of a `Delegate`, whose caller sets
    /// `delegate_to`) for `request` at `now`.
    pub fn for_begin(
        request: &TaskRequest,
        levels: &SensitivityLevels,
        now: SystemTime,
        extra: Map<String, Value>,
    ) -> Self {
        Self {
            task_type: request.task_type.clone(),
            tools: request.tools.clone(),
            destinations: request.destinations.clone(),
            sensitivity: request.data_sensitivity.clone(),
            sensitivity_rank: sensitivity_rank(levels, &request.data_sensitivity),
            ttl_seconds: i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX),
            on_behalf_of: request.on_behalf_of.clone().unwrap_or_default(),
            intent: request.intent.clone(),
            hour: hour(now),
            parent_task_id: request
                .parent_task_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            delegate_to: String::new(),
            recent_denials: 0,
            at_call: false,
            resource: String::new(),
            call: vec![],
            scopes: vec![],
            target: String::new(),
            extra,
        }
    }

    /// The context of one tool call (`UseTool` with `at_call`) at `now`.
    pub fn for_call(facts: CallFacts<'_>, levels: &SensitivityLevels, now: SystemTime) -> Self {
        Self {
            task_type: facts.task_type.to_owned(),
            tools: facts.tools.to_vec(),
            destinations: vec![],
            sensitivity: facts.sensitivity.to_owned(),
            sensitivity_rank: sensitivity_rank(levels, facts.sensitivity),
            ttl_seconds: facts
                .not_after
                .and_then(|t| t.duration_since(now).ok())
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            on_behalf_of: facts.on_behalf_of.unwrap_or_default().to_owned(),
            intent: String::new(),
            hour: hour(now),
            parent_task_id: facts.parent_task_id.unwrap_or_default(),
            delegate_to: String::new(),
            recent_denials: facts.recent_denials,
            at_call: true,
            resource: facts.resource.to_owned(),
            call: facts.call,
            scopes: vec![],
            target: String::new(),
            extra: Map::new(),
        }
    }
}

/// Why a call's context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallContextError {
    /// Larger than [`MAX_CALL_CONTEXT`].
    #[error("context_json is {0} bytes; at most {MAX_CALL_CONTEXT}")]
    TooLarge(usize),
    /// Not JSON.
    #[error("context_json: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("context_json must be a JSON object")]
    NotObject,
}

/// A call's JSON arguments as Cedar sees them: `key=value` per top-level
/// member (strings bare, anything else as JSON text).
pub fn call_strings(json: &str) -> Result<Vec<String>, CallContextError> {
    if json.len() > MAX_CALL_CONTEXT {
        return Err(CallContextError::TooLarge(json.len()));
    }
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let v: Value =
        serde_json::from_str(json).map_err(|e| CallContextError::NotJson(e.to_string()))?;
    let Value::Object(m) = v else {
        return Err(CallContextError::NotObject);
    };
    Ok(m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn call_context_is_an_object_of_bounded_size() {
        assert_eq!(
            call_strings(r#"{"amount": 5, "to": "acme", "urgent": true}"#).unwrap(),
            vec!["amount=5", "to=acme", "urgent=true"]
        );
        assert!(call_strings("").unwrap().is_empty());
        assert_eq!(call_strings("[1]"), Err(CallContextError::NotObject));
        assert!(matches!(
            call_strings("{not json"),
            Err(CallContextError::NotJson(_))
        ));
        let big = format!(r#"{{"x": "{}"}}"#, "a".repeat(MAX_CALL_CONTEXT));
        assert!(matches!(
            call_strings(&big),
            Err(CallContextError::TooLarge(_))
        ));
    }

    #[test]
    fn both_sides_rank_sensitivity_with_the_levels_they_are_given() {
        let custom =
            SensitivityLevels::new(vec!["low".into(), "mid".into(), "high".into()]).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7 * 3600 + 5);
        let request = TaskRequest {
            task_type: "t".into(),
            data_sensitivity: "mid".into(),
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let begin = TaskContext::for_begin(&request, &custom, now, Map::new());
        let tools = vec!["a".to_owned()];
        let call = TaskContext::for_call(
            CallFacts {
                task_type: "t",
                tools: &tools,
                sensitivity: "mid",
                not_after: Some(now + Duration::from_secs(30)),
                ..Default::default()
            },
            &custom,
            now,
        );
        assert_eq!(begin.sensitivity_rank, 1);
        assert_eq!(call.sensitivity_rank, 1);
        assert_eq!((begin.hour, call.hour), (7, 7));
        assert_eq!(call.ttl_seconds, 30);
        assert!(call.at_call && !begin.at_call);
        // A level the levels do not hold never ranks low.
        let default = TaskContext::for_call(
            CallFacts {
                sensitivity: "mid",
                ..Default::default()
            },
            &SensitivityLevels::default(),
            now,
        );
        assert_eq!(default.sensitivity_rank, i64::MAX);
    }
}
