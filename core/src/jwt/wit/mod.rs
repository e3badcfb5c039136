//! WIT-SVIDs and Workload Proof Tokens: identity tokens bound to a key the
//! workload holds, presented with a proof of possession per request, never
//! as bearer tokens.
//!
//! Implemented versions (pinned in `docs/wit-svid.md`): the SPIFFE WIT-SVID
//! profile (`standards/WIT-SVID.md` of spiffe/spiffe, Incubating) over the
//! WIMSE Workload Identity Token (draft-ietf-wimse-workload-creds-02), and
//! the WIMSE Workload Proof Token (draft-ietf-wimse-wpt-01).
//!
//! - [`validate_wit_svid`]: a WIT-SVID against the WIT authorities of its
//!   trust domain.
//! - [`validate_wpt`]: the proof that comes with it on an HTTP request
//!   (`Authorization: WPT <jwt>`), with [`ReplayCache`] refusing a proof
//!   seen before.
//! - [`WorkloadKey`], [`sign_wit`] and [`sign_wpt`]: minting, for the
//!   issuer and for Rust clients.

mod key;
mod replay;
#[cfg(test)]
mod tests;
mod validate;
mod wpt;

use std::time::Duration;

pub use key::{WorkloadKey, issuable_cnf, sign_wit};
pub use replay::ReplayCache;
pub use validate::{ValidatedWit, validate_wit_svid};
pub use wpt::{ValidatedWpt, WptRequest, sign_wpt, token_hash, validate_wpt};

use super::JwtError;

/// `typ` of a WIT-SVID.
pub const WIT_TYP: &str = "wit+jwt";
/// `typ` of a Workload Proof Token.
pub const WPT_TYP: &str = "wpt+jwt";
/// `use` of a WIT authority in a SPIFFE bundle or a WIT JWKS.
pub const WIT_USE: &str = "wit-svid";
/// The HTTP header that carries a WIT next to its proof.
pub const WIT_HEADER: &str = "workload-identity-token";
/// The HTTP authentication scheme of a Workload Proof Token.
pub const WPT_SCHEME: &str = "WPT";
/// The longest a proof may still be valid when it arrives (`exp - now`):
/// proofs are for one request, seconds or minutes.
pub const MAX_WPT_LIFETIME: Duration = Duration::from_secs(300);
/// The claim a task WIT-SVID carries its task under (the task JWT-SVID's
/// `txn`, `scope`, `tctx`, `rctx` and `act`, in one collision-resistant
/// name).
pub const TASK_CLAIM: &str = "dev.lanyard/task";
/// Longest `jti` accepted in a proof, in bytes.
pub const MAX_JTI_LEN: usize = 256;

/// The signature algorithms of the profile, for the issuer's key and for
/// the workload's key in `cnf.jwk.alg`.
pub const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// Why a WIT-SVID or a proof was refused. Every message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitError {
    /// What WIT-SVIDs share with every JWT: format, algorithm, key ID,
    /// signature, `exp`, `sub`.
    #[error("{0}")]
    Jwt(#[from] JwtError),
    /// A header parameter the profile does not have.
    #[error("WIT-SVID header parameter {0:?} is not allowed (only alg, typ and kid)")]
    HeaderParameter(String),
    /// A WIT-SVID with an audience: it is not a JWT-SVID.
    #[error("a WIT-SVID has no aud claim")]
    HasAudience,
    /// `cnf.jwk` missing, private, or outside the profile.
    #[error("WIT-SVID confirmation key: {0}")]
    Confirmation(String),
    /// The proof is signed with another algorithm than the WIT's key.
    #[error("proof algorithm {found:?} is not the WIT key's {want:?}")]
    ProofAlgorithm {
        /// The proof's `alg`.
        found: String,
        /// `cnf.jwk.alg` of the WIT.
        want: String,
    },
    /// The proof is for another request target.
    #[error("proof audience is not this request's target {0:?}")]
    Target(String),
    /// `exp` too far ahead.
    #[error("proof lives too long: {0} s left, at most {1} s accepted")]
    Lifetime(u64, u64),
    /// A hash binding (`wth`, `tth`, `oth`) is missing or does not match.
    #[error("proof claim {0}")]
    Binding(String),
    /// The proof's `jti` was seen before.
    #[error("proof {0:?} was already used")]
    Replayed(String),
    /// Too many live proofs remembered to take one more.
    #[error("too many recent proofs to check this one for replay; retry shortly")]
    ReplayCacheFull,
}
