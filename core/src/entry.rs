//! Registration entries: which SPIFFE ID a workload gets, under which agent,
//! for which attested selectors, and with which SVID lifetimes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Longest accepted entry ID.
pub const MAX_ENTRY_ID_LEN: usize = 64;
/// Most selectors one entry may carry.
pub const MAX_SELECTORS: usize = 64;
/// Most DNS names one entry may carry.
pub const MAX_DNS_NAMES: usize = 32;
/// Shortest SVID lifetime an entry may ask for. Production TTLs are tens of
/// seconds or more; a few seconds are allowed for rotation tests.
pub const MIN_SVID_TTL: Duration = Duration::from_secs(2);
/// Longest SVID lifetime an entry may ask for (short-lived credentials are the point).
pub const MAX_SVID_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The entry ID is empty, too long, or holds characters outside `[A-Za-z0-9_-]`.
    #[error("entry ID must be 1-{MAX_ENTRY_ID_LEN} characters of letters, digits, '-' or '_'")]
    BadId,
    /// The workload SPIFFE ID is in another trust domain.
    #[error("SPIFFE ID {0} is not in trust domain {1}")]
    ForeignSpiffeId(SpiffeId, TrustDomain),
    /// The parent ID is in another trust domain.
    #[error("parent ID {0} is not in trust domain {1}")]
    ForeignParentId(SpiffeId, TrustDomain),
    /// The workload SPIFFE ID has no path.
    #[error("SPIFFE ID {0} must have a path (the trust domain ID itself cannot be issued)")]
    NoPath(SpiffeId),
    /// The workload ID is in the reserved `/lanyard/` namespace.
    #[error("SPIFFE ID {0} is in the reserved /lanyard/ namespace")]
    Reserved(SpiffeId),
    /// No selectors at all: such an entry would match every process.
    #[error("an entry needs at least one selector")]
    NoSelectors,
    /// Only `unix:path` / `unix:sha256` selectors: they name a program, not
    /// a process boundary (any user can run the same binary, bind-mount
    /// another over the path, or exec it after connecting).
    #[error(
        "unix:path and unix:sha256 do not separate processes on their own: add a uid, gid, user, group, systemd unit or Kubernetes selector"
    )]
    NoBoundary,
    /// Too many selectors.
    #[error("an entry can have at most {MAX_SELECTORS} selectors")]
    TooManySelectors,
    /// A selector no attestor produces: it could never match.
    #[error(transparent)]
    UnknownSelector(#[from] crate::selector_kinds::UnknownSelector),
    /// A TTL outside the accepted range.
    #[error("{which} TTL must be between {min}s and {max}s", min = MIN_SVID_TTL.as_secs(), max = MAX_SVID_TTL.as_secs())]
    BadTtl {
        /// `x509` or `jwt`.
        which: &'static str,
    },
    /// A DNS name is not a valid hostname.
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
    /// Too many DNS names.
    #[error("an entry can have at most {MAX_DNS_NAMES} DNS names")]
    TooManyDnsNames,
    /// The hint is too long or has control characters.
    #[error("hint must be at most 256 printable characters")]
    BadHint,
    /// A task type, tool or task TTL limit that is not valid.
    #[error("task limits: {0}")]
    BadTaskLimits(String),
}

/// A registration entry's ID: opaque, URL-safe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct EntryId(String);

impl EntryId {
    /// Validates an entry ID.
    pub fn new(s: &str) -> Result<Self, EntryError> {
        if s.is_empty()
            || s.len() > MAX_ENTRY_ID_LEN
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(EntryError::BadId);
        }
        Ok(Self(s.to_owned()))
    }

    /// Makes an ID from 16 random bytes (hex, 32 characters).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EntryId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for EntryId {
    type Err = EntryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Limits on the tasks a workload may begin under this entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskLimits {
    /// Task types the workload may begin; empty permits none, `*` any.
    pub allowed_task_types: Vec<String>,
    /// Tools a task may be granted; empty permits none, `*` any.
    pub allowed_tools: Vec<String>,
    /// Longest task window; `None` uses the default (one hour).
    pub max_task_ttl: Option<Duration>,
    /// Highest data sensitivity level a task may be granted; `None`: any.
    #[serde(default)]
    pub max_sensitivity: Option<String>,
    /// Credential providers a task may be handed credentials from; empty
    /// permits none, `*` any.
    #[serde(default)]
    pub allowed_credentials: Vec<String>,
}

