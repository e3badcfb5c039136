//! The workload a process belongs to, for quarantine: a quarantine holds
//! the workload, not one PID, so that a fork, a double-forked grandchild
//! (re-parented to PID 1, so ancestry does not hold) or the same program
//! restarted is quarantined too.
//!
//! The boundary is the narrowest one the process cannot leave by itself:
//! its pod on Kubernetes (the kubelet's cgroup, verified by the k8s
//! attestor before it reports `k8s:pod-uid`), else its systemd system
//! unit (a root-owned cgroup, `systemd:unit`), else its uid on this node.
//! Within that boundary, only callers whose selectors give the
//! quarantined SPIFFE ID are refused that identity: an enforcement point
//! sharing the uid but running another program keeps its own.

use std::fmt;

use lanyard_core::Selector;
use serde::{Deserialize, Serialize};

/// The boundary of a workload on one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadScope {
    /// A Kubernetes pod, by UID.
    Pod(String),
    /// A systemd system unit, by name.
    Unit(String),
    /// A uid on this node.
    Uid(u32),
}

impl WorkloadScope {
    /// The scope a caller with `selectors` is in; `None` when they name
    /// none of the three (never for an attested unix caller).
    pub fn of(selectors: &[Selector]) -> Option<Self> {
        let value = |kind: &str, key: &str| {
            selectors
                .iter()
                .filter(|s| s.kind() == kind)
                .find_map(|s| s.value().strip_prefix(key))
                .filter(|v| !v.is_empty())
        };
        if let Some(pod) = value("k8s", "pod-uid:") {
            return Some(Self::Pod(pod.to_owned()));
        }
        if let Some(unit) = value("systemd", "unit:") {
            return Some(Self::Unit(unit.to_owned()));
        }
        value("unix", "uid:")
            .and_then(|u| u.parse().ok())
            .map(Self::Uid)
    }
}

impl fmt::Display for WorkloadScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(uid) => write!(f, "pod {uid}"),
            Self::Unit(name) => write!(f, "unit {name}"),
            Self::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_narrowest_boundary_wins() {
        let pod = sels(&[
            "unix:uid:0",
            "systemd:unit:cri-containerd-1.scope",
            "k8s:pod-uid:3b5d",
            "k8s:ns:agents",
        ]);
        assert_eq!(
            WorkloadScope::of(&pod),
            Some(WorkloadScope::Pod("3b5d".into()))
        );
        let unit = sels(&["unix:uid:1000", "systemd:unit:app.service"]);
        assert_eq!(
            WorkloadScope::of(&unit),
            Some(WorkloadScope::Unit("app.service".into()))
        );
        let uid = sels(&["unix:uid:1000", "unix:gid:1000"]);
        assert_eq!(WorkloadScope::of(&uid), Some(WorkloadScope::Uid(1000)));
        assert_eq!(WorkloadScope::of(&sels(&["unix:gid:5"])), None);
        assert_eq!(WorkloadScope::of(&[]), None);
        assert_eq!(WorkloadScope::Uid(7).to_string(), "uid 7");
    }
}
