//! The X.509 signing authority (a CA key and certificate) and SVID minting.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

use super::SvidError;
use super::csr::parse_csr_public_key;
use super::info::CertInfo;
use crate::der;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// How far NotBefore is set in the past, to absorb clock skew between peers.
pub const BACKDATE: Duration = Duration::from_secs(10);

/// What to put in a minted SVID besides the key from the CSR.
#[derive(Debug, Clone)]
pub struct SvidParams {
    /// The one URI SAN.
    pub spiffe_id: SpiffeId,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Requested lifetime (capped at the authority's NotAfter).
    pub ttl: Duration,
    /// Extra non-critical extensions as `(OID content octets, DER value)`.
    /// OIDs of any size are accepted (UUID arcs under `2.25` exceed the
    /// 64-bit arcs the certificate builder takes; see [`resign_with_oids`]).
    pub extensions: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A freshly minted certificate.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

/// A CA key pair with its certificate, able to sign X.509-SVIDs.
pub struct X509Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The same key, for re-signing a certificate whose TBS was rewritten.
    signing_key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    info: CertInfo,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Authority")
            .field("id", &self.info.subject_key_id)
            .field("not_after", &self.info.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl X509Authority {
    /// Generates a new self-signed root CA for `td`, valid from `now - BACKDATE`
    /// for `ttl`.
    pub fn generate_root(
        td: &TrustDomain,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Self, SvidError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Lanyard");
        dn.push(DnType::CommonName, format!("Lanyard CA {}", td.name()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(td.id_string().try_into().map_err(
                |e: rcgen::Error| SvidError::Issue(e.to_string()),
            )?)];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ttl).into();
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().to_vec();
        Self::from_parts(&cert_der, &key.serialize_der())
    }

    /// Rebuilds an authority from its certificate and PKCS#8 key, checking
    /// that they belong together.
    pub fn from_parts(cert_der: &[u8], key_pkcs8: &[u8]) -> Result<Self, SvidError> {
        let key =
            KeyPair::try_from(key_pkcs8).map_err(|e| SvidError::Crypto(format!("CA key: {e}")))?;
        let info = CertInfo::parse(cert_der)?;
        if info.spki_der != key.subject_public_key_info() {
            return Err(SvidError::Crypto(
                "CA certificate does not match its private key".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key)
            .map_err(|e| SvidError::Malformed(e.to_string()))?;
        let signing_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8)
            .map_err(|e| SvidError::Crypto(format!("CA key: {e}")))?;
        Ok(Self {
            issuer,
            signing_key,
            cert_der: cert_der.to_vec(),
            info,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PKCS#8 DER. Handle with care.
    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.issuer.key().serialize_der()
    }

    /// Parsed details of the CA certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Mints an X.509-SVID for the public key in `csr_der`. Only the key is
    /// taken from the CSR (after checking its signature); every other field
    /// comes from `params`.
    pub fn sign_x509_svid(
        &self,
        csr_der: &[u8],
        params: &SvidParams,
        now: SystemTime,
    ) -> Result<IssuedSvid, SvidError> {
        let public_key = parse_csr_public_key(csr_der)?;
        self.sign_public_key(&public_key, params, now)
    }

    /// Mints an X.509-SVID for an already-verified public key (SPKI DER).
    pub fn sign_public_key(
        &self,
        public_key: &rcgen::SubjectPublicKeyInfo,
        params: &SvidParams,
        now: SystemTime,
    ) -> Result<IssuedSvid, SvidError> {
        if now >= self.info.not_after {
            return Err(SvidError::Issue("the signing CA has expired".into()));
        }
        let not_before = (now - BACKDATE).max(self.info.not_before);
        let not_after = crate::rotation::capped_not_after(now, params.ttl, self.info.not_after);
        let serial = random_serial()?;
        let mut cp = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Lanyard");
        cp.distinguished_name = dn;
        cp.is_ca = IsCa::ExplicitNoCa;
        cp.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        cp.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut sans =
            vec![SanType::URI(params.spiffe_id.as_str().try_into().map_err(
                |e: rcgen::Error| SvidError::Issue(e.to_string()),
            )?)];
        for dns in &params.dns_names {
            sans.push(SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| SvidError::Issue(e.to_string()))?,
            ));
        }
        cp.subject_alt_names = sans;
        cp.not_before = not_before.into();
        cp.not_after = not_after.into();
        cp.use_authority_key_identifier_extension = true;
        let mut swaps = Vec::with_capacity(params.extensions.len());
        for (i, (oid, content)) in params.extensions.iter().enumerate() {
            let (arcs, stand_in) = stand_in_oid(oid.len(), i)?;
            cp.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &arcs,
                    content.clone(),
                ));
            swaps.push((stand_in, oid.as_slice()));
        }
        let serial_hex = hex::encode(serial.to_bytes())
            .trim_start_matches("00")
            .to_owned();
        cp.serial_number = Some(serial);
        let cert = cp.signed_by(public_key, &self.issuer)?;
        let cert_der = if swaps.is_empty() {
            cert.der().to_vec()
        } else {
            resign_with_oids(cert.der(), &swaps, &self.signing_key)?
        };
        Ok(IssuedSvid {
            cert_der,
            serial: serial_hex,
            // Round to whole seconds, as encoded in the certificate.
            not_before: crate::clock::from_unix_secs(crate::clock::unix_secs(not_before)),
            not_after: crate::clock::from_unix_secs(crate::clock::unix_secs(not_after)),
        })
    }
}

/// A random, positive, non-zero 128-bit serial number.
pub(crate) fn random_serial() -> Result<SerialNumber, SvidError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| SvidError::Crypto("random source failed".into()))?;
    b[0] &= 0x7f; // positive
    if b.iter().all(|&x| x == 0) {
        b[15] = 1; // never zero
    }
    Ok(SerialNumber::from_slice(&b))
}

