//! The revocation set: revoked X.509 serials, task IDs, JWT IDs and SPIFFE
//! IDs (every credential of an ID issued up to a moment), each kept only
//! until what it revokes has expired, so the set stays small.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::clock::unix_secs;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedKind {
    /// An X.509 serial number (lowercase hex, no leading zeros).
    Serial,
    /// A task ID: every credential carrying it.
    Task,
    /// A JWT ID (`jti`).
    Jwt,
    /// A SPIFFE ID: every credential for it issued at or before `revoked_at`.
    SpiffeId,
}

impl RevokedKind {
    /// The name used in keys and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Task => "task",
            Self::Jwt => "jwt",
            Self::SpiffeId => "spiffe_id",
        }
    }
}

impl fmt::Display for RevokedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What kind of credential.
    pub kind: RevokedKind,
    /// The serial, task ID, JWT ID or SPIFFE ID.
    pub value: String,
    /// When it was revoked (Unix seconds).
    pub revoked_at: u64,
    /// When what it revokes has expired and the revocation can be dropped.
    pub expires_at: u64,
    /// Why (shown to operators and in denials).
    pub reason: String,
    /// For a serial: the subject key ID (hex) of the CA that issued it,
    /// which signs the CRL listing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl Revocation {
    /// Its key in the set and in the store: `kind:value`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind, self.value)
    }
}

