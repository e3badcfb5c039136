//! The record: what happened ([`Event`], filled in by whoever saw it) and
//! where it sits in a chain ([`seal`] adds the version, chain, sequence
//! number, previous hash and its own hash).
//!
//! A record's text is its RFC 8785 canonical JSON, so the same record is
//! the same bytes on every machine and in every version that writes it;
//! its hash is `SHA-256(prev_hash || canonical JSON without "hash")`, so a
//! verifier needs nothing but the text (fields it does not know, from a
//! later version, are hashed as they are).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::task::{CanonicalError, canonical_json};

/// The hash before the first record of a chain (`prev` of seq 1).
pub const GENESIS: [u8; 32] = [0; 32];

/// Why a record could not be sealed or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A value in the record has no canonical JSON form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// The record is not a JSON object of the expected shape.
    #[error("not an audit record: {0}")]
    Shape(String),
}

/// What kind of event a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A node attested (join token redeemed, agent SVID signed).
    #[serde(rename = "node.attested")]
    NodeAttested,
    /// A node attestation was refused.
    #[serde(rename = "node.refused")]
    NodeRefused,
    /// An agent renewed its own SVID.
    #[serde(rename = "agent.renewed")]
    AgentRenewed,
    /// An operator evicted an agent.
    #[serde(rename = "agent.evicted")]
    AgentEvicted,
    /// An operator banned an agent.
    #[serde(rename = "agent.banned")]
    AgentBanned,
    /// An X.509-SVID was signed for a workload.
    #[serde(rename = "svid.issued")]
    SvidIssued,
    /// A JWT-SVID was signed.
    #[serde(rename = "jwt.issued")]
    JwtIssued,
    /// A task was granted.
    #[serde(rename = "task.begun")]
    TaskBegun,
    /// A task was refused.
    #[serde(rename = "task.denied")]
    TaskDenied,
    /// A task ended (its holder ended it or exited).
    #[serde(rename = "task.ended")]
    TaskEnded,
    /// A task was revoked (by an operator, a quarantine or its parent).
    #[serde(rename = "task.revoked")]
    TaskRevoked,
    /// A task handed a delegation token to a sub-agent.
    #[serde(rename = "task.delegated")]
    TaskDelegated,
    /// A policy set was loaded.
    #[serde(rename = "policy.set")]
    PolicySet,
    /// A tool call was decided on a node agent.
    #[serde(rename = "tool.decision")]
    ToolDecision,
    /// Credentials were revoked.
    #[serde(rename = "revocation")]
    Revocation,
    /// A workload was quarantined.
    #[serde(rename = "quarantine.added")]
    QuarantineAdded,
    /// A quarantine was released.
    #[serde(rename = "quarantine.released")]
    QuarantineReleased,
    /// A pending quarantine put in force (an operator, or a second node).
    #[serde(rename = "quarantine.confirmed")]
    QuarantineConfirmed,
    /// A node's report of denied calls that the server did not believe.
    #[serde(rename = "enforcement.report_refused")]
    ReportRefused,
    /// Records an agent shipped skip sequence numbers: the missing ones
    /// never reached the chain (an anomaly `audit verify` reports).
    #[serde(rename = "audit.gap")]
    AuditGap,
    /// A registration entry was created.
    #[serde(rename = "entry.created")]
    EntryCreated,
    /// A registration entry was changed.
    #[serde(rename = "entry.updated")]
    EntryUpdated,
    /// A registration entry was deleted.
    #[serde(rename = "entry.deleted")]
    EntryDeleted,
    /// A join token was created.
    #[serde(rename = "token.created")]
    TokenCreated,
    /// A signing authority (X.509 CA and JWT key) was prepared.
    #[serde(rename = "authority.prepared")]
    AuthorityPrepared,
    /// A prepared authority became the active one.
    #[serde(rename = "authority.activated")]
    AuthorityActivated,
    /// An authority was tainted.
    #[serde(rename = "authority.tainted")]
    AuthorityTainted,
    /// A tainted authority was revoked (removed from the bundle).
    #[serde(rename = "authority.revoked")]
    AuthorityRevoked,
    /// A credential provider was declared (a secret named by its digest,
    /// never its value).
    #[serde(rename = "credential.added")]
    CredentialAdded,
    /// A secret provider's value was replaced.
    #[serde(rename = "credential.rotated")]
    CredentialRotated,
    /// A credential provider was removed.
    #[serde(rename = "credential.deleted")]
    CredentialDeleted,
    /// A credential was handed to a task (a lease began; the record names
    /// the provider, scopes and lease, never the credential).
    #[serde(rename = "credential.issued")]
    CredentialIssued,
    /// A task's request for a credential was refused.
    #[serde(rename = "credential.denied")]
    CredentialDenied,
    /// A lease ended with its task (and its token was revoked where the
    /// provider can).
    #[serde(rename = "credential.lease_ended")]
    CredentialLeaseEnded,
    /// A node agent served a credential it holds for a task again (from
    /// its cache, within the lease): recorded on the node, shipped.
    #[serde(rename = "credential.served")]
    CredentialServed,
    /// A call an enforcement point passed on (or refused) in the path, with
    /// its decision and its outcome (status, bytes each way, latency):
    /// recorded on the node, shipped.
    #[serde(rename = "tool.call")]
    ToolCall,
    /// A call a policy holds for a person's approval was put to the
    /// approvers.
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// A declared approver approved a held call.
    #[serde(rename = "approval.approved")]
    ApprovalApproved,
    /// A declared approver denied a held call.
    #[serde(rename = "approval.denied")]
    ApprovalDenied,
    /// An approved call was let through (once).
    #[serde(rename = "approval.used")]
    ApprovalUsed,
    /// A request lapsed unanswered (or approved and unused).
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// A request ended with its task (ended, revoked or quarantined).
    #[serde(rename = "approval.ended")]
    ApprovalEnded,
}