/// Most task types or tools one entry may list.
pub const MAX_TASK_LIMIT_ITEMS: usize = 256;
/// Longest task window an entry may allow.
pub const MAX_TASK_TTL: Duration = Duration::from_secs(24 * 3600);

impl TaskLimits {
    /// Checks the names (each a valid task type or tool, or `*`) and the
    /// TTL, and sorts and de-duplicates the lists.
    pub fn validate(mut self) -> Result<Self, EntryError> {
        let bad = |e: crate::task::TaskError| EntryError::BadTaskLimits(e.to_string());
        for (list, check) in [
            (
                &mut self.allowed_task_types,
                crate::task::check_task_type as fn(&str) -> Result<(), crate::task::TaskError>,
            ),
            (&mut self.allowed_tools, crate::task::check_tool),
            (
                &mut self.allowed_credentials,
                crate::task::check_credential_name,
            ),
        ] {
            if list.len() > MAX_TASK_LIMIT_ITEMS {
                return Err(EntryError::BadTaskLimits(format!(
                    "at most {MAX_TASK_LIMIT_ITEMS} task types, tools or credential providers"
                )));
            }
            list.iter()
                .filter(|s| s.as_str() != "*")
                .try_for_each(|s| check(s).map_err(bad))?;
            list.sort();
            list.dedup();
        }
        if let Some(t) = self.max_task_ttl
            && (t.is_zero() || t > MAX_TASK_TTL)
        {
            return Err(EntryError::BadTaskLimits(format!(
                "max task TTL must be between 1s and {}s",
                MAX_TASK_TTL.as_secs()
            )));
        }
        if let Some(level) = &self.max_sensitivity
            && !crate::task::SensitivityLevels::is_level_name(level)
        {
            return Err(EntryError::BadTaskLimits(format!(
                "invalid sensitivity level {level:?}"
            )));
        }
        Ok(self)
    }
}

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistrationEntry {
    /// Unique ID.
    pub id: EntryId,
    /// The identity issued to matching workloads.
    pub spiffe_id: SpiffeId,
    /// The agent (node) allowed to obtain this identity.
    pub parent_id: SpiffeId,
    /// Sorted, de-duplicated selectors that must all be attested.
    pub selectors: Vec<Selector>,
    /// X.509-SVID lifetime; `None` uses the server default.
    pub x509_ttl: Option<Duration>,
    /// JWT-SVID lifetime; `None` uses the server default.
    pub jwt_ttl: Option<Duration>,
    /// DNS SANs added to the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Free-form hint passed to workloads with the SVID.
    pub hint: String,
    /// No SVID outside a task.
    pub require_task: bool,
    /// Its workloads are enforcement points (may ask AuthorizeToolCall).
    #[serde(default)]
    pub enforcement_point: bool,
    /// Limits on tasks.
    pub task_limits: TaskLimits,
    /// Bumped on every update.
    pub revision: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// The nanoseconds within `created_at`'s second (0 for entries stored
    /// before it was recorded): with it, entries made in the same second
    /// keep the order they were made in.
    #[serde(default)]
    pub created_at_nanos: u32,
}

/// The order in which a workload's identities are served: the key of
/// [`RegistrationEntry::serving_order`].
pub type ServingOrder<'a> = (bool, &'a str, u64, u32, &'a EntryId);

