//! Per-SVID keys and certificate signing requests.

use rcgen::{
    CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SubjectPublicKeyInfo,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::SvidError;
use crate::spiffe_id::SpiffeId;

/// Largest CSR accepted, in bytes (a P-256 CSR is about 300).
pub const MAX_CSR_LEN: usize = 8 * 1024;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// A freshly generated ECDSA P-256 key pair for one SVID.
pub struct SvidKey(KeyPair);

impl std::fmt::Debug for SvidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SvidKey(<redacted>)")
    }
}

impl SvidKey {
    /// Generates a new P-256 key.
    pub fn generate() -> Result<Self, SvidError> {
        Ok(Self(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?))
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SvidError> {
        KeyPair::try_from(der)
            .map(Self)
            .map_err(|e| SvidError::Crypto(e.to_string()))
    }

    /// The key as PKCS#8 DER (what the Workload API's `x509_svid_key` holds).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.0.serialize_der()
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    /// A CSR for `spiffe_id`, signed with this key (proof of possession).
    pub fn csr(&self, spiffe_id: &SpiffeId) -> Result<Vec<u8>, SvidError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.as_str().try_into().map_err(
                |e: rcgen::Error| SvidError::Issue(e.to_string()),
            )?)];
        Ok(params.serialize_request(&self.0)?.der().to_vec())
    }
}

/// Parses a CSR, verifies its self-signature and checks that its key is
/// ECDSA P-256; returns the public key. Nothing else in the CSR is trusted.
pub fn parse_csr_public_key(der: &[u8]) -> Result<SubjectPublicKeyInfo, SvidError> {
    if der.len() > MAX_CSR_LEN {
        return Err(SvidError::BadCsr(format!(
            "CSR is larger than {MAX_CSR_LEN} bytes"
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| SvidError::BadCsr(format!("not a DER CSR: {e}")))?;
    if !rest.is_empty() {
        return Err(SvidError::BadCsr("trailing bytes after the CSR".into()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let (alg, curve) = super::info::key_algorithm(spki);
    if alg != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        return Err(SvidError::UnsupportedKey);
    }
    csr.verify_signature()
        .map_err(|_| SvidError::BadCsr("signature does not verify".into()))?;
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| SvidError::BadCsr(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_round_trip_and_refusals() {
        let key = SvidKey::generate().unwrap();
        let id = SpiffeId::new("spiffe://td/w").unwrap();
        let csr = key.csr(&id).unwrap();
        let pk = parse_csr_public_key(&csr).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&pk),
            key.spki_der()
        );
        assert!(matches!(
            parse_csr_public_key(b"garbage"),
            Err(SvidError::BadCsr(_))
        ));
        // Flip a byte inside the signature: must not verify.
        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 5] ^= 0x55;
        assert!(parse_csr_public_key(&bad).is_err());
        assert!(parse_csr_public_key(&vec![0u8; MAX_CSR_LEN + 1]).is_err());
        // An Ed25519 CSR is refused.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_csr = CertificateParams::default().serialize_request(&ed).unwrap();
        assert_eq!(
            parse_csr_public_key(ed_csr.der()).unwrap_err(),
            SvidError::UnsupportedKey
        );
    }
}
