//! Why a Workload API call failed, mapped to a status in one place with the
//! texts SPIFFE clients match on.

use tonic::Status;

use crate::attestor::{AttestError, InstanceChanged};
use crate::jwt_cache::JwtFetchError;

/// The metadata key every Workload API request must carry.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Why a Workload API call failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Missing or wrong `workload.spiffe.io` metadata.
    #[error("security header missing from request")]
    MissingHeader,
    /// No entry matches the caller.
    #[error("no identity issued")]
    NoIdentity,
    /// The caller's credentials are unavailable (not a unix socket peer).
    #[error("caller credentials are unavailable")]
    NoPeer,
    /// Attestation failed.
    #[error("workload attestation failed: {0}")]
    Attestation(#[from] AttestError),
    /// The process behind the connection is not the one that connected
    /// (it exec'd, or exited and left its descriptor to another): the
    /// client must reconnect and be attested afresh.
    #[error("{0}; reconnect")]
    ProcessChanged(#[from] InstanceChanged),
    /// A required request field is empty.
    #[error("{0} must be specified")]
    Required(&'static str),
    /// Too many audiences, or one empty or too long.
    #[error(
        "at most {} audiences of 1 to {} bytes each",
        lanyard_core::jwt::MAX_AUDIENCES,
        lanyard_core::jwt::MAX_AUDIENCE_LEN
    )]
    BadAudience,
    /// The requested SPIFFE ID is not one of the caller's.
    #[error("no identity issued for {0}")]
    NotYours(String),
    /// A JWT-SVID could not be obtained.
    #[error(transparent)]
    JwtFetch(#[from] JwtFetchError),
    /// A JWT-SVID did not validate.
    #[error(transparent)]
    InvalidJwt(#[from] lanyard_core::jwt::JwtError),
    /// The agent is shutting down.
    #[error("agent is shutting down")]
    ShuttingDown,
    /// The agent has not received its entries from the server yet.
    #[error("the agent has not synchronised with the server yet; retry")]
    NotSynced,
    /// The caller is quarantined.
    #[error("quarantined: {0}")]
    Quarantined(String),
    /// The credential shown is revoked.
    #[error("{0}")]
    Revoked(String),
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Self {
        match &e {
            WorkloadError::MissingHeader => Status::invalid_argument(e.to_string()),
            WorkloadError::NoIdentity => Status::permission_denied(e.to_string()),
            WorkloadError::NoPeer => Status::internal(e.to_string()),
            WorkloadError::Attestation(err) => {
                tracing::warn!(%err, "workload attestation failed");
                Status::unavailable(e.to_string())
            }
            WorkloadError::ProcessChanged(why) => {
                tracing::info!(%why, "process behind a connection changed");
                Status::unavailable(e.to_string())
            }
            WorkloadError::Required(_)
            | WorkloadError::InvalidJwt(_)
            | WorkloadError::BadAudience
            | WorkloadError::JwtFetch(JwtFetchError::Invalid(_)) => {
                Status::invalid_argument(e.to_string())
            }
            WorkloadError::NotYours(_) | WorkloadError::JwtFetch(JwtFetchError::Refused(_)) => {
                Status::permission_denied(e.to_string())
            }
            WorkloadError::JwtFetch(JwtFetchError::RateLimited) => {
                Status::resource_exhausted(e.to_string())
            }
            WorkloadError::JwtFetch(_) => Status::unavailable(e.to_string()),
            WorkloadError::ShuttingDown | WorkloadError::NotSynced => {
                Status::unavailable(e.to_string())
            }
            WorkloadError::Quarantined(_) => Status::permission_denied(e.to_string()),
            WorkloadError::Revoked(_) => Status::invalid_argument(e.to_string()),
        }
    }
}
