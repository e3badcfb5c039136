//! The people who may approve calls that a policy holds for approval:
//! `[[approver]]` tables of the server configuration, and `approval_ttl`.
//!
//! ```toml
//! approval_ttl = "5m"          # how long a request waits by default
//!
//! [[approver]]
//! name = "user:alice@example.com"
//! groups = ["payments-approvers"]
//! webhook = "https://chat.example.com/hooks/lanyard"   # optional
//! webhook_secret_file = "/etc/lanyard/alice-hook.key"
//!
//! [[approver_group]]                   # a webhook for a whole group
//! name = "payments-approvers"
//! webhook = "https://pager.example.com/lanyard"
//! webhook_secret_file = "/etc/lanyard/payments-hook.key"
//! ```
//!
//! Nobody else can approve: the admin socket's `approval approve --as
//! NAME` and the console accept only a declared name. A name is what a
//! task's `on_behalf_of` says (e.g. `user:alice@example.com`), never a
//! SPIFFE ID: a workload cannot be an approver.

use std::time::Duration;

use lanyard_core::config::ConfigError;
use lanyard_core::duration::parse_duration;
use lanyard_policy::approval::{Approvers, MAX_TTL, valid_group};

/// Default time a request waits for its answer.
pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(300);

/// One `[[approver]]` table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprover {
    /// The person, as tasks name them in `on_behalf_of`
    /// (e.g. `user:alice@example.com`).
    pub name: Option<String>,
    /// Groups that `@approval("group:NAME")` names.
    pub groups: Option<Vec<String>>,
    /// Told of every request this approver may answer.
    pub webhook: Option<String>,
    /// The webhook's HMAC key (at least 16 bytes).
    pub webhook_secret_file: Option<std::path::PathBuf>,
}

/// One `[[approver_group]]` table: a webhook for a group.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproverGroup {
    /// The group.
    pub name: Option<String>,
    /// Told of every request a member of the group may answer.
    pub webhook: Option<String>,
    /// The webhook's HMAC key (at least 16 bytes).
    pub webhook_secret_file: Option<std::path::PathBuf>,
}

/// Where requests are announced, and the key their bodies are signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `https://` (or `http://` on loopback).
    pub url: String,
    /// HMAC-SHA256 key.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A declared approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// Name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Told of every request this approver may answer.
    pub webhook: Option<Webhook>,
}

/// Who may approve, and the default wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Declared approvers.
    pub approvers: Vec<Approver>,
    /// How long a request waits when its policy does not say.
    pub default_ttl: Duration,
    /// Webhooks per group.
    pub group_webhooks: Vec<(String, Webhook)>,
    /// PEM CA certificates trusted for webhook URLs (the system's roots
    /// otherwise).
    pub webhook_ca_file: Option<std::path::PathBuf>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            approvers: vec![],
            default_ttl: DEFAULT_APPROVAL_TTL,
            group_webhooks: vec![],
            webhook_ca_file: None,
        }
    }
}

impl ApprovalSettings {
    /// The webhooks told of a request `eligible` may answer, whose
    /// policies name `groups`: each URL once.
    pub fn webhooks_for(&self, eligible: &[String], groups: &[String]) -> Vec<Webhook> {
        let mut out: Vec<Webhook> = Vec::new();
        let approvers = self
            .approvers
            .iter()
            .filter(|a| eligible.contains(&a.name))
            .filter_map(|a| a.webhook.clone());
        let groups = self
            .group_webhooks
            .iter()
            .filter(|(g, _)| groups.contains(g))
            .map(|(_, w)| w.clone());
        for w in approvers.chain(groups) {
            if !out.iter().any(|o| o.url == w.url) {
                out.push(w);
            }
        }
        out
    }

    /// The declared approver called `name`.
    pub fn approver(&self, name: &str) -> Option<&Approver> {
        self.approvers.iter().find(|a| a.name == name)
    }

