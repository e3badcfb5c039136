//! Certificate revocation lists (X.509 v2): signed by the CA that issued
//! the certificates they list, read back and checked by peers.

use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::SvidError;
use super::authority::X509Authority;
use crate::revocation::normalize_serial;

/// A revoked certificate to list: serial (hex) and when it was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial, hex.
    pub serial: String,
    /// Revocation time.
    pub revoked_at: SystemTime,
}

/// A CRL read back: who signed it and what it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCrl {
    /// Subject key ID (hex) of the CA whose signature verified.
    pub issuer_key_id: String,
    /// Revoked serials, normalised (lowercase hex, no leading zeros).
    pub serials: Vec<String>,
    /// thisUpdate.
    pub this_update: SystemTime,
    /// nextUpdate, when present.
    pub next_update: Option<SystemTime>,
    /// The CRL number, hex.
    pub number: String,
}

impl X509Authority {
    /// Signs a CRL listing `entries`, numbered `number`, valid from `now`
    /// for `validity`.
    pub fn sign_crl(
        &self,
        entries: &[CrlEntry],
        number: u64,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Vec<u8>, SvidError> {
        let mut revoked = Vec::with_capacity(entries.len());
        for e in entries {
            let bytes = hex::decode(pad_even(&normalize_serial(&e.serial)))
                .map_err(|_| SvidError::Issue(format!("serial {} is not hex", e.serial)))?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: e.revoked_at.into(),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now.into(),
            next_update: (now + validity).into(),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::PreSpecified(
                hex::decode(&self.info().subject_key_id)
                    .map_err(|_| SvidError::Issue("CA key ID is not hex".into()))?,
            ),
        };
        Ok(params.signed_by(self.issuer())?.der().to_vec())
    }
}

fn pad_even(s: &str) -> String {
    if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_owned()
    }
}

/// Parses a DER CRL and checks its signature against the CA certificates in
/// `authorities` (the one whose subject key ID matches the CRL's authority
/// key identifier, or any that verifies when the CRL names none).
pub fn parse_crl(der: &[u8], authorities: &[Vec<u8>]) -> Result<ParsedCrl, SvidError> {
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| SvidError::Malformed(format!("CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed("trailing bytes after the CRL".into()));
    }
    let aki = crl
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        });
    let tbs: &[u8] = crl.tbs_cert_list.as_ref();
    let signature = crl.signature_value.data.as_ref();
    let mut issuer_key_id = None;
    for ca in authorities {
        let info = super::CertInfo::parse(ca)?;
        if aki.as_ref().is_some_and(|a| *a != info.subject_key_id) {
            continue;
        }
        let (_, cert) = X509Certificate::from_der(ca)
            .map_err(|e| SvidError::Malformed(format!("CA certificate: {e}")))?;
        let point = cert.public_key().subject_public_key.data.as_ref();
        if UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(tbs, signature)
            .is_ok()
        {
            issuer_key_id = Some(info.subject_key_id);
            break;
        }
    }
    let issuer_key_id = issuer_key_id
        .ok_or_else(|| SvidError::Chain("CRL is not signed by a CA of the trust bundle".into()))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| normalize_serial(&hex::encode(r.serial().to_bytes_be())))
        .collect();
    let time = |t: x509_parser::time::ASN1Time| {
        crate::clock::from_unix_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok(ParsedCrl {
        issuer_key_id,
        serials,
        this_update: time(crl.last_update()),
        next_update: crl.next_update().map(time),
        number: crl
            .crl_number()
            .map(|n| n.to_str_radix(16))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix_secs;
    use crate::spiffe_id::{SpiffeId, TrustDomain};
    use crate::x509::{SvidKey, SvidParams};

    #[test]
    fn a_crl_lists_what_it_was_given_and_verifies_only_against_its_ca() {
        let td = TrustDomain::new("td").unwrap();
        let now = from_unix_secs(1_800_000_000);
        let ca = X509Authority::generate_root(&td, now, Duration::from_secs(3600)).unwrap();
        let other = X509Authority::generate_root(&td, now, Duration::from_secs(3600)).unwrap();
        let key = SvidKey::generate().unwrap();
        let id = SpiffeId::new("spiffe://td/w").unwrap();
        let params = SvidParams {
            spiffe_id: id.clone(),
            dns_names: vec![],
            ttl: Duration::from_secs(60),
            extensions: vec![],
        };
        let svid = ca
            .sign_x509_svid(&key.csr(&id).unwrap(), &params, now)
            .unwrap();
        let entries = vec![
            CrlEntry {
                serial: svid.serial.clone(),
                revoked_at: now,
            },
            CrlEntry {
                serial: "0a".into(),
                revoked_at: now,
            },
        ];
        let der = ca
            .sign_crl(&entries, 7, now, Duration::from_secs(600))
            .unwrap();
        let parsed = parse_crl(&der, &[other.cert_der().to_vec(), ca.cert_der().to_vec()]).unwrap();
        assert_eq!(parsed.issuer_key_id, ca.info().subject_key_id);
        assert_eq!(
            parsed.serials,
            vec![normalize_serial(&svid.serial), "a".to_owned()]
        );
        assert_eq!(parsed.number, "7");
        assert_eq!(parsed.next_update, Some(now + Duration::from_secs(600)));
        // Not signed by a CA of this bundle.
        assert!(matches!(
            parse_crl(&der, &[other.cert_der().to_vec()]),
            Err(SvidError::Chain(_))
        ));
        // Tampered: one byte of the list changed.
        let serial = hex::decode(pad_even(&normalize_serial(&svid.serial))).unwrap();
        let at = der
            .windows(serial.len())
            .position(|w| w == serial.as_slice())
            .unwrap();
        let mut bad = der.clone();
        bad[at + 3] ^= 1;
        assert!(parse_crl(&bad, &[ca.cert_der().to_vec()]).is_err());
        assert!(parse_crl(b"junk", &[ca.cert_der().to_vec()]).is_err());
    }
}
