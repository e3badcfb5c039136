//! `@approval`: a permit that holds until a person approves.
//!
//! A permit annotated `@approval("requester")`, `@approval("any-operator")`
//! or `@approval("group:NAME")` allows only once a declared approver says
//! yes; `@approval_ttl("10m")` sets how long the request waits. The
//! annotation applies to `UseTool` (each call) and `BeginTask`; anywhere
//! else it is refused when the set is compiled, so that nothing ever reads
//! a permit as unconditional that was written as conditional.

use std::time::Duration;

use cedar_policy::{ActionConstraint, Effect, Policy};

use crate::request::Action;

/// Longest `@approval_ttl`.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Who may approve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Approvers {
    /// The person the task acts for (`on_behalf_of`), when that person is a
    /// declared approver.
    Requester,
    /// Any declared approver.
    AnyOperator,
    /// The declared approvers in this group.
    Group(String),
}

impl Approvers {
    /// Parses an `@approval` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "requester" => Ok(Self::Requester),
            "any-operator" => Ok(Self::AnyOperator),
            _ => match s.strip_prefix("group:") {
                Some(g) if valid_group(g) => Ok(Self::Group(g.to_owned())),
                _ => Err(format!(
                    "@approval({s:?}): expected \"requester\", \"any-operator\" or \"group:NAME\" (NAME of letters, digits, '.', '_', '-')"
                )),
            },
        }
    }
}

impl std::fmt::Display for Approvers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Requester => f.write_str("requester"),
            Self::AnyOperator => f.write_str("any-operator"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// A group name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 64
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One satisfied permit's approval requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The permit's ID.
    pub policy_id: String,
    /// Who may approve.
    pub approvers: Approvers,
    /// How long the request waits (`@approval_ttl`), when the policy says.
    pub ttl: Option<Duration>,
}

/// A policy's approval annotations, checked: `None` when it has none.
pub(crate) fn annotation(p: &Policy, source: &str) -> Result<Option<Approval>, String> {
    let id = p.id().to_string();
    let ttl = p.annotation("approval_ttl");
    let Some(value) = p.annotation("approval") else {
        if ttl.is_some() {
            return Err(format!(
                "{source}: policy {id}: @approval_ttl without @approval"
            ));
        }
        return Ok(None);
    };
    if p.effect() != Effect::Permit {
        return Err(format!(
            "{source}: policy {id}: @approval belongs on a permit (a forbid never waits for anyone)"
        ));
    }
    let approvers = Approvers::parse(value).map_err(|e| format!("{source}: policy {id}: {e}"))?;
    let allowed = [Action::UseTool, Action::BeginTask];
    let scoped = match p.action_constraint() {
        ActionConstraint::Any => false,
        ActionConstraint::Eq(a) => allowed.iter().any(|x| x.uid().is_ok_and(|u| u == a)),
        ActionConstraint::In(list) => list
            .iter()
            .all(|a| allowed.iter().any(|x| x.uid().is_ok_and(|u| &u == a))),
    };
    if !scoped {
        return Err(format!(
            "{source}: policy {id}: @approval applies to UseTool and BeginTask only; scope the permit with action == Lanyard::Action::\"UseTool\" (or \"BeginTask\")"
        ));
    }
    let ttl = match ttl {
        None => None,
        Some(t) => {
            let d = lanyard_core::duration::parse_duration(t)
                .map_err(|e| format!("{source}: policy {id}: @approval_ttl({t:?}): {e}"))?;
            if d.is_zero() || d > MAX_TTL {
                return Err(format!(
                    "{source}: policy {id}: @approval_ttl({t:?}): between 1s and 24h"
                ));
            }
            Some(d)
        }
    };
    Ok(Some(Approval {
        policy_id: id,
        approvers,
        ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approver_values_parse_and_print_back() {
        for s in ["requester", "any-operator", "group:payments-approvers"] {
            assert_eq!(Approvers::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "",
            "group:",
            "group:a b",
            "alice",
            "Requester",
            "group:x\"y",
        ] {
            assert!(Approvers::parse(bad).is_err(), "{bad:?}");
        }
    }
}
