//! What the server believes of a node's report of denied tool calls.
//!
//! A report is a claim by one node agent, and a compromised node (or a
//! stolen join token) could otherwise quarantine any workload of the trust
//! domain by naming it. So a denial counts only when:
//! - the enforcement point the report names is an `--enforcement-point`
//!   entry whose parent is the reporting agent;
//! - the task exists and the SPIFFE ID is that task's;
//! - the server, deciding the same call from its own task record and
//!   policy set, denies it too; the quarantine's scope comes from that
//!   decision, never from the reporter's flags;
//! - the agent is within its rate of reports.
//!
//! An entry-wide quarantine (every instance on every node) on the word of
//! one node waits for an operator; reports from enforcement points on two
//! or more nodes put it in force.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lanyard_core::SpiffeId;
use lanyard_core::task::TaskRecord;

use crate::registry::Registry;
use crate::tasks::{Recheck, Tasks};

/// One denial an enforcement point reports through its agent: a claim,
/// re-decided by the server before it counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denial {
    /// The task whose credential was presented.
    pub task_id: String,
    /// The workload whose credential was presented.
    pub spiffe_id: String,
    /// The tool called.
    pub tool: String,
    /// Why the enforcement point's decision point denied it.
    pub reason: String,
    /// A deciding forbid carried `@quarantine` (the reporter's view).
    pub quarantine: bool,
    /// The decision's record ID.
    pub decision_id: String,
    /// The enforcement point that asked.
    pub enforcement_point: String,
    /// The forbid said `@quarantine("entry")` (the reporter's view).
    pub quarantine_entry: bool,
    /// The resource of the call.
    pub resource: String,
    /// The call's JSON arguments.
    pub context_json: String,
}

/// Most denials one agent may report per [`RATE_WINDOW`]; more are refused
/// (a flood of reports is itself a sign of a compromised node).
pub const MAX_REPORTS: usize = 600;
/// The window [`MAX_REPORTS`] counts in.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How long a node's entry-wide report waits for a second node's.
pub const CORROBORATION_WINDOW: Duration = Duration::from_secs(600);
/// Distinct nodes whose reports put an entry-wide quarantine in force.
pub const CORROBORATING_NODES: usize = 2;

/// A report the server believes.
#[derive(Debug)]
pub struct Believed {
    /// The task, from the server's own records.
    pub task: TaskRecord,
    /// The server's own reason for the denial.
    pub reason: String,
    /// The server's policy said `@quarantine` (`Some(true)`: entry-wide).
    pub quarantine: Option<bool>,
    /// The enforcement point that asked (checked against the reporter).
    pub enforcement_point: String,
}

/// Per-agent report rates and entry-wide reports awaiting a second node.
#[derive(Default)]
pub struct ReportGate {
    rates: Mutex<HashMap<SpiffeId, VecDeque<SystemTime>>>,
    /// SPIFFE ID -> reporting node -> when.
    entry_wide: Mutex<HashMap<String, HashMap<SpiffeId, SystemTime>>>,
}

impl ReportGate {
    /// Counts one report of `agent`; false when it is over its rate.
    pub fn admit(&self, agent: &SpiffeId, now: SystemTime) -> bool {
        let mut all = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let q = all.entry(agent.clone()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() > RATE_WINDOW)
        {
            q.pop_front();
        }
        if q.len() >= MAX_REPORTS {
            return false;
        }
        q.push_back(now);
        if all.len() > 100_000 {
            all.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t).unwrap_or_default() <= RATE_WINDOW)
            });
        }
        true
    }

    /// Notes that `node` reported an entry-wide quarantine of `spiffe_id`;
    /// returns how many distinct nodes did within the window.
    pub fn corroborate(&self, spiffe_id: &str, node: &SpiffeId, now: SystemTime) -> usize {
        let mut all = self.entry_wide.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = all.entry(spiffe_id.to_owned()).or_default();
        nodes.insert(node.clone(), now);
        nodes.retain(|_, t| now.duration_since(*t).unwrap_or_default() <= CORROBORATION_WINDOW);
        let n = nodes.len();
        if all.len() > 10_000 {
            all.retain(|_, m| {
                m.values()
                    .any(|t| now.duration_since(*t).unwrap_or_default() <= CORROBORATION_WINDOW)
            });
        }
        n
    }
}