/// Lowercase hex without leading zeros (`"0"` for zero): the one form
/// serials are compared in, whatever way a certificate or CLI wrote them.
pub fn normalize_serial(serial: &str) -> String {
    let s = serial
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_ascii_lowercase();
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// True when `s` is a serial number in hex (colons allowed).
pub fn is_serial(s: &str) -> bool {
    let t = s.trim().trim_start_matches("0x").replace(':', "");
    !t.is_empty() && t.len() <= 40 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The revocations in force, indexed for lookups on every call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    by_key: HashMap<(RevokedKind, String), Revocation>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding `items`.
    pub fn from_items(items: impl IntoIterator<Item = Revocation>) -> Self {
        let mut s = Self::new();
        for r in items {
            s.insert(r);
        }
        s
    }

    /// Adds (or replaces) one revocation; true when the set changed.
    pub fn insert(&mut self, mut r: Revocation) -> bool {
        if r.kind == RevokedKind::Serial {
            r.value = normalize_serial(&r.value);
        }
        let k = (r.kind, r.value.clone());
        if self.by_key.get(&k) == Some(&r) {
            return false;
        }
        self.by_key.insert(k, r);
        true
    }

    /// Removes one; true when it was there.
    pub fn remove(&mut self, kind: RevokedKind, value: &str) -> bool {
        self.by_key.remove(&(kind, value.to_owned())).is_some()
    }

    /// The revocation of `kind` and `value`, if any.
    pub fn get(&self, kind: RevokedKind, value: &str) -> Option<&Revocation> {
        let value = if kind == RevokedKind::Serial {
            normalize_serial(value)
        } else {
            value.to_owned()
        };
        self.by_key.get(&(kind, value))
    }

    /// Why a credential with these attributes is revoked, if it is: its
    /// serial (X.509), JWT ID, task ID, or its SPIFFE ID revoked at or after
    /// it was issued.
    pub fn check(&self, c: &CredentialRef<'_>) -> Option<&Revocation> {
        let by_serial = c.serial.and_then(|s| self.get(RevokedKind::Serial, s));
        let by_jti = c.jwt_id.and_then(|j| self.get(RevokedKind::Jwt, j));
        let by_task = c.task_id.and_then(|t| self.get(RevokedKind::Task, t));
        let by_id = self
            .get(RevokedKind::SpiffeId, c.spiffe_id)
            .filter(|r| unix_secs(c.issued_at) <= r.revoked_at);
        by_serial.or(by_jti).or(by_task).or(by_id)
    }

    /// Drops what has expired by `now`; returns how many.
    pub fn prune(&mut self, now: SystemTime) -> usize {
        let now = unix_secs(now);
        let before = self.by_key.len();
        self.by_key.retain(|_, r| r.expires_at > now);
        before - self.by_key.len()
    }

    /// Whether any revocation has expired by `now` (what [`Self::prune`]
    /// would remove), without changing or copying the set.
    pub fn has_expired(&self, now: SystemTime) -> bool {
        let now = unix_secs(now);
        self.by_key.values().any(|r| r.expires_at <= now)
    }

    /// Every revocation, in key order.
    pub fn items(&self) -> Vec<&Revocation> {
        let mut v: Vec<&Revocation> = self.by_key.values().collect();
        v.sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
        v
    }

    /// Revoked serials issued by the CA with subject key ID `issuer`.
    pub fn serials_of(&self, issuer: &str) -> Vec<&Revocation> {
        self.items()
            .into_iter()
            .filter(|r| r.kind == RevokedKind::Serial && r.issuer.as_deref() == Some(issuer))
            .collect()
    }

    /// How many revocations.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The attributes of a credential a revocation can name.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRef<'a> {
    /// Its SPIFFE ID.
    pub spiffe_id: &'a str,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// X.509 serial.
    pub serial: Option<&'a str>,
    /// JWT ID.
    pub jwt_id: Option<&'a str>,
    /// Task ID from its claims.
    pub task_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix_secs;

    fn rev(kind: RevokedKind, value: &str, revoked_at: u64, expires_at: u64) -> Revocation {
        Revocation {
            kind,
            value: value.into(),
            revoked_at,
            expires_at,
            reason: "test".into(),
            issuer: None,
        }
    }

    fn cred<'a>(id: &'a str, issued: u64) -> CredentialRef<'a> {
        CredentialRef {
            spiffe_id: id,
            issued_at: from_unix_secs(issued),
            serial: None,
            jwt_id: None,
            task_id: None,
        }
    }

    #[test]
    fn serials_compare_in_one_form() {
        assert_eq!(normalize_serial("00:AB:0c"), "ab0c");
        assert_eq!(normalize_serial("0x00ff"), "ff");
        assert_eq!(normalize_serial("000"), "0");
        assert!(is_serial("00:ab"));
        assert!(!is_serial("spiffe://td/x"));
        assert!(!is_serial(""));
        let mut s = RevocationSet::new();
        s.insert(rev(RevokedKind::Serial, "00AB", 1, 100));
        let c = CredentialRef {
            serial: Some("ab"),
            ..cred("spiffe://td/w", 5)
        };
        assert!(s.check(&c).is_some());
    }

    #[test]
    fn each_kind_revokes_what_it_names_only() {
        let s = RevocationSet::from_items([
            rev(RevokedKind::Task, "t1", 10, 100),
            rev(RevokedKind::Jwt, "j1", 10, 100),
            rev(RevokedKind::SpiffeId, "spiffe://td/a", 50, 100),
        ]);
        let mut c = cred("spiffe://td/w", 5);
        assert!(s.check(&c).is_none());
        c.task_id = Some("t1");
        assert_eq!(s.check(&c).map(|r| r.kind), Some(RevokedKind::Task));
        c.task_id = Some("t2");
        c.jwt_id = Some("j1");
        assert_eq!(s.check(&c).map(|r| r.kind), Some(RevokedKind::Jwt));
        // A SPIFFE ID revocation covers what was issued up to it, not after.
        assert!(s.check(&cred("spiffe://td/a", 50)).is_some());
        assert!(s.check(&cred("spiffe://td/a", 51)).is_none());
    }

    #[test]
    fn prune_drops_only_the_expired() {
        let mut s = RevocationSet::from_items([
            rev(RevokedKind::Task, "old", 1, 10),
            rev(RevokedKind::Task, "new", 1, 20),
        ]);
        assert_eq!(s.prune(from_unix_secs(10)), 1);
        assert_eq!(s.len(), 1);
        assert!(s.get(RevokedKind::Task, "new").is_some());
        assert!(!s.insert(rev(RevokedKind::Task, "new", 1, 20)));
        assert!(s.remove(RevokedKind::Task, "new"));
        assert!(s.is_empty());
    }
}
