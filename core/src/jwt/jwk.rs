//! JSON Web Keys and the SPIFFE bundle format.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::JwtError;

/// A public JWT signing key as published in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// Key ID.
    pub key_id: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Expiry, Unix seconds (0 when unknown).
    pub expires_at: u64,
}

/// A JSON Web Key (the members Lanyard reads and writes).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Jwk {
    /// Key type: `EC` or `RSA`.
    pub kty: String,
    /// Curve for EC keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x coordinate, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Key ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `jwt-svid` or `x509-svid` in SPIFFE bundles.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Certificate chain (standard base64 DER) for X.509 authorities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.2.840.10045.3.1.34";
const P521: &str = "1.3.132.0.35";
const EC_KEY: &str = "1.2.840.10045.2.1";
const RSA_KEY: &str = "1.2.840.113549.1.1.1";

impl Jwk {
    /// The JWK of a public key given as SubjectPublicKeyInfo DER (EC P-256,
    /// P-384, P-521 or RSA).
    pub fn from_spki(spki_der: &[u8]) -> Result<Self, JwtError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| JwtError::Key(format!("public key: {e}")))?;
        let (alg, curve) = crate::x509::key_algorithm(&spki);
        let key = spki.subject_public_key.data.as_ref();
        if alg == EC_KEY {
            let (crv, len) = match curve.as_deref() {
                Some(P256) => ("P-256", 32),
                Some(P384) => ("P-384", 48),
                Some(P521) => ("P-521", 66),
                _ => return Err(JwtError::Key("unsupported EC curve".into())),
            };
            if key.len() != 1 + 2 * len || key[0] != 4 {
                return Err(JwtError::Key("EC point is not uncompressed".into()));
            }
            return Ok(Self {
                kty: "EC".into(),
                crv: Some(crv.into()),
                x: Some(URL_SAFE_NO_PAD.encode(&key[1..=len])),
                y: Some(URL_SAFE_NO_PAD.encode(&key[1 + len..])),
                ..Self::default()
            });
        }
        if alg == RSA_KEY {
            let (n, e) = rsa_components(key)?;
            return Ok(Self {
                kty: "RSA".into(),
                n: Some(URL_SAFE_NO_PAD.encode(n)),
                e: Some(URL_SAFE_NO_PAD.encode(e)),
                ..Self::default()
            });
        }
        Err(JwtError::Key(format!("unsupported key algorithm {alg}")))
    }
}

/// Splits a PKCS#1 RSAPublicKey into modulus and exponent (leading zero
/// bytes removed).
fn rsa_components(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), JwtError> {
    use x509_parser::der_parser::ber::BerObject;
    use x509_parser::der_parser::der::parse_der;
    let bad = || JwtError::Key("malformed RSA public key".into());
    let (_, obj): (_, BerObject<'_>) = parse_der(der).map_err(|_| bad())?;
    let seq = obj.as_sequence().map_err(|_| bad())?;
    let int = |i: usize| -> Result<Vec<u8>, JwtError> {
        let b = seq.get(i).ok_or_else(bad)?.as_slice().map_err(|_| bad())?;
        let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        Ok(b[first..].to_vec())
    };
    Ok((int(0)?, int(1)?))
}

fn key_json(a: &JwtAuthority, use_: &str) -> Result<Value, JwtError> {
    let mut jwk = Jwk::from_spki(&a.public_key)?;
    jwk.kid = Some(a.key_id.clone());
    jwk.use_ = Some(use_.into());
    serde_json::to_value(jwk).map_err(|e| JwtError::Key(e.to_string()))
}

fn jwt_key_json(a: &JwtAuthority) -> Result<Value, JwtError> {
    key_json(a, "jwt-svid")
}

/// The trust bundle in the SPIFFE bundle format: X.509 authorities with
/// `use: x509-svid` and `x5c` (no `kid`), JWT authorities with
/// `use: jwt-svid` and `kid`, plus `spiffe_sequence` and
/// `spiffe_refresh_hint`.
pub fn spiffe_bundle_json(
    x509_authorities: &[Vec<u8>],
    jwt_authorities: &[JwtAuthority],
    sequence: u64,
    refresh_hint_secs: u64,
) -> Result<String, JwtError> {
    spiffe_bundle_json_with_wit(
        x509_authorities,
        jwt_authorities,
        &[],
        sequence,
        refresh_hint_secs,
    )
}

/// [`spiffe_bundle_json`] with the WIT-SVID authorities too (`use:
/// wit-svid` and `kid`, as the WIT-SVID profile publishes them).
pub fn spiffe_bundle_json_with_wit(
    x509_authorities: &[Vec<u8>],
    jwt_authorities: &[JwtAuthority],
    wit_authorities: &[JwtAuthority],
    sequence: u64,
    refresh_hint_secs: u64,
) -> Result<String, JwtError> {
    let mut keys = Vec::new();
    for der in x509_authorities {
        let cert = crate::x509::CertInfo::parse(der).map_err(|e| JwtError::Key(e.to_string()))?;
        let mut jwk = Jwk::from_spki(&cert.spki_der)?;
        jwk.use_ = Some("x509-svid".into());
        jwk.x5c = Some(vec![STANDARD.encode(der)]);
        keys.push(serde_json::to_value(jwk).map_err(|e| JwtError::Key(e.to_string()))?);
    }
    for a in jwt_authorities {
        keys.push(jwt_key_json(a)?);
    }
    for a in wit_authorities {
        keys.push(key_json(a, "wit-svid")?);
    }
    let doc = json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint_secs,
    });
    serde_json::to_string_pretty(&doc).map_err(|e| JwtError::Key(e.to_string()))
}

/// The plain JWKS of JWT authorities served over the Workload API.
pub fn jwks_for_workloads(jwt_authorities: &[JwtAuthority]) -> Result<Vec<u8>, JwtError> {
    let keys = jwt_authorities
        .iter()
        .map(jwt_key_json)
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_vec(&json!({ "keys": keys })).map_err(|e| JwtError::Key(e.to_string()))
}

/// The JWKS of WIT authorities served by `FetchWITBundles` (`use:
/// wit-svid`, each with its `kid`).
pub fn wit_jwks_for_workloads(wit_authorities: &[JwtAuthority]) -> Result<String, JwtError> {
    let keys = wit_authorities
        .iter()
        .map(|a| key_json(a, "wit-svid"))
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_string(&json!({ "keys": keys })).map_err(|e| JwtError::Key(e.to_string()))
}
