//! The selectors Lanyard's attestors produce, so that an entry naming one
//! they never produce (`uid:1000` without its type, `foo:bar`,
//! `unix:uid:abc`) is refused when it is written instead of silently never
//! matching. Types and keys are exactly what the attestors emit:
//! `agent/src/attestor/` (unix, systemd), `core/src/k8s/pods.rs` (k8s) and
//! the server's PSAT node attestor (k8s_psat).

use crate::selector::Selector;

/// Why a selector can never match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownSelector {
    /// No attestor produces this type.
    #[error(
        "unknown selector type {kind:?} in {selector:?}: the types are unix, systemd, k8s and k8s_psat"
    )]
    Type {
        /// The whole selector.
        selector: String,
        /// Its type.
        kind: String,
    },
    /// The attestor of this type produces no such key.
    #[error("unknown {kind} selector {selector:?}: {kind} selectors are {accepted}")]
    Key {
        /// The whole selector.
        selector: String,
        /// Its type.
        kind: &'static str,
        /// What the type accepts.
        accepted: &'static str,
    },
    /// The key is known; the value can never be attested.
    #[error("selector {selector:?}: {why}")]
    Value {
        /// The whole selector.
        selector: String,
        /// What the value must be.
        why: &'static str,
    },
}

const UNIX: &str = "uid:N, gid:N, user:NAME, group:NAME, path:/ABSOLUTE/PATH, sha256:HEX (64 lowercase hex digits)";
const SYSTEMD: &str = "unit:NAME";
const K8S: &str = "ns:, sa:, pod-name:, pod-uid:, pod-label:KEY:VALUE, container-name:, container-image:, node-name:";
const K8S_PSAT: &str = "cluster:, agent_ns:, agent_sa:, agent_node_name:, agent_node_uid:, agent_pod_name:, agent_pod_uid:";

/// Checks that some attestor can produce `s`.
pub fn check_known(s: &Selector) -> Result<(), UnknownSelector> {
    let whole = || s.to_string();
    let bad_value = |why| UnknownSelector::Value {
        selector: whole(),
        why,
    };
    let (kind, accepted): (&'static str, &'static str) = match s.kind() {
        "unix" => ("unix", UNIX),
        "systemd" => ("systemd", SYSTEMD),
        "k8s" => ("k8s", K8S),
        "k8s_psat" => ("k8s_psat", K8S_PSAT),
        other => {
            return Err(UnknownSelector::Type {
                selector: whole(),
                kind: other.to_owned(),
            });
        }
    };
    let unknown_key = || UnknownSelector::Key {
        selector: whole(),
        kind,
        accepted,
    };
    let (key, value) = s.value().split_once(':').ok_or_else(unknown_key)?;
    if value.is_empty() {
        return Err(bad_value("the value after the key is empty"));
    }
    match (kind, key) {
        ("unix", "uid" | "gid") => {
            if value.parse::<u32>().is_err() || (value.len() > 1 && value.starts_with('0')) {
                return Err(bad_value("uid and gid are decimal numbers"));
            }
        }
        ("unix", "user" | "group") => {}
        ("unix", "path") => {
            if !value.starts_with('/') {
                return Err(bad_value("path must be absolute"));
            }
        }
        ("unix", "sha256") => {
            if value.len() != 64
                || !value
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(bad_value("sha256 is 64 lowercase hex digits"));
            }
        }
        ("systemd", "unit") => {}
        ("k8s", "pod-label") => {
            if value.split_once(':').is_none_or(|(k, _)| k.is_empty()) {
                return Err(bad_value("pod-label is pod-label:KEY:VALUE"));
            }
        }
        (
            "k8s",
            "ns" | "sa" | "pod-name" | "pod-uid" | "container-name" | "container-image"
            | "node-name",
        ) => {}
        (
            "k8s_psat",
            "cluster" | "agent_ns" | "agent_sa" | "agent_node_name" | "agent_node_uid"
            | "agent_pod_name" | "agent_pod_uid",
        ) => {}
        _ => return Err(unknown_key()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<(), UnknownSelector> {
        check_known(&s.parse().unwrap())
    }

    #[test]
    fn what_the_attestors_produce_is_accepted() {
        for s in [
            "unix:uid:0",
            "unix:uid:1000",
            "unix:gid:4294967295",
            "unix:user:alice",
            "unix:group:staff",
            "unix:path:/usr/bin/agent",
            &format!("unix:sha256:{}", "ab".repeat(32)),
            "systemd:unit:agent.service",
            "k8s:ns:default",
            "k8s:pod-label:app.kubernetes.io/name:planner",
            "k8s:container-image:ghcr.io/x/y@sha256:00",
            "k8s_psat:cluster:prod",
            "k8s_psat:agent_node_name:n1",
        ] {
            assert_eq!(check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn what_can_never_match_is_refused_naming_what_is_accepted() {
        let e = check("uid:1000").unwrap_err().to_string();
        assert!(e.contains("unknown selector type \"uid\""), "{e}");
        assert!(e.contains("unix, systemd, k8s and k8s_psat"), "{e}");
        let e = check("foo:bar").unwrap_err().to_string();
        assert!(e.contains("\"foo\""), "{e}");
        let e = check("unix:uid:abc").unwrap_err().to_string();
        assert!(e.contains("decimal"), "{e}");
        let e = check("unix:pid:1").unwrap_err().to_string();
        assert!(e.contains("uid:N"), "{e}");
        for bad in [
            "unix:uid:-1",
            "unix:uid:01",
            "unix:uid:4294967296",
            "unix:path:relative",
            "unix:sha256:ABCD",
            "unix:uid",
            "k8s:pod-label:nokey",
            "k8s:namespace:default",
            "systemd:slice:x",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
