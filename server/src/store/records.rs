//! Records kept by the store besides registration entries.

use lanyard_core::SpiffeId;

/// An attested agent (node).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// How it attested, e.g. `join_token`.
    pub attestation_type: String,
    /// Serial of its current SVID (hex).
    pub serial: String,
    /// Serial of the SVID it had before the last renewal, accepted until
    /// that SVID expires so an in-flight renewal cannot lock the agent out.
    pub previous_serial: Option<String>,
    /// Current SVID expiry, Unix seconds.
    pub expires_at: u64,
    /// Banned agents are refused and cannot re-attest under this ID.
    pub banned: bool,
    /// First attestation, Unix seconds.
    pub attested_at: u64,
    /// Node selectors from its attestation (`k8s_psat:cluster:prod`, ...),
    /// matched by node alias entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<String>,
    /// SHA-256 of the attestation evidence that created this record, for
    /// attestors whose evidence can be presented more than once (a
    /// service account token): the same evidence is refused while the
    /// record is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
}

impl AgentRecord {
    /// True when `serial` is the agent's current or previous SVID serial.
    pub fn knows_serial(&self, serial: &str) -> bool {
        self.serial == serial || self.previous_serial.as_deref() == Some(serial)
    }
}

/// A join token, stored by hash so the store never holds usable secrets.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinTokenRecord {
    /// Lowercase hex SHA-256 of the token.
    pub token_hash: String,
    /// The SPIFFE ID the attested agent will have.
    pub agent_id: SpiffeId,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for JoinTokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenRecord")
            .field("token_hash", &"<redacted>")
            .field("agent_id", &self.agent_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where a CA key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaKeyState {
    /// Published in the bundle, not yet signing.
    Prepared,
    /// Signing new SVIDs.
    Active,
    /// No longer signing; published until its last SVID expires.
    Old,
}

/// A CA key pair with its certificate.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaKeyRecord {
    /// Key ID (subject key identifier, hex).
    pub id: String,
    /// DER certificate.
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER private key; empty when the owner keeps it in its data
    /// dir.
    pub key_pkcs8: Vec<u8>,
    /// Life-cycle state.
    pub state: CaKeyState,
    /// Tainted keys make agents re-issue what they signed.
    #[serde(default)]
    pub tainted: bool,
    /// The server that holds the private key and rotates it (empty in
    /// records written before servers had IDs: adopted by the first server
    /// that loads them).
    #[serde(default)]
    pub owner: String,
}

impl std::fmt::Debug for CaKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeyRecord")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("state", &self.state)
            .field("key_pkcs8", &"<redacted>")
            .finish()
    }
}

/// What a JWT-format signing key signs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPurpose {
    /// JWT-SVIDs (published in the JWT bundle and OpenID Connect JWKS).
    #[default]
    Jwt,
    /// WIT-SVIDs (published in the WIT bundle only).
    Wit,
}

/// A JWT signing key (of JWT-SVIDs or of WIT-SVIDs).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JwtKeyRecord {
    /// Key ID (`kid`).
    pub kid: String,
    /// PKCS#8 DER private key; empty when the owner keeps it in its data
    /// dir.
    pub key_pkcs8: Vec<u8>,
    /// SubjectPublicKeyInfo DER (empty in records written before it was
    /// stored, which hold the private key).
    #[serde(default)]
    pub public_key: Vec<u8>,
    /// Creation, Unix seconds.
    #[serde(default)]
    pub not_before: u64,
    /// Expiry, Unix seconds.
    pub not_after: u64,
    /// Life-cycle state.
    pub state: CaKeyState,
    /// Tainted keys make agents re-issue what they signed.
    #[serde(default)]
    pub tainted: bool,
    /// The server that holds the private key (see [`CaKeyRecord::owner`]).
    #[serde(default)]
    pub owner: String,
    /// What it signs (records written before WIT-SVIDs sign JWT-SVIDs).
    #[serde(default)]
    pub purpose: KeyPurpose,
}

impl std::fmt::Debug for JwtKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeyRecord")
            .field("kid", &self.kid)
            .field("not_after", &self.not_after)
            .field("state", &self.state)
            .field("key_pkcs8", &"<redacted>")
            .finish()
    }
}

/// One version of a Cedar policy set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyRecord {
    /// Version, from 1, shared by enforced and shadow sets.
    pub version: u64,
    /// A shadow (candidate) set: decisions logged, never enforced.
    pub shadow: bool,
    /// The Cedar text.
    pub text: String,
    /// Creation, Unix seconds.
    pub created_at: u64,
    /// This version unloads the set of its kind (`policy clear`): none is
    /// in force from it on. (An empty text is a set that permits nothing.)
    #[serde(default)]
    pub cleared: bool,
}

/// A delegation token, stored by hash; taken once by the sub-task's
/// BeginTask.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DelegationRecord {
    /// Lowercase hex SHA-256 of the token.
    pub token_hash: String,
    /// The task delegating.
    pub parent_task_id: lanyard_core::TaskId,
    /// The only workload that may redeem it.
    pub to_spiffe_id: SpiffeId,
    /// The tools the sub-task may have (a subset of the parent's).
    pub tools: Vec<String>,
    /// The sub-task's longest lifetime, seconds.
    pub ttl_seconds: u64,
    /// Token expiry, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for DelegationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegationRecord")
            .field("token_hash", &"<redacted>")
            .field("parent_task_id", &self.parent_task_id)
            .field("to_spiffe_id", &self.to_spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