/// Checks one reported denial of `reporter` against the server's own
/// records; `Err` gives why it is not believed.
pub async fn check(
    registry: &Registry,
    tasks: &Tasks,
    quarantines: &super::Quarantines,
    reporter: &SpiffeId,
    d: &Denial,
) -> Result<Believed, String> {
    let ep = SpiffeId::new(&d.enforcement_point)
        .map_err(|e| format!("enforcement point {:?}: {e}", d.enforcement_point))?;
    let owned = registry
        .list(Some(&ep), None)
        .iter()
        .any(|e| e.enforcement_point && registry.owns(reporter, e));
    if !owned {
        return Err(format!(
            "{ep} is not an enforcement point of agent {reporter}"
        ));
    }
    if d.task_id.is_empty() {
        return Err("the report names no task".into());
    }
    let task = match tasks.get(&d.task_id).await {
        Ok(t) => t,
        Err(
            crate::tasks::TaskServiceError::NotFound(_)
            | crate::tasks::TaskServiceError::Invalid(_),
        ) => {
            return Err(format!("no task {:?}", d.task_id));
        }
        Err(e) => return Err(format!("the task could not be read: {e}")),
    };
    if task.grant.spiffe_id.as_str() != d.spiffe_id {
        return Err(format!(
            "task {} belongs to {}, not {}",
            d.task_id, task.grant.spiffe_id, d.spiffe_id
        ));
    }
    let call = lanyard_policy::call_strings(&d.context_json).map_err(|e| e.to_string())?;
    let recent_denials = i64::try_from(quarantines.recent_denials(
        &super::quarantine::workload_key(task.grant.spiffe_id.as_str(), task.agent_id.as_str()),
    ))
    .unwrap_or(i64::MAX);
    match tasks.recheck_call(&task, &d.tool, &d.resource, call, recent_denials) {
        Recheck::Denied { reason, quarantine } => Ok(Believed {
            task,
            reason,
            quarantine,
            enforcement_point: ep.to_string(),
        }),
        Recheck::Allowed => Err(format!(
            "the server's policy permits {} for task {}: the denial does not reproduce",
            d.tool, d.task_id
        )),
        Recheck::Stale => Err(format!(
            "task {} ended more than {}s ago",
            d.task_id,
            crate::tasks::REPORT_GRACE
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_over_its_rate_is_refused_until_the_window_passes() {
        let g = ReportGate::default();
        let a = SpiffeId::new("spiffe://td/lanyard/agent/a").unwrap();
        let b = SpiffeId::new("spiffe://td/lanyard/agent/b").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        for _ in 0..MAX_REPORTS {
            assert!(g.admit(&a, t0));
        }
        assert!(!g.admit(&a, t0));
        assert!(g.admit(&b, t0), "another agent has its own rate");
        assert!(g.admit(&a, t0 + RATE_WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn entry_wide_reports_count_distinct_nodes_within_the_window() {
        let g = ReportGate::default();
        let a = SpiffeId::new("spiffe://td/lanyard/agent/a").unwrap();
        let b = SpiffeId::new("spiffe://td/lanyard/agent/b").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(g.corroborate("spiffe://td/w", &a, t0), 1);
        assert_eq!(g.corroborate("spiffe://td/w", &a, t0), 1, "one node twice");
        assert_eq!(g.corroborate("spiffe://td/w", &b, t0), 2);
        let late = t0 + CORROBORATION_WINDOW + Duration::from_secs(1);
        assert_eq!(g.corroborate("spiffe://td/w", &b, late), 1);
    }
}
