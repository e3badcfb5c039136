//! Why a node API call fails, and the gRPC status it gets.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Why a node API call failed. Mapped to a status in one place below.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No client certificate on a call that needs one.
    #[error("an agent SVID (client certificate) is required")]
    NoClientCert,
    /// The agent record refused the call (unknown, banned, superseded).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The client SVID expired, or its CA left the bundle, after the TLS
    /// handshake that admitted the connection.
    #[error("agent SVID {0} is no longer valid: {1}")]
    SvidNoLongerValid(String, &'static str),
    /// Join-token attestation failed.
    #[error("attestation failed: {0}")]
    Attestation(#[from] AttestationError),
    /// A CSR or certificate problem.
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// Too many CSRs.
    #[error("at most {MAX_BATCH} CSRs per call")]
    BatchTooLarge,
    /// The entry is not the caller's.
    #[error("entry {0:?} is not authorized for agent {1}")]
    NotAuthorized(String, String),
    /// The JWT request is invalid.
    #[error("{0}")]
    BadJwtRequest(String),
    /// JWT signing failed.
    #[error("JWT signing failed: {0}")]
    Jwt(#[from] lanyard_core::jwt::JwtError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match &e {
            NodeError::NoClientCert => Status::unauthenticated(e.to_string()),
            NodeError::Attestation(AttestationError::Store(_))
            | NodeError::Store(_)
            | NodeError::Agent(AgentError::Store(_)) => {
                tracing::error!(err = %e, "node API internal error");
                Status::internal("internal error")
            }
            NodeError::Agent(AgentError::Contended(_)) => Status::aborted(e.to_string()),
            NodeError::Agent(_) | NodeError::SvidNoLongerValid(..) => {
                tracing::info!(err = %e, "agent refused");
                Status::permission_denied(e.to_string())
            }
            NodeError::Attestation(_) => {
                tracing::info!(err = %e, "attestation refused");
                Status::permission_denied(e.to_string())
            }
            NodeError::Svid(SvidError::Issue(_) | SvidError::Crypto(_)) => {
                tracing::error!(err = %e, "signing failed");
                Status::internal("signing failed")
            }
            NodeError::NotAuthorized(..) => Status::permission_denied(e.to_string()),
            NodeError::Jwt(_) => {
                tracing::error!(err = %e, "JWT signing failed");
                Status::internal("signing failed")
            }
            NodeError::Svid(_) | NodeError::BatchTooLarge | NodeError::BadJwtRequest(_) => {
                Status::invalid_argument(e.to_string())
            }
        }
    }
}