impl RegistrationEntry {
    /// Where this entry stands among the identities of one workload: the
    /// first matching entry's SVID is the default one every SPIFFE client
    /// uses, so the order is fixed by the entries themselves and never by
    /// their random IDs. Entries that set a hint come first, in the byte
    /// order of their hints; then entries without one; within each, the
    /// older entry first (creation time, to the nanosecond); the entry ID
    /// breaks a tie only between entries made at the same instant. The key
    /// is stored with the entry, so it holds across agent restarts, entry
    /// updates (which keep the creation time) and several servers on one
    /// database.
    pub fn serving_order(&self) -> ServingOrder<'_> {
        (
            self.hint.is_empty(),
            self.hint.as_str(),
            self.created_at,
            self.created_at_nanos,
            &self.id,
        )
    }
}

impl RegistrationEntry {
    /// Checks every field against the rules, and normalises the selector and
    /// DNS name lists (sorted, de-duplicated).
    pub fn validate(mut self, td: &TrustDomain) -> Result<Self, EntryError> {
        if !self.spiffe_id.is_member_of(td) {
            return Err(EntryError::ForeignSpiffeId(self.spiffe_id, td.clone()));
        }
        if !self.parent_id.is_member_of(td) {
            return Err(EntryError::ForeignParentId(self.parent_id, td.clone()));
        }
        if self.spiffe_id.is_trust_domain_id() {
            return Err(EntryError::NoPath(self.spiffe_id));
        }
        if self.spiffe_id.path().starts_with("/lanyard/") {
            return Err(EntryError::Reserved(self.spiffe_id));
        }
        self.selectors.sort();
        self.selectors.dedup();
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        if self.selectors.len() > MAX_SELECTORS {
            return Err(EntryError::TooManySelectors);
        }
        for sel in &self.selectors {
            crate::selector_kinds::check_known(sel)?;
        }
        if !self.selectors.iter().any(Selector::is_boundary) {
            return Err(EntryError::NoBoundary);
        }
        check_ttl(self.x509_ttl, "x509")?;
        check_ttl(self.jwt_ttl, "jwt")?;
        self.dns_names.sort();
        self.dns_names.dedup();
        if self.dns_names.len() > MAX_DNS_NAMES {
            return Err(EntryError::TooManyDnsNames);
        }
        if let Some(bad) = self.dns_names.iter().find(|d| !is_dns_name(d)) {
            return Err(EntryError::BadDnsName(bad.clone()));
        }
        if self.hint.len() > 256 || self.hint.chars().any(char::is_control) {
            return Err(EntryError::BadHint);
        }
        self.task_limits = self.task_limits.validate()?;
        Ok(self)
    }
}

fn check_ttl(ttl: Option<Duration>, which: &'static str) -> Result<(), EntryError> {
    match ttl {
        Some(t) if !(MIN_SVID_TTL..=MAX_SVID_TTL).contains(&t) => Err(EntryError::BadTtl { which }),
        _ => Ok(()),
    }
}

