//! Reading the fields of a certificate that Lanyard cares about.

use std::time::SystemTime;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::SvidError;

/// The parts of a certificate Lanyard uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Every URI SAN, as written.
    pub uri_sans: Vec<String>,
    /// Every DNS SAN.
    pub dns_sans: Vec<String>,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// BasicConstraints cA.
    pub is_ca: bool,
    /// KeyUsage digitalSignature (None when the extension is absent).
    pub digital_signature: Option<bool>,
    /// KeyUsage keyCertSign or cRLSign.
    pub can_sign_certs: bool,
    /// SubjectKeyIdentifier, hex (or SHA-256 of the SPKI when absent).
    pub subject_key_id: String,
    /// AuthorityKeyIdentifier key ID, hex (the issuer's subject key ID).
    pub authority_key_id: Option<String>,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

impl CertInfo {
    /// Parses one DER certificate (no trailing bytes allowed).
    pub fn parse(der: &[u8]) -> Result<Self, SvidError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SvidError::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        Ok(Self::from_parsed(&cert))
    }

    fn from_parsed(cert: &X509Certificate<'_>) -> Self {
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        let mut is_ca = false;
        let mut digital_signature = None;
        let mut can_sign_certs = false;
        let mut skid = None;
        let mut akid = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        match n {
                            GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                            GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
                ParsedExtension::KeyUsage(ku) => {
                    digital_signature = Some(ku.digital_signature());
                    can_sign_certs = ku.key_cert_sign() || ku.crl_sign();
                }
                ParsedExtension::SubjectKeyIdentifier(id) => skid = Some(hex::encode(id.0)),
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    akid = aki.key_identifier.as_ref().map(|k| hex::encode(k.0));
                }
                _ => {}
            }
        }
        let spki_der = cert.tbs_certificate.subject_pki.raw.to_vec();
        let subject_key_id = skid.unwrap_or_else(|| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki_der);
            hex::encode(&d.as_ref()[..20])
        });
        Self {
            uri_sans,
            dns_sans,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            serial: hex::encode(cert.tbs_certificate.raw_serial())
                .trim_start_matches("00")
                .to_owned(),
            is_ca,
            digital_signature,
            can_sign_certs,
            subject_key_id,
            authority_key_id: akid,
            spki_der,
        }
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    crate::clock::from_unix_secs(u64::try_from(unix).unwrap_or(0))
}

/// The key algorithm OID of a public key, and for EC keys the curve OID,
/// both in dotted form.
pub(crate) fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> (String, Option<String>) {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    (spki.algorithm.algorithm.to_id_string(), curve)
}

/// Splits concatenated DER certificates (the Workload API's chain and bundle
/// encoding) into one DER blob per certificate.
pub fn der_chain_split(mut data: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) =
            X509Certificate::from_der(data).map_err(|e| SvidError::Malformed(e.to_string()))?;
        let used = data.len() - rest.len();
        out.push(data[..used].to_vec());
        data = rest;
    }
    Ok(out)
}

/// PEM text with one `label` block per DER item (e.g. `CERTIFICATE`,
/// `PRIVATE KEY`): the inverse of [`pem_to_der_certs`].
pub fn der_to_pem(label: &str, ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new(label, d.clone())))
        .collect()
}

/// Reads every `CERTIFICATE` block of a PEM text, as DER.
pub fn pem_to_der_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| SvidError::Malformed(format!("PEM: {e}")))?;
        if block.label == "CERTIFICATE" {
            CertInfo::parse(&block.contents)?;
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(SvidError::Empty("PEM certificate list"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let td = crate::TrustDomain::new("td").unwrap();
        let now = crate::clock::from_unix_secs(1_800_000_000);
        let ders: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                crate::x509::X509Authority::generate_root(
                    &td,
                    now,
                    std::time::Duration::from_secs(60),
                )
                .unwrap()
                .cert_der()
                .to_vec()
            })
            .collect();
        let text = der_to_pem("CERTIFICATE", &ders);
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert_eq!(pem_to_der_certs(text.as_bytes()).unwrap(), ders);
    }
}
