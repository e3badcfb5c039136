//! X.509-SVID validation as a peer does it: chain to the bundle, one URI SAN
//! that is a SPIFFE ID of the bundle's trust domain, leaf rules, time.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use super::SvidError;
use super::info::CertInfo;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Which extended key usage the peer's certificate must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUsage {
    /// The peer is a TLS client.
    Client,
    /// The peer is a TLS server.
    Server,
}

/// Validates an X.509-SVID chain (leaf first) against the X.509 authorities
/// of `td`'s bundle at time `now`, and returns the SVID's SPIFFE ID.
pub fn validate_x509_svid(
    chain: &[Vec<u8>],
    td: &TrustDomain,
    bundle: &[Vec<u8>],
    usage: PeerUsage,
    now: SystemTime,
) -> Result<SpiffeId, SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::Empty("certificate chain"))?;
    if bundle.is_empty() {
        return Err(SvidError::Empty("trust bundle"));
    }
    let leaf = CertInfo::parse(leaf_der)?;
    if leaf.uri_sans.len() != 1 {
        return Err(SvidError::UriSanCount(leaf.uri_sans.len()));
    }
    let id = SpiffeId::new(&leaf.uri_sans[0])
        .map_err(|e| SvidError::BadSpiffeId(format!("{}: {e}", leaf.uri_sans[0])))?;
    if id.trust_domain_name() != td.name() {
        return Err(SvidError::WrongTrustDomain(id.to_string(), td.to_string()));
    }
    if leaf.is_ca {
        return Err(SvidError::LeafIsCa);
    }
    if leaf.digital_signature != Some(true) || leaf.can_sign_certs {
        return Err(SvidError::LeafKeyUsage);
    }

    let bundle_ders: Vec<CertificateDer<'_>> = bundle
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let anchors = bundle_ders
        .iter()
        .map(|c| anchor_from_trusted_cert(c).map_err(|e| SvidError::Chain(format!("bundle: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_cert = CertificateDer::from(leaf_der.as_slice());
    let ee =
        EndEntityCert::try_from(&leaf_cert).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| SvidError::Chain("clock before 1970".into()))?;
    let ku = match usage {
        PeerUsage::Client => KeyUsage::client_auth(),
        PeerUsage::Server => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        ku,
        None,
        None,
    )
    .map_err(|e| SvidError::Chain(e.to_string()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::from_unix_secs;
    use crate::x509::{SvidKey, SvidParams, X509Authority};

    const T0: u64 = 1_800_000_000;

    fn setup() -> (TrustDomain, X509Authority) {
        let td = TrustDomain::new("td").unwrap();
        let ca = X509Authority::generate_root(&td, from_unix_secs(T0), Duration::from_secs(3600))
            .unwrap();
        (td, ca)
    }

    fn params(id: &str, ttl: u64) -> SvidParams {
        SvidParams {
            spiffe_id: SpiffeId::new(id).unwrap(),
            dns_names: vec!["w.example".into()],
            ttl: Duration::from_secs(ttl),
            extensions: vec![],
        }
    }

    #[test]
    fn task_svid_carries_the_claims_extension_and_still_validates() {
        use crate::task::{TaskClaims, TaskId, task_claims_oid_der};
        let (td, ca) = setup();
        let key = SvidKey::generate().unwrap();
        let id = SpiffeId::new("spiffe://td/w").unwrap();
        let claims = TaskClaims {
            task_id: TaskId::from_random([3; 16]),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            data_sensitivity: "internal".into(),
            grant_digest: [9; 32],
            on_behalf_of: None,
            not_after: Some(from_unix_secs(T0 + 300)),
            parent_task_id: None,
            destinations: vec![],
        };
        let mut p = params("spiffe://td/w", 60);
        p.extensions = vec![(task_claims_oid_der(), claims.to_der())];
        let now = from_unix_secs(T0 + 100);
        let svid = ca.sign_x509_svid(&key.csr(&id).unwrap(), &p, now).unwrap();
        assert_eq!(TaskClaims::from_x509(&svid.cert_der).unwrap(), Some(claims));
        // The re-signed certificate chains to the CA (webpki checks the
        // signature over the rewritten TBS).
        let got = validate_x509_svid(
            std::slice::from_ref(&svid.cert_der),
            &td,
            &[ca.cert_der().to_vec()],
            PeerUsage::Client,
            now,
        )
        .unwrap();
        assert_eq!(got, id);
        // A plain SVID has no claims.
        let plain = ca
            .sign_x509_svid(&key.csr(&id).unwrap(), &params("spiffe://td/w", 60), now)
            .unwrap();
        assert_eq!(TaskClaims::from_x509(&plain.cert_der).unwrap(), None);
    }

    #[test]
    fn minted_svid_follows_the_x509_svid_standard() {
        let (td, ca) = setup();
        let key = SvidKey::generate().unwrap();
        let id = SpiffeId::new("spiffe://td/w").unwrap();
        let now = from_unix_secs(T0 + 100);
        let svid = ca
            .sign_x509_svid(&key.csr(&id).unwrap(), &params("spiffe://td/w", 60), now)
            .unwrap();
        let info = CertInfo::parse(&svid.cert_der).unwrap();
        assert_eq!(info.uri_sans, vec!["spiffe://td/w"]);
        assert_eq!(info.dns_sans, vec!["w.example"]);
        assert!(!info.is_ca);
        assert_eq!(info.digital_signature, Some(true));
        assert!(!info.can_sign_certs);
        assert_eq!(info.spki_der, key.spki_der());
        assert_eq!(info.not_before, from_unix_secs(T0 + 90));
        assert_eq!(info.not_after, from_unix_secs(T0 + 160));
        assert_eq!(info.serial, svid.serial.trim_start_matches("00"));
        assert!(info.serial.len() >= 30, "serial {}", info.serial);
        assert_eq!(
            info.authority_key_id.as_deref(),
            Some(ca.info().subject_key_id.as_str())
        );
        let got = validate_x509_svid(
            std::slice::from_ref(&svid.cert_der),
            &td,
            &[ca.cert_der().to_vec()],
            PeerUsage::Client,
            now,
        )
        .unwrap();
        assert_eq!(got, id);
        validate_x509_svid(
            &[svid.cert_der],
            &td,
            &[ca.cert_der().to_vec()],
            PeerUsage::Server,
            now,
        )
        .unwrap();
    }

    #[test]
    fn serials_are_random() {
        let (_, ca) = setup();
        let key = SvidKey::generate().unwrap();
        let csr = key.csr(&SpiffeId::new("spiffe://td/w").unwrap()).unwrap();
        let now = from_unix_secs(T0 + 1);
        let a = ca
            .sign_x509_svid(&csr, &params("spiffe://td/w", 60), now)
            .unwrap();
        let b = ca
            .sign_x509_svid(&csr, &params("spiffe://td/w", 60), now)
            .unwrap();
        assert_ne!(a.serial, b.serial);
    }

    #[test]
    fn not_after_never_outlives_the_ca() {
        let (_, ca) = setup();
        let key = SvidKey::generate().unwrap();
        let csr = key.csr(&SpiffeId::new("spiffe://td/w").unwrap()).unwrap();
        let now = from_unix_secs(T0 + 3590);
        let s = ca
            .sign_x509_svid(&csr, &params("spiffe://td/w", 600), now)
            .unwrap();
        assert_eq!(s.not_after, ca.info().not_after);
        let late = from_unix_secs(T0 + 3700);
        assert!(matches!(
            ca.sign_x509_svid(&csr, &params("spiffe://td/w", 60), late),
            Err(SvidError::Issue(_))
        ));
    }

    #[test]
    fn validation_refuses_expired_foreign_and_untrusted() {
        let (td, ca) = setup();
        let key = SvidKey::generate().unwrap();
        let csr = key.csr(&SpiffeId::new("spiffe://td/w").unwrap()).unwrap();
        let now = from_unix_secs(T0 + 100);
        let s = ca
            .sign_x509_svid(&csr, &params("spiffe://td/w", 60), now)
            .unwrap();
        let bundle = vec![ca.cert_der().to_vec()];
        let chain = vec![s.cert_der.clone()];
        // Expired.
        assert!(matches!(
            validate_x509_svid(
                &chain,
                &td,
                &bundle,
                PeerUsage::Client,
                from_unix_secs(T0 + 161)
            ),
            Err(SvidError::Chain(_))
        ));
        // Another trust domain's bundle.
        let other_td = TrustDomain::new("other").unwrap();
        assert!(matches!(
            validate_x509_svid(&chain, &other_td, &bundle, PeerUsage::Client, now),
            Err(SvidError::WrongTrustDomain(..))
        ));
        // Signed by a CA that is not in the bundle.
        let (_, ca2) = setup();
        assert!(matches!(
            validate_x509_svid(
                &chain,
                &td,
                &[ca2.cert_der().to_vec()],
                PeerUsage::Client,
                now
            ),
            Err(SvidError::Chain(_))
        ));
        // The CA certificate itself is not an SVID.
        assert!(validate_x509_svid(&bundle, &td, &bundle, PeerUsage::Client, now).is_err());
        // Empty inputs.
        assert!(matches!(
            validate_x509_svid(&[], &td, &bundle, PeerUsage::Client, now),
            Err(SvidError::Empty(_))
        ));
        assert!(matches!(
            validate_x509_svid(&chain, &td, &[], PeerUsage::Client, now),
            Err(SvidError::Empty(_))
        ));
        assert!(
            validate_x509_svid(&[b"junk".to_vec()], &td, &bundle, PeerUsage::Client, now).is_err()
        );
    }

    #[test]
    fn authority_round_trips_through_its_parts() {
        let (_, ca) = setup();
        let again = X509Authority::from_parts(ca.cert_der(), &ca.key_pkcs8_der()).unwrap();
        assert_eq!(again.info(), ca.info());
        let (_, other) = setup();
        assert!(X509Authority::from_parts(ca.cert_der(), &other.key_pkcs8_der()).is_err());
    }
}