/// True for a syntactically valid DNS host name (optionally with a leading
/// `*.` wildcard label).
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(td: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: EntryId::new("e1").unwrap(),
            spiffe_id: SpiffeId::new(&format!("spiffe://{td}/agent/planner")).unwrap(),
            parent_id: SpiffeId::new(&format!("spiffe://{td}/node/n1")).unwrap(),
            selectors: vec![
                "unix:uid:1000".parse().unwrap(),
                "unix:gid:1000".parse().unwrap(),
                "unix:uid:1000".parse().unwrap(),
            ],
            x509_ttl: Some(Duration::from_secs(60)),
            jwt_ttl: None,
            dns_names: vec!["b.example".into(), "a.example".into()],
            hint: "planner".into(),
            require_task: false,
            enforcement_point: false,
            task_limits: TaskLimits::default(),
            revision: 0,
            created_at: 0,
            created_at_nanos: 0,
        }
    }

    #[test]
    fn serving_order_hints_first_then_age_never_the_id() {
        let mk = |id: &str, hint: &str, secs: u64, nanos: u32| {
            let mut e = sample("td");
            e.id = EntryId::new(id).unwrap();
            e.hint = hint.into();
            e.created_at = secs;
            e.created_at_nanos = nanos;
            e
        };
        let mut v = [
            mk("a", "", 10, 500),
            mk("b", "", 10, 100),
            mk("c", "zeta", 20, 0),
            mk("d", "alpha", 30, 0),
            mk("e", "", 9, 999_999_999),
        ];
        v.sort_by(|x, y| x.serving_order().cmp(&y.serving_order()));
        let ids: Vec<&str> = v.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["d", "c", "e", "b", "a"]);
    }

    #[test]
    fn validation_normalises_and_accepts() {
        let td = TrustDomain::new("td").unwrap();
        let e = sample("td").validate(&td).unwrap();
        assert_eq!(e.selectors.len(), 2);
        assert_eq!(e.dns_names, vec!["a.example", "b.example"]);
    }

    #[test]
    fn validation_refuses_bad_fields() {
        let td = TrustDomain::new("td").unwrap();
        assert!(matches!(
            sample("other").validate(&td),
            Err(EntryError::ForeignSpiffeId(..))
        ));
        let mut e = sample("td");
        e.selectors.clear();
        assert_eq!(e.validate(&td), Err(EntryError::NoSelectors));
        let mut e = sample("td");
        e.x509_ttl = Some(Duration::from_secs(1));
        assert_eq!(e.validate(&td), Err(EntryError::BadTtl { which: "x509" }));
        let mut e = sample("td");
        e.spiffe_id = SpiffeId::new("spiffe://td").unwrap();
        assert!(matches!(e.validate(&td), Err(EntryError::NoPath(_))));
        let mut e = sample("td");
        e.spiffe_id = SpiffeId::new("spiffe://td/lanyard/server").unwrap();
        assert!(matches!(e.validate(&td), Err(EntryError::Reserved(_))));
        let mut e = sample("td");
        e.selectors = vec![
            "unix:path:/usr/bin/agent".parse().unwrap(),
            format!("unix:sha256:{}", "00ff".repeat(16))
                .parse()
                .unwrap(),
        ];
        assert_eq!(e.validate(&td), Err(EntryError::NoBoundary));
        let mut e = sample("td");
        e.selectors = vec![
            "unix:path:/usr/bin/agent".parse().unwrap(),
            "systemd:unit:agent.service".parse().unwrap(),
        ];
        assert!(e.validate(&td).is_ok());
        let mut e = sample("td");
        e.selectors = vec!["uid:1000".parse().unwrap()];
        assert!(matches!(
            e.validate(&td),
            Err(EntryError::UnknownSelector(_))
        ));
        let mut e = sample("td");
        e.selectors = vec!["unix:uid:abc".parse().unwrap()];
        assert!(matches!(
            e.validate(&td),
            Err(EntryError::UnknownSelector(_))
        ));
        let mut e = sample("td");
        e.dns_names = vec!["-bad.example".into()];
        assert!(matches!(e.validate(&td), Err(EntryError::BadDnsName(_))));
        for bad in ["GitHub", "a b", "-x", "a/b"] {
            let mut e = sample("td");
            e.task_limits.allowed_credentials = vec![bad.into()];
            assert!(
                matches!(e.validate(&td), Err(EntryError::BadTaskLimits(m)) if m.contains("credential provider")),
                "{bad}"
            );
        }
        let mut e = sample("td");
        e.task_limits.allowed_credentials = vec!["github".into(), "*".into(), "github".into()];
        let ok = e.validate(&td).unwrap();
        assert_eq!(ok.task_limits.allowed_credentials, ["*", "github"]);
    }

    #[test]
    fn entry_ids() {
        assert!(EntryId::new("abc-DEF_123").is_ok());
        assert!(EntryId::new("").is_err());
        assert!(EntryId::new("a/b").is_err());
        assert!(EntryId::new(&"a".repeat(65)).is_err());
        assert_eq!(EntryId::from_random([0xab; 16]).as_str().len(), 32);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("a.example.org"));
        assert!(is_dns_name("*.example.org"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("a_b.org"));
        assert!(!is_dns_name(""));
    }
}