impl Kind {
    /// Every kind, in the order above.
    pub const ALL: [Kind; 42] = [
        Kind::NodeAttested,
        Kind::NodeRefused,
        Kind::AgentRenewed,
        Kind::AgentEvicted,
        Kind::AgentBanned,
        Kind::SvidIssued,
        Kind::JwtIssued,
        Kind::TaskBegun,
        Kind::TaskDenied,
        Kind::TaskEnded,
        Kind::TaskRevoked,
        Kind::TaskDelegated,
        Kind::PolicySet,
        Kind::ToolDecision,
        Kind::Revocation,
        Kind::QuarantineAdded,
        Kind::QuarantineReleased,
        Kind::QuarantineConfirmed,
        Kind::ReportRefused,
        Kind::AuditGap,
        Kind::EntryCreated,
        Kind::EntryUpdated,
        Kind::EntryDeleted,
        Kind::TokenCreated,
        Kind::AuthorityPrepared,
        Kind::AuthorityActivated,
        Kind::AuthorityTainted,
        Kind::AuthorityRevoked,
        Kind::CredentialAdded,
        Kind::CredentialRotated,
        Kind::CredentialDeleted,
        Kind::CredentialIssued,
        Kind::CredentialDenied,
        Kind::CredentialLeaseEnded,
        Kind::CredentialServed,
        Kind::ToolCall,
        Kind::ApprovalRequested,
        Kind::ApprovalApproved,
        Kind::ApprovalDenied,
        Kind::ApprovalUsed,
        Kind::ApprovalExpired,
        Kind::ApprovalEnded,
    ];