/// A stand-in OID (arcs under `2.25`) whose content octets have exactly
/// `len` bytes, and those octets. Each byte pattern differs by `salt`.
fn stand_in_oid(len: usize, salt: usize) -> Result<(Vec<u64>, Vec<u8>), SvidError> {
    if !(2..=127).contains(&len) {
        return Err(SvidError::Issue(format!("unsupported OID length {len}")));
    }
    let mut arcs = vec![2u64, 25];
    let mut octets = vec![2 * 40 + 25];
    let mut left = len - 1;
    let mut n = 0u8;
    while left > 0 {
        // Arcs of up to 9 base-128 digits fit in 63 bits.
        let k = left.min(9);
        let mut digits = Vec::with_capacity(k);
        for j in 0..k {
            // 0x5a-based pattern, first digit non-zero; mixes in the salt
            // and position so two stand-ins never coincide.
            let d = (0x5a ^ (salt as u8).wrapping_mul(31) ^ n.wrapping_mul(7) ^ (j as u8)) & 0x7f;
            digits.push(if j == 0 { d | 0x40 } else { d });
            n = n.wrapping_add(1);
        }
        let value = digits
            .iter()
            .fold(0u64, |acc, d| (acc << 7) | u64::from(*d));
        for (j, d) in digits.iter().enumerate() {
            octets.push(if j + 1 < k { d | 0x80 } else { *d });
        }
        arcs.push(value);
        left -= k;
    }
    Ok((arcs, octets))
}

/// Replaces each stand-in OID in a signed certificate's TBS with the real
/// one (same length, so no length changes), then signs the TBS again with
/// the CA key. Each stand-in must occur exactly once in the TBS.
fn resign_with_oids(
    cert_der: &[u8],
    swaps: &[(Vec<u8>, &[u8])],
    key: &EcdsaKeyPair,
) -> Result<Vec<u8>, SvidError> {
    let bad = |e: String| SvidError::Issue(format!("re-signing: {e}"));
    let mut outer = der::Reader::new(cert_der);
    let mut cert = der::Reader::new(outer.read(der::SEQUENCE).map_err(bad)?);
    let mut tbs = cert.read_raw(der::SEQUENCE).map_err(bad)?.to_vec();
    let alg = cert.read_raw(der::SEQUENCE).map_err(bad)?;
    for (stand_in, real) in swaps {
        let hits: Vec<usize> = tbs
            .windows(stand_in.len())
            .enumerate()
            .filter(|(_, w)| *w == stand_in.as_slice())
            .map(|(i, _)| i)
            .collect();
        let [at] = hits.as_slice() else {
            return Err(bad(format!("stand-in OID found {} times", hits.len())));
        };
        tbs[*at..*at + real.len()].copy_from_slice(real);
    }
    let sig = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &tbs)
        .map_err(|_| SvidError::Crypto("signing failed".into()))?;
    let mut bits = Vec::with_capacity(sig.as_ref().len() + 1);
    bits.push(0);
    bits.extend_from_slice(sig.as_ref());
    let mut body = tbs;
    body.extend_from_slice(alg);
    der::write(&mut body, der::BIT_STRING, &bits);
    let mut out = Vec::with_capacity(body.len() + 4);
    der::write(&mut out, der::SEQUENCE, &body);
    Ok(out)
}
