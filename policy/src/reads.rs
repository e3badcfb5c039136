//! Which principal attributes a policy reads, from its JSON form (Cedar's
//! EST), so that a decision made without one of them can fail closed: an
//! attribute access `principal.X` (or `principal["X"]`, the same node),
//! `principal has X`, and `principal in ...` (the node hierarchy), in the
//! scope or anywhere in the conditions.

use std::collections::BTreeSet;

use serde_json::Value;

/// The attributes that can be unknown to a deciding side.
pub(crate) const MAY_BE_UNKNOWN: [&str; 4] = ["node", "selectors", "exe_path", "exe_sha256"];

fn is_principal(v: Option<&Value>) -> bool {
    v.and_then(|v| v.get("Var"))
        .and_then(Value::as_str)
        .is_some_and(|s| s == "principal")
}

fn walk(v: &Value, out: &mut BTreeSet<&'static str>) {
    match v {
        Value::Object(m) => {
            for (k, inner) in m {
                match k.as_str() {
                    "." | "has" if is_principal(inner.get("left")) => {
                        let attr = inner.get("attr").and_then(Value::as_str);
                        if let Some(a) = MAY_BE_UNKNOWN.iter().find(|a| Some(**a) == attr) {
                            out.insert(a);
                        }
                    }
                    "in" if is_principal(inner.get("left")) => {
                        out.insert("node");
                    }
                    _ => {}
                }
                walk(inner, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

/// The attributes of [`MAY_BE_UNKNOWN`] that `policy` reads. A policy whose
/// JSON form cannot be had is taken to read them all (fail closed).
pub(crate) fn principal_reads(policy: &cedar_policy::Policy) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    let Ok(est) = policy.to_json() else {
        return MAY_BE_UNKNOWN.into_iter().collect();
    };
    // The scope: `principal in Lanyard::Node::"..."` (also `is ... in`).
    if let Some(scope) = est.get("principal")
        && (scope.get("op").and_then(Value::as_str) == Some("in") || scope.get("in").is_some())
    {
        out.insert("node");
    }
    walk(&est, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(text: &str) -> Vec<&'static str> {
        let p: cedar_policy::Policy = text.parse().unwrap();
        principal_reads(&p).into_iter().collect()
    }

    #[test]
    fn attribute_reads_are_found_wherever_they_stand() {
        assert!(reads("permit (principal, action, resource);").is_empty());
        assert_eq!(
            reads(r#"forbid (principal, action, resource) when { principal.exe_sha256 == "ab" };"#),
            ["exe_sha256"]
        );
        assert_eq!(
            reads(
                r#"forbid (principal, action, resource) unless { principal["node"] like "x*" || principal has selectors };"#
            ),
            ["node", "selectors"]
        );
        assert_eq!(
            reads(r#"permit (principal in Lanyard::Node::"spiffe://td/n", action, resource);"#),
            ["node"]
        );
        assert_eq!(
            reads(
                r#"forbid (principal, action, resource) when { principal in Lanyard::Node::"spiffe://td/n" && principal.exe_path == "/x" };"#
            ),
            ["exe_path", "node"]
        );
        assert!(
            reads(r#"permit (principal, action, resource) when { principal.spiffe_id == "x" && context.resource == "node" };"#)
                .is_empty()
        );
    }
}