    /// The name records carry (`svid.issued`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NodeAttested => "node.attested",
            Kind::NodeRefused => "node.refused",
            Kind::AgentRenewed => "agent.renewed",
            Kind::AgentEvicted => "agent.evicted",
            Kind::AgentBanned => "agent.banned",
            Kind::SvidIssued => "svid.issued",
            Kind::JwtIssued => "jwt.issued",
            Kind::TaskBegun => "task.begun",
            Kind::TaskDenied => "task.denied",
            Kind::TaskEnded => "task.ended",
            Kind::TaskRevoked => "task.revoked",
            Kind::TaskDelegated => "task.delegated",
            Kind::PolicySet => "policy.set",
            Kind::ToolDecision => "tool.decision",
            Kind::Revocation => "revocation",
            Kind::QuarantineAdded => "quarantine.added",
            Kind::QuarantineReleased => "quarantine.released",
            Kind::QuarantineConfirmed => "quarantine.confirmed",
            Kind::ReportRefused => "enforcement.report_refused",
            Kind::AuditGap => "audit.gap",
            Kind::EntryCreated => "entry.created",
            Kind::EntryUpdated => "entry.updated",
            Kind::EntryDeleted => "entry.deleted",
            Kind::TokenCreated => "token.created",
            Kind::AuthorityPrepared => "authority.prepared",
            Kind::AuthorityActivated => "authority.activated",
            Kind::AuthorityTainted => "authority.tainted",
            Kind::AuthorityRevoked => "authority.revoked",
            Kind::CredentialAdded => "credential.added",
            Kind::CredentialRotated => "credential.rotated",
            Kind::CredentialDeleted => "credential.deleted",
            Kind::CredentialIssued => "credential.issued",
            Kind::CredentialDenied => "credential.denied",
            Kind::CredentialLeaseEnded => "credential.lease_ended",
            Kind::CredentialServed => "credential.served",
            Kind::ToolCall => "tool.call",
            Kind::ApprovalRequested => "approval.requested",
            Kind::ApprovalApproved => "approval.approved",
            Kind::ApprovalDenied => "approval.denied",
            Kind::ApprovalUsed => "approval.used",
            Kind::ApprovalExpired => "approval.expired",
            Kind::ApprovalEnded => "approval.ended",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown audit record kind {s:?}"))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Who or what an event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// SPIFFE ID (a workload's, an agent's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spiffe_id: String,
    /// The node (agent SPIFFE ID) it runs on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Process ID, where known.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pid: u64,
    /// SHA-256 of the executable, where known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exe_sha256: String,
}

impl Subject {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// The task an event belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    /// Task ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Delegation chain, outermost ancestor first (empty for a root task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl TaskRef {
    fn is_empty(&self) -> bool {
        self.id.is_empty() && self.chain.is_empty()
    }
}

/// IDs that tie a record to other systems' records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    /// A JWT-SVID's `jti`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// An X.509 serial (lowercase hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// A tool-call decision's ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision_id: String,
}

impl Correlation {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Where a record shipped by a node agent came from: the server sets the
/// agent from the authenticated connection; (agent, epoch, seq) is unique,
/// which is what makes delivery exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The agent's SPIFFE ID.
    pub agent: String,
    /// The agent's queue epoch (new with every new data dir).
    pub epoch: String,
    /// The record's number in that queue.
    pub seq: u64,
}

/// One event, before it is sealed into a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When it happened (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// What happened.
    pub kind: Kind,
    /// Who did it: an agent's or workload's SPIFFE ID, or `uid:N` for the
    /// admin socket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// Whom it is about.
    #[serde(default, skip_serializing_if = "Subject::is_empty")]
    pub subject: Subject,
    /// The task.
    #[serde(default, skip_serializing_if = "TaskRef::is_empty")]
    pub task: TaskRef,
    /// The tool called.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool: String,
    /// What it was called on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// `allow` or `deny`, for decisions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision: String,
    /// Why (a decision's reason, a refusal's error, an operator's word).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The deciding policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
    /// IDs shared with other records and systems.
    #[serde(default, skip_serializing_if = "Correlation::is_empty")]
    pub correlation: Correlation,
    /// Set by the server for records shipped by agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Kind-specific details (a JSON object; integers only).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl Event {
    /// An event of `kind` at `time` (RFC 3339), everything else empty.
    pub fn new(kind: Kind, time: String) -> Self {
        Self {
            time,
            kind,
            actor: String::new(),
            subject: Subject::default(),
            task: TaskRef::default(),
            tool: String::new(),
            resource: String::new(),
            decision: String::new(),
            reason: String::new(),
            policy_ids: vec![],
            correlation: Correlation::default(),
            origin: None,
            details: Value::Null,
        }
    }
}

