//! Node attestation, pluggable: each attestor turns the evidence an agent
//! sends (`AttestAgentRequest.attestor` + `attestation_data`) into the
//! agent's SPIFFE ID and its node selectors. Join tokens are one
//! attestor; Kubernetes projected service account tokens (`k8s_psat`)
//! another.

mod join_token;
mod psat;

use std::collections::BTreeMap;
use std::sync::Arc;

use lanyard_core::{Selector, SpiffeId};

pub use join_token::JoinTokenAttestor;
pub use psat::{JwksSource, PsatAttestor, PsatCluster};

use crate::attestation::AttestationError;

/// What an attestor established about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The agent's SPIFFE ID.
    pub agent_id: SpiffeId,
    /// Its node selectors (matched by node alias entries).
    pub selectors: Vec<Selector>,
    /// SHA-256 of evidence that could be presented again (a token valid
    /// for an hour): the same evidence is refused while its agent is live.
    pub evidence_digest: Option<String>,
}

impl Attested {
    /// An agent ID with no selectors and single-use evidence.
    pub fn new(agent_id: SpiffeId) -> Self {
        Self {
            agent_id,
            selectors: vec![],
            evidence_digest: None,
        }
    }
}

/// One way for a node to prove what it is.
#[async_trait::async_trait]
pub trait NodeAttestor: Send + Sync {
    /// The name agents put in `AttestAgentRequest.attestor`.
    fn name(&self) -> &'static str;

    /// Checks the evidence. Refusals say why, in words an operator can act
    /// on; nothing is stored for a refused node.
    async fn attest(&self, data: &[u8]) -> Result<Attested, AttestationError>;
}

/// The attestors this server accepts, by name.
#[derive(Clone, Default)]
pub struct NodeAttestors {
    by_name: BTreeMap<&'static str, Arc<dyn NodeAttestor>>,
}

impl NodeAttestors {
    /// Adds `a` (replacing one of the same name).
    pub fn with(mut self, a: Arc<dyn NodeAttestor>) -> Self {
        self.by_name.insert(a.name(), a);
        self
    }

    /// The attestor named `name` (`""` means `join_token`).
    pub fn get(&self, name: &str) -> Result<&Arc<dyn NodeAttestor>, AttestationError> {
        let name = if name.is_empty() { "join_token" } else { name };
        self.by_name.get(name).ok_or_else(|| {
            AttestationError::UnknownAttestor(
                name.chars().take(64).collect(),
                self.by_name.keys().copied().collect::<Vec<_>>().join(", "),
            )
        })
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// A bounded label for a refusal's text (for metrics).
pub fn reason_class(why: &str) -> &'static str {
    const CLASSES: [(&str, &str); 9] = [
        ("audience", "audience"),
        ("expired", "expired"),
        ("not valid before", "not_yet_valid"),
        ("issuer", "issuer"),
        ("not among the issuer keys", "unknown_key"),
        ("signature", "signature"),
        ("may not attest", "service_account"),
        ("not configured", "unknown_cluster"),
        ("evidence", "malformed"),
    ];
    CLASSES
        .iter()
        .find(|(needle, _)| why.contains(needle))
        .map_or("refused", |(_, class)| class)
}
