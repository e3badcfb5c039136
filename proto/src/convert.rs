//! The one boundary between protobuf messages and `lanyard-core` domain
//! types. Everything that arrives over the wire is validated here.

use std::time::Duration;

use lanyard_core::{
    EntryError, EntryId, RegistrationEntry, Selector, SelectorError, SpiffeId, SpiffeIdError,
    TaskLimits,
};

use crate::types;

/// Why a message could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A SPIFFE ID field is invalid.
    #[error("{field}: {source}")]
    SpiffeId {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        source: SpiffeIdError,
    },
    /// A selector is invalid.
    #[error("selector: {0}")]
    Selector(#[from] SelectorError),
    /// An entry rule is broken.
    #[error("{0}")]
    Entry(#[from] EntryError),
    /// A duration field is negative.
    #[error("{0} must not be negative")]
    Negative(&'static str),
    /// A required field is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A task field is invalid.
    #[error("{0}")]
    Task(#[from] lanyard_core::TaskError),
}

mod revocation;
mod task;
pub use task::{task_request, ttl_seconds};

/// Parses a SPIFFE ID field.
pub fn spiffe_id(field: &'static str, s: &str) -> Result<SpiffeId, ProtoError> {
    SpiffeId::new(s).map_err(|source| ProtoError::SpiffeId { field, source })
}

fn ttl(field: &'static str, secs: i64) -> Result<Option<Duration>, ProtoError> {
    match secs {
        0 => Ok(None),
        s if s < 0 => Err(ProtoError::Negative(field)),
        s => Ok(Some(Duration::from_secs(s.unsigned_abs()))),
    }
}

pub(crate) fn secs(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Converts an entry message. An empty `id` is refused: callers that create
/// entries assign the ID before converting.
impl TryFrom<types::Entry> for RegistrationEntry {
    type Error = ProtoError;

    fn try_from(e: types::Entry) -> Result<Self, Self::Error> {
        if e.id.is_empty() {
            return Err(ProtoError::Missing("entry id"));
        }
        let limits = e.task_limits.unwrap_or_default();
        Ok(RegistrationEntry {
            id: EntryId::new(&e.id)?,
            spiffe_id: spiffe_id("spiffe_id", &e.spiffe_id)?,
            parent_id: spiffe_id("parent_id", &e.parent_id)?,
            selectors: e
                .selectors
                .iter()
                .map(|s| s.parse::<Selector>())
                .collect::<Result<_, _>>()?,
            x509_ttl: ttl("x509_ttl", e.x509_ttl_seconds)?,
            jwt_ttl: ttl("jwt_ttl", e.jwt_ttl_seconds)?,
            dns_names: e.dns_names,
            hint: e.hint,
            require_task: e.require_task,
            enforcement_point: e.enforcement_point,
            task_limits: TaskLimits {
                allowed_task_types: limits.allowed_task_types,
                allowed_tools: limits.allowed_tools,
                max_task_ttl: ttl("max_task_ttl", limits.max_task_ttl_seconds)?,
                max_sensitivity: Some(limits.max_sensitivity).filter(|s| !s.is_empty()),
                allowed_credentials: limits.allowed_credentials,
            },
            revision: e.revision,
            created_at: u64::try_from(e.created_at).unwrap_or(0),
            created_at_nanos: e.created_at_nanos.min(999_999_999),
        })
    }
}

impl From<&RegistrationEntry> for types::Entry {
    fn from(e: &RegistrationEntry) -> Self {
        types::Entry {
            id: e.id.to_string(),
            spiffe_id: e.spiffe_id.to_string(),
            parent_id: e.parent_id.to_string(),
            selectors: e.selectors.iter().map(ToString::to_string).collect(),
            x509_ttl_seconds: secs(e.x509_ttl),
            jwt_ttl_seconds: secs(e.jwt_ttl),
            dns_names: e.dns_names.clone(),
            hint: e.hint.clone(),
            require_task: e.require_task,
            enforcement_point: e.enforcement_point,
            task_limits: Some(types::TaskLimits {
                allowed_task_types: e.task_limits.allowed_task_types.clone(),
                allowed_tools: e.task_limits.allowed_tools.clone(),
                max_task_ttl_seconds: secs(e.task_limits.max_task_ttl),
                max_sensitivity: e.task_limits.max_sensitivity.clone().unwrap_or_default(),
                allowed_credentials: e.task_limits.allowed_credentials.clone(),
            }),
            revision: e.revision,
            created_at: i64::try_from(e.created_at).unwrap_or(i64::MAX),
            created_at_nanos: e.created_at_nanos,
        }
    }
}

impl From<types::JwtAuthority> for lanyard_core::jwt::JwtAuthority {
    fn from(a: types::JwtAuthority) -> Self {
        Self {
            key_id: a.key_id,
            public_key: a.public_key,
            expires_at: u64::try_from(a.expires_at).unwrap_or(0),
        }
    }
}

impl From<&lanyard_core::jwt::JwtAuthority> for types::JwtAuthority {
    fn from(a: &lanyard_core::jwt::JwtAuthority) -> Self {
        Self {
            key_id: a.key_id.clone(),
            public_key: a.public_key.clone(),
            expires_at: i64::try_from(a.expires_at).unwrap_or(i64::MAX),
        }
    }
}

/// Converts JSON claims to a `google.protobuf.Struct` (the
/// `ValidateJWTSVIDResponse.claims` field).
pub fn json_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Renders a `google.protobuf.Struct` as JSON: the inverse of
/// [`json_to_struct`] (integral numbers come back as integers).
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::{Value as J, json};
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_claims_become_a_struct() {
        let v = serde_json::json!({"sub": "spiffe://td/w", "aud": ["a"], "exp": 5, "x": {"y": null, "b": true}});
        let s = super::json_to_struct(v.as_object().unwrap());
        assert_eq!(s.fields.len(), 4);
        use prost_types::value::Kind;
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(5.0)));
        assert!(matches!(&s.fields["aud"].kind, Some(Kind::ListValue(l)) if l.values.len() == 1));
        assert_eq!(super::struct_to_json(&s), v);
    }

    use super::*;

    fn msg() -> types::Entry {
        types::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://td/w".into(),
            parent_id: "spiffe://td/node/n1".into(),
            selectors: vec!["unix:uid:1000".into()],
            x509_ttl_seconds: 60,
            jwt_ttl_seconds: 0,
            dns_names: vec!["a.example".into()],
            hint: "h".into(),
            require_task: true,
            enforcement_point: true,
            task_limits: Some(types::TaskLimits {
                allowed_task_types: vec!["triage".into()],
                allowed_tools: vec!["search".into()],
                max_task_ttl_seconds: 300,
                max_sensitivity: "internal".into(),
                allowed_credentials: vec!["github".into()],
            }),
            revision: 3,
            created_at: 1_700_000_000,
            created_at_nanos: 123_456_789,
        }
    }

    #[test]
    fn entry_round_trips() {
        let m = msg();
        let e = RegistrationEntry::try_from(m.clone()).unwrap();
        assert_eq!(e.x509_ttl, Some(Duration::from_secs(60)));
        assert_eq!(e.jwt_ttl, None);
        assert_eq!(types::Entry::from(&e), m);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut m = msg();
        m.spiffe_id = "http://x".into();
        let err = RegistrationEntry::try_from(m).unwrap_err();
        assert!(err.to_string().starts_with("spiffe_id:"), "{err}");
        let mut m = msg();
        m.selectors = vec!["nocolon".into()];
        assert!(matches!(
            RegistrationEntry::try_from(m),
            Err(ProtoError::Selector(_))
        ));
        let mut m = msg();
        m.x509_ttl_seconds = -1;
        assert_eq!(
            RegistrationEntry::try_from(m).unwrap_err(),
            ProtoError::Negative("x509_ttl")
        );
        let mut m = msg();
        m.id.clear();
        assert_eq!(
            RegistrationEntry::try_from(m).unwrap_err(),
            ProtoError::Missing("entry id")
        );
    }
}
