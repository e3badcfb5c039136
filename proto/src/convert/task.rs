//! Task messages to and from `lanyard-core`'s task types.

use std::time::Duration;

use lanyard_core::task::{Actor, TaskGrant, TaskRecord, TaskRequest, TaskState};
use lanyard_core::{EntryId, TaskError, TaskId};

use super::{ProtoError, spiffe_id};
use crate::types;

/// Largest TTL a request may carry (larger values are refused by the
/// ceilings anyway; this only keeps the arithmetic in range).
const MAX_TTL_SECONDS: i64 = 366 * 24 * 3600;

/// A positive TTL in seconds; zero, negative and absurd values are refused.
pub fn ttl_seconds(secs: i64) -> Result<Duration, ProtoError> {
    if secs <= 0 || secs > MAX_TTL_SECONDS {
        return Err(ProtoError::Task(TaskError::BadTtl {
            max: MAX_TTL_SECONDS.unsigned_abs(),
        }));
    }
    Ok(Duration::from_secs(secs.unsigned_abs()))
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

/// The domain request of a task spec (not yet checked against the
/// sensitivity levels: [`TaskRequest::check`] does that).
pub fn task_request(spec: types::TaskSpec) -> Result<TaskRequest, ProtoError> {
    Ok(TaskRequest {
        task_type: spec.task_type,
        intent: spec.intent,
        tools: spec.tools,
        destinations: spec.destinations,
        data_sensitivity: spec.data_sensitivity,
        ttl: ttl_seconds(spec.ttl_seconds)?,
        on_behalf_of: non_empty(spec.on_behalf_of),
        allow_partial: spec.allow_partial,
        parent_task_id: non_empty(spec.parent_task_id)
            .map(|p| TaskId::new(&p))
            .transpose()?,
        delegation_token: non_empty(spec.delegation_token),
    })
}

impl From<&TaskRequest> for types::TaskSpec {
    fn from(r: &TaskRequest) -> Self {
        Self {
            task_type: r.task_type.clone(),
            intent: r.intent.clone(),
            tools: r.tools.clone(),
            destinations: r.destinations.clone(),
            data_sensitivity: r.data_sensitivity.clone(),
            ttl_seconds: i64::try_from(r.ttl.as_secs()).unwrap_or(i64::MAX),
            on_behalf_of: r.on_behalf_of.clone().unwrap_or_default(),
            allow_partial: r.allow_partial,
            parent_task_id: r
                .parent_task_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            delegation_token: r.delegation_token.clone().unwrap_or_default(),
        }
    }
}

fn i64_secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

impl From<&TaskRecord> for types::TaskInfo {
    fn from(t: &TaskRecord) -> Self {
        let g = &t.grant;
        Self {
            task_id: g.task_id.to_string(),
            spiffe_id: g.spiffe_id.to_string(),
            entry_id: t.entry_id.to_string(),
            agent_id: t.agent_id.to_string(),
            task_type: g.task_type.clone(),
            tools: g.tools.clone(),
            destinations: g.destinations.clone(),
            data_sensitivity: g.data_sensitivity.clone(),
            on_behalf_of: g.on_behalf_of.clone().unwrap_or_default(),
            intent_sha256: g.intent_sha256.clone(),
            not_after: i64_secs(g.not_after),
            chain: g
                .chain
                .iter()
                .map(|a| types::Actor {
                    spiffe_id: a.spiffe_id.to_string(),
                    task_id: a.task_id.to_string(),
                })
                .collect(),
            created_at: i64_secs(t.created_at),
            state: t.state.as_str().into(),
            end_reason: t.end_reason.clone(),
            intent: t.intent.clone(),
            grant_sha256: hex::encode(g.digest()),
            denied: t
                .denied
                .iter()
                .map(|(tool, reason)| types::ToolDenial {
                    tool: tool.clone(),
                    reason: reason.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<types::TaskInfo> for TaskRecord {
    type Error = ProtoError;

    fn try_from(t: types::TaskInfo) -> Result<Self, Self::Error> {
        let state = match t.state.as_str() {
            "active" => TaskState::Active,
            "ended" => TaskState::Ended,
            "revoked" => TaskState::Revoked,
            "expired" => TaskState::Expired,
            _ => return Err(ProtoError::Missing("task state")),
        };
        let chain = t
            .chain
            .into_iter()
            .map(|a| {
                Ok(Actor {
                    spiffe_id: spiffe_id("chain.spiffe_id", &a.spiffe_id)?,
                    task_id: TaskId::new(&a.task_id)?,
                })
            })
            .collect::<Result<_, ProtoError>>()?;
        Ok(TaskRecord {
            grant: TaskGrant {
                task_id: TaskId::new(&t.task_id)?,
                spiffe_id: spiffe_id("spiffe_id", &t.spiffe_id)?,
                task_type: t.task_type,
                tools: t.tools,
                destinations: t.destinations,
                data_sensitivity: t.data_sensitivity,
                on_behalf_of: non_empty(t.on_behalf_of),
                intent_sha256: t.intent_sha256,
                not_after: u64::try_from(t.not_after).unwrap_or(0),
                chain,
            },
            entry_id: EntryId::new(&t.entry_id)?,
            agent_id: spiffe_id("agent_id", &t.agent_id)?,
            denied: t.denied.into_iter().map(|d| (d.tool, d.reason)).collect(),
            created_at: u64::try_from(t.created_at).unwrap_or(0),
            intent: t.intent,
            state,
            end_reason: t.end_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_spec_and_info_round_trip() {
        let spec = types::TaskSpec {
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 60,
            parent_task_id: "00112233445566778899aabbccddeeff".into(),
            delegation_token: "tok".into(),
            ..Default::default()
        };
        let r = task_request(spec.clone()).unwrap();
        assert_eq!(types::TaskSpec::from(&r), spec);
        for bad in [0, -1, i64::MAX] {
            let s = types::TaskSpec {
                ttl_seconds: bad,
                ..spec.clone()
            };
            assert!(task_request(s).is_err());
        }
        let record = TaskRecord {
            grant: TaskGrant {
                task_id: TaskId::from_random([1; 16]),
                spiffe_id: "spiffe://td/w".parse().unwrap(),
                task_type: "t".into(),
                tools: vec!["a".into()],
                destinations: vec![],
                data_sensitivity: "public".into(),
                on_behalf_of: None,
                intent_sha256: "00".into(),
                not_after: 10,
                chain: vec![Actor {
                    spiffe_id: "spiffe://td/p".parse().unwrap(),
                    task_id: TaskId::from_random([2; 16]),
                }],
            },
            entry_id: EntryId::new("e1").unwrap(),
            agent_id: "spiffe://td/node/n1".parse().unwrap(),
            denied: vec![("b".into(), "no".into())],
            created_at: 5,
            state: TaskState::Revoked,
            end_reason: "operator".into(),
            intent: "weekly report".into(),
        };
        let msg = types::TaskInfo::from(&record);
        assert_eq!(TaskRecord::try_from(msg).unwrap(), record);
    }
}
