//! Which of a caller's identities a task is begun under. A process can
//! match several entries (a tool server and an AI agent run as one uid);
//! when the BeginTask names no SPIFFE ID, the agent sends every entry the
//! caller may begin a task under, in serving order, and the task is begun
//! under the one identity whose ceilings and policy permit it. The choice
//! never falls to whichever entry happens to come first: several permitting
//! identities are refused as ambiguous (naming them), and a denial under
//! every identity gives each identity's reason.

use lanyard_core::RegistrationEntry;

use super::decide::BeginVerdict;
use super::error::TaskServiceError;

/// Why `verdict` does not begin a task, or `None` when it does.
pub(super) fn refusal(verdict: &BeginVerdict, allow_partial: bool) -> Option<String> {
    if !verdict.task_allowed {
        return Some(format!("task denied: {}", verdict.task_reason));
    }
    let denied = verdict.denied();
    if !denied.is_empty() && !allow_partial {
        let list: Vec<String> = denied.iter().map(|(t, r)| format!("{t} ({r})")).collect();
        return Some(format!(
            "task denied: tools not permitted: {}",
            list.join("; ")
        ));
    }
    None
}

/// The entry a task is begun under, from the decisions on each candidate
/// (in serving order). One candidate keeps its own denial text.
pub(super) fn choose(
    considered: Vec<(RegistrationEntry, BeginVerdict)>,
    allow_partial: bool,
) -> Result<(RegistrationEntry, BeginVerdict), TaskServiceError> {
    let mut permitted = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let single = considered.len() == 1;
    for (entry, verdict) in considered {
        match refusal(&verdict, allow_partial) {
            None => permitted.push((entry, verdict)),
            Some(why) if single => return Err(TaskServiceError::Denied(why)),
            Some(why) => {
                let line = format!("{}: {}", entry.spiffe_id, why);
                if !reasons.contains(&line) {
                    reasons.push(line);
                }
            }
        }
    }
    let mut ids: Vec<String> = permitted
        .iter()
        .map(|(e, _)| e.spiffe_id.to_string())
        .collect();
    ids.sort();
    ids.dedup();
    match ids.len() {
        0 if reasons.is_empty() => Err(TaskServiceError::Denied(
            "task denied: the caller has no identity to begin a task under".into(),
        )),
        0 => Err(TaskServiceError::Denied(format!(
            "task denied under every identity of the caller: {}",
            reasons.join(" | ")
        ))),
        // Entries of one SPIFFE ID are one identity: the first in serving
        // order serves.
        1 => Ok(permitted.swap_remove(0)),
        _ => Err(TaskServiceError::Ambiguous(format!(
            "the caller holds several identities that permit this task ({}); name one with spiffe_id (lanyard-agent task run --spiffe-id ID)",
            ids.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::decide::ToolVerdict;
    use lanyard_core::{EntryId, SpiffeId};

    fn entry(id: &str, spiffe: &str) -> RegistrationEntry {
        let mut e = crate::store::conformance::entry(id, spiffe);
        e.id = EntryId::new(id).unwrap();
        e.spiffe_id = SpiffeId::new(spiffe).unwrap();
        e
    }

    fn verdict(task_allowed: bool, tool_allowed: bool) -> BeginVerdict {
        BeginVerdict {
            task_allowed,
            task_reason: if task_allowed {
                String::new()
            } else {
                "the entry allows no task types".into()
            },
            policy_ids: vec![],
            tools: vec![ToolVerdict {
                tool: "crm.read".into(),
                allowed: tool_allowed,
                policy_ids: vec![],
                reason: if tool_allowed {
                    String::new()
                } else {
                    "not in the entry's tools".into()
                },
                approval: vec![],
            }],
            task_approval: vec![],
            quarantine: false,
        }
    }

    #[test]
    fn the_one_permitting_identity_is_chosen_wherever_it_stands() {
        for flip in [false, true] {
            let mut v = vec![
                (entry("a", "spiffe://td/tool/crm"), verdict(false, false)),
                (entry("b", "spiffe://td/agent/planner"), verdict(true, true)),
            ];
            if flip {
                v.reverse();
            }
            let (e, _) = choose(v, false).unwrap();
            assert_eq!(e.spiffe_id.as_str(), "spiffe://td/agent/planner");
        }
    }

    #[test]
    fn several_permitting_identities_are_ambiguous_and_named() {
        let v = vec![
            (entry("a", "spiffe://td/tool/crm"), verdict(true, true)),
            (entry("b", "spiffe://td/agent/planner"), verdict(true, true)),
        ];
        let err = choose(v, false).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TaskServiceError::Ambiguous(_)), "{text}");
        assert!(text.contains("spiffe://td/tool/crm"), "{text}");
        assert!(text.contains("spiffe://td/agent/planner"), "{text}");
        assert!(text.contains("spiffe_id"), "{text}");
    }

    #[test]
    fn two_entries_of_one_spiffe_id_are_one_identity() {
        let v = vec![
            (entry("a", "spiffe://td/agent/planner"), verdict(true, true)),
            (entry("b", "spiffe://td/agent/planner"), verdict(true, true)),
        ];
        let (e, _) = choose(v, false).unwrap();
        assert_eq!(e.id.as_str(), "a");
    }

    #[test]
    fn a_denial_under_every_identity_gives_each_reason() {
        let v = vec![
            (entry("a", "spiffe://td/tool/crm"), verdict(false, false)),
            (
                entry("b", "spiffe://td/agent/planner"),
                verdict(true, false),
            ),
        ];
        let text = choose(v, false).unwrap_err().to_string();
        assert!(
            text.contains("spiffe://td/tool/crm: task denied: the entry allows no task types"),
            "{text}"
        );
        assert!(
            text.contains("spiffe://td/agent/planner: task denied: tools not permitted"),
            "{text}"
        );
    }

    #[test]
    fn one_candidate_keeps_its_own_denial_and_partial_grants_count() {
        let v = vec![(entry("a", "spiffe://td/tool/crm"), verdict(true, false))];
        assert_eq!(
            choose(v.clone(), false).unwrap_err().to_string(),
            "task denied: tools not permitted: crm.read (not in the entry's tools)"
        );
        assert!(choose(v, true).is_ok());
    }
}