    /// The declared approvers who satisfy every requirement, for a task
    /// acting for `on_behalf_of`; or why nobody can.
    pub fn eligible(
        &self,
        needs: &[Approvers],
        on_behalf_of: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = Vec::new();
        for a in &self.approvers {
            if needs.iter().all(|n| match n {
                Approvers::Requester => on_behalf_of == Some(a.name.as_str()),
                Approvers::AnyOperator => true,
                Approvers::Group(g) => a.groups.iter().any(|x| x == g),
            }) {
                out.push(a.name.clone());
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if needs.contains(&Approvers::Requester) {
            return Err(match on_behalf_of {
                None => "the policy asks the requester to approve, and the task acts on behalf of nobody".to_owned(),
                Some(o) if self.approver(o).is_none() => format!(
                    "the policy asks the requester to approve, and {o:?} (the task's on_behalf_of) is not a declared approver"
                ),
                Some(o) => format!("{o:?} does not satisfy every approval the policies ask for"),
            });
        }
        let wanted: Vec<String> = needs.iter().map(ToString::to_string).collect();
        Err(format!(
            "no declared approver satisfies {}",
            wanted.join(" and ")
        ))
    }
}

/// A webhook's URL and key file, both or neither.
fn webhook(
    who: &str,
    url: Option<String>,
    secret_file: Option<std::path::PathBuf>,
) -> Result<Option<Webhook>, ConfigError> {
    const F: &str = "webhook";
    let (url, file) = match (url, secret_file) {
        (None, None) => return Ok(None),
        (Some(u), Some(f)) => (u, f),
        _ => {
            return Err(ConfigError::invalid(
                F,
                format!("{who}: webhook and webhook_secret_file go together"),
            ));
        }
    };
    let loopback = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split(['/', ':']).next())
        .is_some_and(|h| h == "localhost" || h.starts_with("127."));
    if !(url.starts_with("https://") || loopback) {
        return Err(ConfigError::invalid(
            F,
            format!("{who}: {url:?} must be an https:// URL (http:// only on loopback)"),
        ));
    }
    let secret = std::fs::read(&file).map_err(|e| {
        ConfigError::invalid(
            F,
            format!("{who}: webhook_secret_file {}: {e}", file.display()),
        )
    })?;
    let secret = secret.trim_ascii().to_vec();
    if secret.len() < 16 {
        return Err(ConfigError::invalid(
            F,
            format!(
                "{who}: webhook_secret_file {} holds fewer than 16 bytes",
                file.display()
            ),
        ));
    }
    Ok(Some(Webhook { url, secret }))
}

/// Checks the tables and the default wait.
pub fn validate(raw: Vec<RawApprover>, ttl: Option<&str>) -> Result<ApprovalSettings, ConfigError> {
    validate_all(raw, vec![], ttl, None)
}

/// Checks the approvers, the group webhooks and the default wait.
pub fn validate_all(
    raw: Vec<RawApprover>,
    raw_groups: Vec<RawApproverGroup>,
    ttl: Option<&str>,
    webhook_ca_file: Option<std::path::PathBuf>,
) -> Result<ApprovalSettings, ConfigError> {
    const F: &str = "approver";
    let default_ttl = match ttl {
        None => DEFAULT_APPROVAL_TTL,
        Some(t) => {
            let d = parse_duration(t).map_err(|e| ConfigError::invalid("approval_ttl", e))?;
            if d < Duration::from_secs(1) || d > MAX_TTL {
                return Err(ConfigError::invalid(
                    "approval_ttl",
                    "must be between 1s and 24h",
                ));
            }
            d
        }
    };
    let mut approvers: Vec<Approver> = Vec::new();
    for r in raw {
        let name = r.name.unwrap_or_default();
        if name.is_empty()
            || name.len() > 256
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::invalid(
                F,
                "every [[approver]] needs name = \"user:NAME\" (1 to 256 characters, no spaces)",
            ));
        }
        if name.starts_with("spiffe://") {
            return Err(ConfigError::invalid(
                F,
                format!(
                    "{name:?}: an approver is a person, not a workload's SPIFFE ID (an approval never comes from a workload)"
                ),
            ));
        }
        if approvers.iter().any(|a| a.name == name) {
            return Err(ConfigError::invalid(
                F,
                format!("{name:?} is declared twice"),
            ));
        }
        let groups = r.groups.unwrap_or_default();
        if let Some(g) = groups.iter().find(|g| !valid_group(g)) {
            return Err(ConfigError::invalid(
                F,
                format!("{name:?}: group {g:?} must be 1 to 64 letters, digits, '.', '_' or '-'"),
            ));
        }
        let webhook = webhook(&name, r.webhook, r.webhook_secret_file)?;
        approvers.push(Approver {
            name,
            groups,
            webhook,
        });
    }
    let mut group_webhooks = Vec::new();
    for g in raw_groups {
        let name = g.name.unwrap_or_default();
        if !valid_group(&name) {
            return Err(ConfigError::invalid(
                "approver_group",
                format!("name {name:?}: 1 to 64 letters, digits, '.', '_' or '-'"),
            ));
        }
        if let Some(w) = webhook(&name, g.webhook, g.webhook_secret_file)? {
            group_webhooks.push((name, w));
        }
    }
    Ok(ApprovalSettings {
        approvers,
        default_ttl,
        group_webhooks,
        webhook_ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, groups: &[&str]) -> RawApprover {
        RawApprover {
            name: Some(name.into()),
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn approvers_are_people_declared_once() {
        let s = validate(
            vec![
                raw("user:alice@example.com", &["payments"]),
                raw("user:bob@example.com", &[]),
            ],
            Some("2m"),
        )
        .unwrap();
        assert_eq!(s.default_ttl, Duration::from_secs(120));
        for (bad, want) in [
            (vec![raw("spiffe://td/agent", &[])], "not a workload"),
            (vec![raw("", &[])], "needs name"),
            (vec![raw("user:a b", &[])], "no spaces"),
            (vec![raw("user:a", &[]), raw("user:a", &[])], "twice"),
            (vec![raw("user:a", &["bad group"])], "group"),
        ] {
            let e = validate(bad, None).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(validate(vec![], Some("0s")).is_err());
        assert!(validate(vec![], Some("2d")).is_err());
    }

    #[test]
    fn eligibility_meets_every_requirement() {
        let s = validate(
            vec![
                raw("user:alice@example.com", &["payments"]),
                raw("user:bob@example.com", &[]),
            ],
            None,
        )
        .unwrap();
        let alice = Some("user:alice@example.com");
        assert_eq!(
            s.eligible(&[Approvers::AnyOperator], None).unwrap(),
            vec!["user:alice@example.com", "user:bob@example.com"]
        );
        assert_eq!(
            s.eligible(&[Approvers::Requester], alice).unwrap(),
            vec!["user:alice@example.com"]
        );
        assert_eq!(
            s.eligible(&[Approvers::Group("payments".into())], None)
                .unwrap(),
            vec!["user:alice@example.com"]
        );
        // Requester and group: both must hold for the same person.
        let e = s
            .eligible(
                &[Approvers::Requester, Approvers::Group("payments".into())],
                Some("user:bob@example.com"),
            )
            .unwrap_err();
        assert!(e.contains("does not satisfy"), "{e}");
        let e = s
            .eligible(&[Approvers::Requester], Some("user:mallory@example.com"))
            .unwrap_err();
        assert!(e.contains("not a declared approver"), "{e}");
        let e = s.eligible(&[Approvers::Requester], None).unwrap_err();
        assert!(e.contains("on behalf of nobody"), "{e}");
        let e = s
            .eligible(&[Approvers::Group("nobody".into())], None)
            .unwrap_err();
        assert!(
            e.contains("no declared approver satisfies group:nobody"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    #[test]
    fn webhooks_need_a_key_and_https() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "tooshort").unwrap();
        let raw = |url: &str, file: Option<&std::path::Path>| RawApprover {
            name: Some("user:a".into()),
            webhook: Some(url.into()),
            webhook_secret_file: file.map(std::path::Path::to_owned),
            ..Default::default()
        };
        let s = validate(vec![raw("https://chat.example.com/h", Some(&good))], None).unwrap();
        let w = s.approvers[0].webhook.as_ref().unwrap();
        assert_eq!(w.secret, b"0123456789abcdef0123");
        assert!(
            !format!("{w:?}").contains("0123456789"),
            "the key is not logged"
        );
        validate(vec![raw("http://127.0.0.1:9/h", Some(&good))], None).unwrap();
        for (r, want) in [
            (raw("https://x/h", None), "go together"),
            (raw("http://chat.example.com/h", Some(&good)), "https://"),
            (raw("https://x/h", Some(&short)), "fewer than 16 bytes"),
            (
                raw("https://x/h", Some(&dir.path().join("missing"))),
                "webhook_secret_file",
            ),
        ] {
            let e = validate(vec![r], None).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let g = |name: &str| RawApproverGroup {
            name: Some(name.into()),
            webhook: Some("https://pager.example.com".into()),
            webhook_secret_file: Some(good.clone()),
        };
        let s = validate_all(vec![], vec![g("payments")], None, None).unwrap();
        assert_eq!(
            s.webhooks_for(&[], &["payments".into()])
                .iter()
                .map(|w| w.url.as_str())
                .collect::<Vec<_>>(),
            vec!["https://pager.example.com"]
        );
        assert!(validate_all(vec![], vec![g("bad group")], None, None).is_err());
    }
}
