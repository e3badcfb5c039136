//! Reading a trust bundle in the SPIFFE bundle format (a JWKS with
//! `use: x509-svid` keys carrying `x5c` and `use: jwt-svid` keys carrying
//! `kid`), the inverse of [`super::spiffe_bundle_json`]: what a peer in
//! another system publishes, so untrusted input.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::{JwtAuthority, JwtError};

/// Largest bundle document accepted.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// Most keys in one bundle.
pub const MAX_BUNDLE_KEYS: usize = 1024;

/// A parsed SPIFFE bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpiffeBundle {
    /// X.509 authorities, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT authorities.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// WIT-SVID authorities (`use: wit-svid`).
    pub wit_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, seconds.
    pub refresh_hint: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Doc {
    keys: Vec<super::Jwk>,
    #[serde(default)]
    spiffe_sequence: Option<u64>,
    #[serde(default)]
    spiffe_refresh_hint: Option<u64>,
}

fn bad(msg: impl Into<String>) -> JwtError {
    JwtError::Key(msg.into())
}

/// Parses a SPIFFE bundle document. Keys with another `use` are skipped
/// (the format allows extensions); malformed keys are errors.
pub fn parse_spiffe_bundle(json: &[u8]) -> Result<SpiffeBundle, JwtError> {
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(bad("bundle too large"));
    }
    let doc: Doc =
        serde_json::from_slice(json).map_err(|e| bad(format!("bundle is not a JWKS: {e}")))?;
    if doc.keys.len() > MAX_BUNDLE_KEYS {
        return Err(bad("too many keys in the bundle"));
    }
    let mut out = SpiffeBundle {
        sequence: doc.spiffe_sequence,
        refresh_hint: doc.spiffe_refresh_hint,
        ..SpiffeBundle::default()
    };
    for key in doc.keys {
        match key.use_.as_deref() {
            Some("x509-svid") => {
                let x5c = key
                    .x5c
                    .as_deref()
                    .filter(|c| c.len() == 1)
                    .ok_or_else(|| bad("x509-svid key needs exactly one x5c certificate"))?;
                let der = STANDARD
                    .decode(&x5c[0])
                    .map_err(|_| bad("x5c is not base64"))?;
                let info = crate::x509::CertInfo::parse(&der)
                    .map_err(|e| bad(format!("x5c certificate: {e}")))?;
                // The JWK's own key must be the certificate's.
                if spki_of(&key)? != info.spki_der {
                    return Err(bad("x509-svid key does not match its certificate"));
                }
                out.x509_authorities.push(der);
            }
            Some(u @ ("jwt-svid" | "wit-svid")) => {
                let key_id = key
                    .kid
                    .clone()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| bad(format!("{u} key needs a kid")))?;
                let a = JwtAuthority {
                    key_id,
                    public_key: spki_of(&key)?,
                    expires_at: 0,
                };
                if u == "jwt-svid" {
                    out.jwt_authorities.push(a);
                } else {
                    out.wit_authorities.push(a);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Parses a plain JWKS (RFC 7517), such as a Kubernetes service-account
/// issuer publishes: every signing key with a `kid` (EC P-256/384/521 or
/// RSA); keys marked `use: enc`, and keys of other types, are skipped.
pub fn parse_jwks(json: &[u8]) -> Result<Vec<JwtAuthority>, JwtError> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<super::Jwk>,
    }
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(bad("JWKS too large"));
    }
    let set: Set = serde_json::from_slice(json).map_err(|e| bad(format!("not a JWKS: {e}")))?;
    if set.keys.len() > MAX_BUNDLE_KEYS {
        return Err(bad("too many keys in the JWKS"));
    }
    let mut out = Vec::new();
    for key in set.keys {
        if key.use_.as_deref() == Some("enc") || !matches!(key.kty.as_str(), "EC" | "RSA") {
            continue;
        }
        let key_id = key
            .kid
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("JWKS key without a kid"))?;
        out.push(JwtAuthority {
            key_id,
            public_key: spki_of(&key)?,
            expires_at: 0,
        });
    }
    Ok(out)
}

