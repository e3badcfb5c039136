//! SPIFFE IDs and trust domains, parsed and validated per the SPIFFE-ID
//! standard: `spiffe://<trust-domain>/<path>`.
//!
//! Both types are validated on construction and keep their fields private, so
//! a value of either type is always well formed. `FromStr` and `Display`
//! round-trip exactly.

use std::fmt;
use std::str::FromStr;

/// The URI scheme prefix every SPIFFE ID starts with.
pub const SCHEME_PREFIX: &str = "spiffe://";
/// Longest SPIFFE ID the standard allows, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a SPIFFE ID or trust domain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not begin with `spiffe://` (the scheme is case-sensitive).
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between the scheme and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain holds a character outside `[a-z0-9._-]`.
    #[error(
        "trust domain characters are limited to lowercase letters, digits, dots, dashes and underscores (found {0:?})"
    )]
    BadTrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// The path has an empty segment (`//` or a trailing `/`).
    #[error("path cannot contain empty segments or a trailing slash")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// A path segment holds a character outside `[a-zA-Z0-9._-]`.
    #[error(
        "path segment characters are limited to letters, digits, dots, dashes and underscores (found {0:?})"
    )]
    BadPathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust-domain
    /// SPIFFE ID (`spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if name.starts_with(SCHEME_PREFIX) {
            let id = SpiffeId::new(name)?;
            return Ok(id.trust_domain());
        }
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, which is also the
    /// key of its bundle in Workload API bundle maps.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// Builds a SPIFFE ID in this trust domain from already-split segments.
    pub fn id_with_segments<I, S>(&self, segments: I) -> Result<SpiffeId, SpiffeIdError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut s = self.id_string();
        for seg in segments {
            s.push('/');
            s.push_str(seg.as_ref());
        }
        SpiffeId::new(&s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://td/path`.
    id: String,
    /// Byte offset where the path starts (== `id.len()` when the path is empty).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = id
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let td_end = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..td_end];
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        validate_trust_domain(td)?;
        validate_path(&rest[td_end..])?;
        Ok(Self {
            id: id.to_owned(),
            path_start: SCHEME_PREFIX.len() + td_end,
        })
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The trust domain name without allocating.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..self.path_start]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// True when this is the ID of a trust domain itself (empty path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// True when the ID belongs to the given trust domain.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.name()
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty prefix.
    for seg in path.split('/').skip(1) {
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids_and_round_trips() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/workload",
            "spiffe://td/agent/planner",
            "spiffe://a-b_c.d/A/b.c/d-e_f",
            "spiffe://1.2.3.4/x",
            "spiffe://td/..a/a..",
        ] {
            let id = SpiffeId::new(s).unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<SpiffeId>().unwrap(), id);
        }
        let id = SpiffeId::new("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/a/b");
        assert!(!id.is_trust_domain_id());
        assert!(
            SpiffeId::new("spiffe://example.org")
                .unwrap()
                .is_trust_domain_id()
        );
    }

    #[test]
    fn refuses_every_invalid_form() {
        use SpiffeIdError::*;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://example.org/x", WrongScheme),
            ("SPIFFE://example.org/x", WrongScheme),
            ("spiffe:/example.org", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://Example.org/x", BadTrustDomainChar('E')),
            ("spiffe://example.org:8080/x", BadTrustDomainChar(':')),
            ("spiffe://user@example.org/x", BadTrustDomainChar('@')),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org//x", EmptySegment),
            ("spiffe://example.org/x/", EmptySegment),
            ("spiffe://example.org/./x", DotSegment),
            ("spiffe://example.org/x/..", DotSegment),
            ("spiffe://example.org/x?y=1", BadPathChar('?')),
            ("spiffe://example.org/x#frag", BadPathChar('#')),
            ("spiffe://example.org/x%20y", BadPathChar('%')),
            ("spiffe://example.org/x y", BadPathChar(' ')),
            ("spiffe://example.org/ü", BadPathChar('ü')),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::new(s).unwrap_err(), *want, "input {s:?}");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let long_path = "a".repeat(MAX_ID_LEN);
        assert_eq!(
            SpiffeId::new(&format!("spiffe://td/{long_path}")).unwrap_err(),
            SpiffeIdError::TooLong
        );
        let max = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN - 12));
        assert_eq!(max.len(), MAX_ID_LEN);
        assert!(SpiffeId::new(&max).is_ok());
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            TrustDomain::new(&long_td).unwrap_err(),
            SpiffeIdError::TrustDomainTooLong
        );
    }

    #[test]
    fn trust_domain_accepts_name_or_id() {
        let a = TrustDomain::new("example.org").unwrap();
        let b = TrustDomain::new("spiffe://example.org").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id_string(), "spiffe://example.org");
        assert!(TrustDomain::new("spiffe://example.org/x").is_ok());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("Bad").is_err());
        let id = a
            .id_with_segments(["lanyard", "agent", "join_token", "abc"])
            .unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://example.org/lanyard/agent/join_token/abc"
        );
        assert!(id.is_member_of(&a));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json_like("spiffe://td/x");
        assert_eq!(id.as_str(), "spiffe://td/x");
    }

    fn serde_json_like(s: &str) -> SpiffeId {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            s.into_deserializer();
        <SpiffeId as serde::Deserialize>::deserialize(d).unwrap()
    }
}

/// Generated-input checks: whatever the bytes, parsing never panics and an
/// accepted ID displays back to exactly its input.
#[cfg(test)]
mod generated {
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, options: &'a [&'a str]) -> &'a str {
            options[(self.next() % options.len() as u64) as usize]
        }
    }

    #[test]
    fn round_trip_over_generated_inputs() {
        let pieces = [
            "spiffe://",
            "SPIFFE://",
            "td",
            "example.org",
            "a-b_c",
            "/",
            "//",
            ".",
            "..",
            "x",
            "Y",
            "%20",
            "?",
            "#",
            ":80",
            "@",
            "é",
            "0",
            "-",
            "_",
        ];
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let n = 1 + g.next() % 8;
            let s: String = (0..n).map(|_| g.pick(&pieces)).collect();
            if let Ok(id) = SpiffeId::new(&s) {
                accepted += 1;
                assert_eq!(id.to_string(), s);
                assert_eq!(SpiffeId::new(id.as_str()).unwrap(), id);
                assert!(TrustDomain::new(id.trust_domain_name()).is_ok());
            }
        }
        assert!(
            accepted > 100,
            "the generator should produce valid IDs too ({accepted})"
        );
    }
}
