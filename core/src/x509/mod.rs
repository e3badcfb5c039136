//! X.509-SVIDs: the signing authority, minting from a CSR, per-SVID keys and
//! CSRs, and validation against a bundle by any peer.

mod authority;
mod crl;
mod csr;
mod info;
mod validate;

pub use authority::{BACKDATE, IssuedSvid, SvidParams, X509Authority};
pub use crl::{CrlEntry, ParsedCrl, parse_crl};
pub use csr::{SvidKey, parse_csr_public_key};
pub(crate) use info::key_algorithm;
pub use info::{CertInfo, der_chain_split, der_to_pem, pem_to_der_certs};
/// A public key (SubjectPublicKeyInfo) to sign for.
pub use rcgen::SubjectPublicKeyInfo as Spki;
pub use validate::{PeerUsage, validate_x509_svid};

/// Why minting, parsing or validating an X.509 certificate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The CSR is not DER, too large, or its signature does not verify.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// The CSR's key is not ECDSA P-256.
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKey,
    /// The certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The leaf does not carry exactly one URI SAN.
    #[error("X.509-SVID must have exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(String),
    /// The leaf is a CA certificate.
    #[error("leaf certificate must not be a CA")]
    LeafIsCa,
    /// The leaf lacks digitalSignature or has certificate/CRL signing.
    #[error("leaf key usage must include digitalSignature and exclude keyCertSign and cRLSign")]
    LeafKeyUsage,
    /// The SPIFFE ID is in another trust domain than the bundle's.
    #[error("SPIFFE ID {0} is not in trust domain {1}")]
    WrongTrustDomain(String, String),
    /// Chain building or signature/time checks failed.
    #[error("certificate chain does not verify: {0}")]
    Chain(String),
    /// The empty chain or an empty bundle.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The issuing key expired or the lifetime is otherwise impossible.
    #[error("cannot issue: {0}")]
    Issue(String),
    /// The crypto library refused an operation.
    #[error("crypto error: {0}")]
    Crypto(String),
}

impl From<rcgen::Error> for SvidError {
    fn from(e: rcgen::Error) -> Self {
        SvidError::Crypto(e.to_string())
    }
}