/// Chainable setters for the fields most events fill in.
impl Event {
    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }
    /// Sets the subject's SPIFFE ID.
    pub fn subject(mut self, spiffe_id: impl Into<String>) -> Self {
        self.subject.spiffe_id = spiffe_id.into();
        self
    }
    /// Sets the subject's node.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.subject.node = node.into();
        self
    }
    /// Sets the task ID.
    pub fn task(mut self, id: impl Into<String>) -> Self {
        self.task.id = id.into();
        self
    }
    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
    /// Sets the X.509 serial.
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.correlation.serial = serial.into();
        self
    }
    /// Sets the details (a JSON object).
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// A record sealed into a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Its text: canonical JSON, one line, no newline.
    pub line: String,
    /// Its hash (the next record's `prev`).
    pub hash: [u8; 32],
}

/// The hash of a record given its fields other than `hash`.
pub fn hash_line(prev: &[u8; 32], without_hash: &Value) -> Result<[u8; 32], AuditError> {
    let text = canonical_json(without_hash)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev);
    ctx.update(text.as_bytes());
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// Seals `event` as record `seq` of `chain`, after the record whose hash
/// is `prev`.
pub fn seal(chain: &str, seq: u64, prev: &[u8; 32], event: &Event) -> Result<Sealed, AuditError> {
    let mut v = serde_json::to_value(event).map_err(|e| AuditError::Shape(e.to_string()))?;
    let Value::Object(m) = &mut v else {
        return Err(AuditError::Shape("an event is an object".into()));
    };
    if !(m.get("details").is_none_or(Value::is_object)) {
        return Err(AuditError::Shape("details must be a JSON object".into()));
    }
    m.insert("v".into(), Value::from(super::RECORD_VERSION));
    m.insert("chain".into(), Value::from(chain));
    m.insert("seq".into(), Value::from(seq));
    m.insert("prev".into(), Value::from(hex::encode(prev)));
    let hash = hash_line(prev, &v)?;
    if let Value::Object(m) = &mut v {
        m.insert("hash".into(), Value::from(hex::encode(hash)));
    }
    Ok(Sealed {
        line: canonical_json(&v)?,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut e = Event::new(Kind::SvidIssued, "2026-12-03T10:45:08.123Z".into());
        e.actor = "spiffe://example.org/lanyard/agent/join_token/n1".into();
        e.subject.spiffe_id = "spiffe://example.org/agent/planner".into();
        e.correlation.serial = "0a1b".into();
        e.details = serde_json::json!({"ttl_seconds": 60});
        e
    }

    /// A fixed vector (its hash checked independently with Python's
    /// `json.dumps(sort_keys=True)` and `hashlib`): the same event sealed the same way is the same
    /// bytes and hash in every version and on every machine. If this test
    /// fails, existing chains stop verifying.
    #[test]
    fn sealing_is_byte_stable() {
        let s = seal("00000000000000ab", 1, &GENESIS, &event()).unwrap();
        assert_eq!(
            s.line,
            concat!(
                r#"{"actor":"spiffe://example.org/lanyard/agent/join_token/n1","chain":"00000000000000ab","#,
                r#""correlation":{"serial":"0a1b"},"details":{"ttl_seconds":60},"#,
                r#""hash":"HASH","kind":"svid.issued","#,
                r#""prev":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,"#,
                r#""subject":{"spiffe_id":"spiffe://example.org/agent/planner"},"time":"2026-12-03T10:45:08.123Z","v":1}"#
            )
            .replace("HASH", &hex::encode(s.hash))
        );
        assert_eq!(
            hex::encode(s.hash),
            "f78bc9f1309ef8ed2bbe5115ac065694a5d23e70b53a24a19952533c0691318e"
        );
        let next = seal("00000000000000ab", 2, &s.hash, &event()).unwrap();
        assert_ne!(next.hash, s.hash);
    }

    #[test]
    fn events_round_trip_and_refuse_unknown_fields() {
        let e = event();
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
        assert!(
            serde_json::from_str::<Event>(r#"{"time":"t","kind":"svid.issued","extra":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Event>(r#"{"time":"t","kind":"nope"}"#).is_err());
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), Value::from(k.as_str()));
        }
    }

    #[test]
    fn details_must_be_an_object_of_integers() {
        let mut e = event();
        e.details = serde_json::json!([1]);
        assert!(seal("c", 1, &GENESIS, &e).is_err());
        e.details = serde_json::json!({"x": 1.5});
        assert!(matches!(
            seal("c", 1, &GENESIS, &e),
            Err(AuditError::Canonical(_))
        ));
    }
}
