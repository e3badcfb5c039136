//! JWT-SVIDs: ES256 signing keys, minting, JWKS bundles, and validation as
//! any peer holding the bundle does it.

mod bundle;
mod jwk;
pub mod oidc;
mod signer;
mod validate;
pub mod wit;

pub use bundle::{
    MAX_BUNDLE_BYTES, MAX_BUNDLE_KEYS, SpiffeBundle, parse_jwks, parse_spiffe_bundle,
};
pub use jwk::{
    Jwk, JwtAuthority, jwks_for_workloads, spiffe_bundle_json, spiffe_bundle_json_with_wit,
    wit_jwks_for_workloads,
};
pub use signer::{JwtSigner, MintedJwt};
pub use validate::{
    MAX_AUDIENCE_LEN, MAX_AUDIENCES, MAX_TOKEN_LEN, ValidatedJwt, audiences_ok, validate_jwt_svid,
    verify_jws, verify_jws_typed,
};

/// Why a JWT-SVID could not be minted or validated. Every message names the
/// problem so callers can pass it on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three dot-separated base64url parts.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// Longer than allowed.
    #[error("{0} is too long")]
    TooLong(&'static str),
    /// `alg` is missing, `none`, HMAC or otherwise outside the SPIFFE profile.
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    /// No `kid` in the header.
    #[error("token header has no key ID (kid)")]
    MissingKid,
    /// The `kid` is not in the bundle.
    #[error("key ID {0:?} not found in the trust bundle")]
    UnknownKid(String),
    /// The key in the bundle cannot verify this algorithm.
    #[error("key {0:?} does not match algorithm {1}")]
    KeyMismatch(String, String),
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// A required claim is missing or has the wrong type.
    #[error("token claim {0:?} is missing or invalid")]
    Claim(&'static str),
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The audience is not in `aud`.
    #[error("expected audience {0:?} is not in the token's audience")]
    Audience(String),
    /// `sub` is not a SPIFFE ID.
    #[error("token subject {0:?} is not a valid SPIFFE ID")]
    Subject(String),
    /// `sub` is in another trust domain than the bundle.
    #[error("token subject {0} is not in trust domain {1}")]
    ForeignSubject(String, String),
    /// Key handling failed.
    #[error("key error: {0}")]
    Key(String),
}
