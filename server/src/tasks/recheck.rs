//! The server's own decision on a tool call that an enforcement point
//! reported denied. A report is a node's claim: before a denial counts
//! towards quarantine, the server decides the same call again from its own
//! task record and its own copy of the policy set, and the scope of any
//! quarantine comes from that decision, never from the reporter's flags.

use lanyard_core::task::TaskRecord;
use lanyard_policy::{Action, CallFacts, Principal, TaskContext};

use super::service::Tasks;

/// What the server decides on a reported call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The server denies it too.
    Denied {
        /// Why.
        reason: String,
        /// The deciding `forbid` said `@quarantine` (`Some(true)`: entry-wide).
        quarantine: Option<bool>,
    },
    /// The server would allow it: the report does not hold.
    Allowed,
    /// The task's window closed long before: a report about it is stale.
    Stale,
}

/// How long after a task's window a denial about it is still taken (a
/// node that was cut off from the server reports when it is back; a task
/// ended by the quarantine itself is reported after it ended).
pub const REPORT_GRACE: u64 = 600;

impl Tasks {
    /// Decides `tool` on `resource` with the call's `key=value` strings for
    /// `task`, as the decision point would have (its grant, then the
    /// enforced policy set with the server's sensitivity levels).
    pub fn recheck_call(
        &self,
        task: &TaskRecord,
        tool: &str,
        resource: &str,
        call: Vec<String>,
        recent_denials: i64,
    ) -> Recheck {
        let inner = &self.inner;
        let now = inner.clock.now();
        // A task that has ended is still decided as it stood: the call was
        // made while it ran (a quarantine ends the task it reports on).
        let g = &task.grant;
        if lanyard_core::clock::unix_secs(now) > g.not_after.saturating_add(REPORT_GRACE) {
            return Recheck::Stale;
        }
        if !g.tools.iter().any(|t| t == tool) {
            return Recheck::Denied {
                reason: format!("tool {tool} was not granted to task {}", g.task_id),
                quarantine: None,
            };
        }
        let Some(policy) = inner.policies.enforced() else {
            return Recheck::Allowed;
        };
        let context = TaskContext::for_call(
            CallFacts {
                recent_denials,
                resource,
                call,
                ..CallFacts::of_grant(g)
            },
            &inner.levels,
            now,
        );
        // What the task record does not hold is unknown here, as it is at
        // the tool for an X.509 caller.
        let principal = Principal {
            spiffe_id: g.spiffe_id.to_string(),
            node: task.agent_id.to_string(),
            unknown: lanyard_policy::Unknown {
                selectors: true,
                exe_path: true,
                exe_sha256: true,
                ..lanyard_policy::Unknown::none()
            },
            ..Principal::default()
        };
        let d = policy.book.decide(&lanyard_policy::Request {
            principal: &principal,
            action: Action::UseTool,
            resource: tool,
            context: &context,
        });
        if d.allowed {
            return Recheck::Allowed;
        }
        Recheck::Denied {
            reason: super::decide::denial_text(Action::UseTool, tool, &d),
            quarantine: d.quarantine.then_some(d.quarantine_entry),
        }
    }
}