/// SubjectPublicKeyInfo DER of an EC (P-256/384/521) or RSA JWK.
fn spki_of(jwk: &super::Jwk) -> Result<Vec<u8>, JwtError> {
    let b64 = |v: &Option<String>, what: &str| {
        v.as_deref()
            .ok_or_else(|| bad(format!("JWK without {what}")))
            .and_then(|s| {
                URL_SAFE_NO_PAD
                    .decode(s)
                    .map_err(|_| bad(format!("JWK {what} is not base64url")))
            })
    };
    match jwk.kty.as_str() {
        "EC" => {
            let (prefix, len): (&[u8], usize) = match jwk.crv.as_deref() {
                Some("P-256") => (&P256_PREFIX, 32),
                Some("P-384") => (&P384_PREFIX, 48),
                Some("P-521") => (&P521_PREFIX, 66),
                _ => return Err(bad("unsupported EC curve")),
            };
            let (x, y) = (b64(&jwk.x, "x")?, b64(&jwk.y, "y")?);
            if x.len() != len || y.len() != len {
                return Err(bad("EC coordinates have the wrong length"));
            }
            let mut out = prefix.to_vec();
            out.push(4);
            out.extend_from_slice(&x);
            out.extend_from_slice(&y);
            Ok(out)
        }
        "RSA" => {
            let (n, e) = (b64(&jwk.n, "n")?, b64(&jwk.e, "e")?);
            if n.is_empty() || e.is_empty() || n.len() > 2048 || e.len() > 16 {
                return Err(bad("RSA modulus or exponent out of range"));
            }
            use crate::der::{BIT_STRING, SEQUENCE, tlv, unsigned_integer};
            let rsa_key = tlv(
                SEQUENCE,
                &[unsigned_integer(&n), unsigned_integer(&e)].concat(),
            );
            let mut bits = vec![0u8];
            bits.extend_from_slice(&rsa_key);
            let alg = tlv(SEQUENCE, &[RSA_OID.as_slice(), &[0x05, 0x00]].concat());
            Ok(tlv(SEQUENCE, &[alg, tlv(BIT_STRING, &bits)].concat()))
        }
        _ => Err(bad("unsupported key type")),
    }
}

const P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const P384_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
const P521_PREFIX: [u8; 25] = [
    0x30, 0x81, 0x9b, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
    0x2b, 0x81, 0x04, 0x00, 0x23, 0x03, 0x81, 0x86, 0x00,
];
const RSA_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{JwtSigner, spiffe_bundle_json};
    use crate::x509::X509Authority;
    use std::time::{Duration, SystemTime};

    #[test]
    fn round_trips_what_lanyard_publishes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let td = crate::TrustDomain::new("td").unwrap();
        let ca = X509Authority::generate_root(&td, now, Duration::from_secs(3600)).unwrap();
        let jwt = JwtSigner::generate(now, now + Duration::from_secs(3600)).unwrap();
        let mut auth = jwt.authority();
        auth.expires_at = 0;
        let json = spiffe_bundle_json(&[ca.cert_der().to_vec()], &[auth.clone()], 7, 60).unwrap();
        let parsed = parse_spiffe_bundle(json.as_bytes()).unwrap();
        assert_eq!(parsed.x509_authorities, vec![ca.cert_der().to_vec()]);
        assert_eq!(parsed.jwt_authorities, vec![auth]);
        assert_eq!(parsed.sequence, Some(7));
        assert_eq!(parsed.refresh_hint, Some(60));
    }

    #[test]
    fn refuses_malformed_bundles() {
        for bad in [
            &b"not json"[..],
            br#"{"keys": [{"kty": "EC", "use": "jwt-svid", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"}]}"#,
            br#"{"keys": [{"kty": "EC", "use": "jwt-svid", "crv": "P-999", "x": "AA", "y": "AA", "kid": "k"}]}"#,
            br#"{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["!!"]}]}"#,
            br#"{"keys": [{"kty": "EC", "use": "x509-svid"}]}"#,
            br#"{"keys": [{"kty": "oct", "use": "jwt-svid", "kid": "k"}]}"#,
            br#"{"keys": [{"kty": "RSA", "use": "jwt-svid", "kid": "k", "n": "", "e": "AQAB"}]}"#,
        ] {
            assert!(parse_spiffe_bundle(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Other uses are skipped.
        let ok = parse_spiffe_bundle(br#"{"keys": [{"kty": "EC", "use": "other"}]}"#).unwrap();
        assert!(ok.x509_authorities.is_empty() && ok.jwt_authorities.is_empty());
    }
}
