//! The workload's key (one per WIT) and WIT minting.

use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::super::{JwtError, JwtSigner, MintedJwt};
use super::{WIT_TYP, WitError};
use crate::clock::unix_secs;
use crate::spiffe_id::SpiffeId;

/// An ES256 key pair a WIT is bound to. The private half goes to the
/// workload (as a JWK) and nowhere else.
pub struct WorkloadKey {
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("public", &self.public_jwk())
            .finish_non_exhaustive()
    }
}

fn key_error(what: &str) -> WitError {
    JwtError::Key(what.to_owned()).into()
}

impl WorkloadKey {
    /// A fresh P-256 key pair.
    pub fn generate() -> Result<Self, WitError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| key_error("key generation failed"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
            .map_err(|_| key_error("key generation failed"))?;
        Ok(Self { key })
    }

    /// The key of a private JWK (`kty` EC, `crv` P-256, `x`, `y`, `d`), as
    /// the Workload API hands it out.
    pub fn from_private_jwk(json: &str) -> Result<Self, WitError> {
        let v: Value =
            serde_json::from_str(json).map_err(|_| key_error("private JWK is not JSON"))?;
        let field = |name: &str| -> Result<Vec<u8>, WitError> {
            v.get(name)
                .and_then(Value::as_str)
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .ok_or_else(|| key_error(&format!("private JWK has no usable {name:?}")))
        };
        if v.get("kty").and_then(Value::as_str) != Some("EC")
            || v.get("crv").and_then(Value::as_str) != Some("P-256")
        {
            return Err(key_error("private JWK is not an EC P-256 key"));
        }
        let mut point = vec![4u8];
        point.extend(field("x")?);
        point.extend(field("y")?);
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &field("d")?,
            &point,
        )
        .map_err(|e| key_error(&format!("private JWK: {e}")))?;
        Ok(Self { key })
    }

    fn coordinates(&self) -> (String, String) {
        let p = self.key.public_key().as_ref();
        (
            URL_SAFE_NO_PAD.encode(&p[1..33]),
            URL_SAFE_NO_PAD.encode(&p[33..65]),
        )
    }

    /// The public key as it goes into `cnf.jwk` (with `alg` ES256).
    pub fn public_jwk(&self) -> Value {
        let (x, y) = self.coordinates();
        json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"})
    }

    /// The private key as a JWK (RFC 7517) JSON text, for the workload.
    pub fn private_jwk(&self) -> Result<String, WitError> {
        let (x, y) = self.coordinates();
        let d = self
            .key
            .private_key()
            .as_be_bytes()
            .map_err(|_| key_error("private key export failed"))?;
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256",
            "d": URL_SAFE_NO_PAD.encode(d.as_ref()),
        });
        Ok(jwk.to_string())
    }

    /// Signs `header.claims` as given with this key. Proofs come from
    /// [`super::sign_wpt`]; this is for tools and tests that need tokens a
    /// validator must refuse.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, WitError> {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| key_error("signing failed"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

/// The `cnf.jwk` to issue for a public key a workload's agent sent: only
/// an EC P-256 key for ES256 (`kty`, `crv`, `x`, `y` of 32 bytes each,
/// `alg` ES256 when present), rebuilt with exactly those members, so that
/// nothing else the sender put in it reaches the token.
pub fn issuable_cnf(jwk_json: &str) -> Result<Value, WitError> {
    let bad = |m: &str| WitError::Confirmation(m.to_owned());
    if jwk_json.len() > 1024 {
        return Err(bad("public key JWK is too long"));
    }
    let v: Value =
        serde_json::from_str(jwk_json).map_err(|_| bad("public key is not a JSON object"))?;
    let o = v
        .as_object()
        .ok_or_else(|| bad("public key is not a JSON object"))?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| o.contains_key(*m))
    {
        return Err(bad("a private key was sent where the public key belongs"));
    }
    let text = |name: &str| o.get(name).and_then(Value::as_str);
    if text("kty") != Some("EC") || text("crv") != Some("P-256") {
        return Err(bad("only EC P-256 keys (ES256) are issued"));
    }
    if o.get("alg").is_some_and(|a| a.as_str() != Some("ES256")) {
        return Err(bad("only ES256 keys are issued"));
    }
    let coord = |name: &str| -> Result<String, WitError> {
        let s = text(name).ok_or_else(|| bad(&format!("public key has no {name:?}")))?;
        match URL_SAFE_NO_PAD.decode(s) {
            Ok(b) if b.len() == 32 => Ok(s.to_owned()),
            _ => Err(bad(&format!(
                "public key {name:?} is not 32 bytes of base64url"
            ))),
        }
    };
    Ok(json!({"kty": "EC", "crv": "P-256", "x": coord("x")?, "y": coord("y")?, "alg": "ES256"}))
}

/// Mints a WIT-SVID for `sub` bound to `cnf` (a public JWK with `alg`),
/// signed by `signer` (a WIT authority), living `ttl` but never past the
/// signer's own expiry: header `{alg, kid, typ: wit+jwt}` and nothing
/// else; claims `sub`, `exp`, `iat`, `nbf`, `jti`, `cnf` and `extra` (which
/// cannot replace them; never `aud`).
pub fn sign_wit(
    signer: &JwtSigner,
    sub: &SpiffeId,
    cnf: &Value,
    ttl: Duration,
    now: SystemTime,
    extra: Map<String, Value>,
) -> Result<MintedJwt, WitError> {
    if now >= signer.not_after() {
        return Err(key_error("the WIT signing key has expired"));
    }
    if extra.contains_key("aud") {
        return Err(WitError::HasAudience);
    }
    let iat = unix_secs(now);
    let exp = unix_secs(crate::rotation::capped_not_after(
        now,
        ttl,
        signer.not_after(),
    ));
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| key_error("random source failed"))?;
    let jti = hex::encode(jti);
    let mut claims = extra;
    claims.insert("sub".into(), json!(sub.as_str()));
    claims.insert("iat".into(), json!(iat));
    claims.insert("nbf".into(), json!(iat));
    claims.insert("exp".into(), json!(exp));
    claims.insert("jti".into(), json!(jti));
    claims.insert("cnf".into(), json!({ "jwk": cnf }));
    let header = json!({"alg": "ES256", "kid": signer.key_id(), "typ": WIT_TYP});
    let token = signer.sign_with_header(&header, &Value::Object(claims))?;
    Ok(MintedJwt {
        token,
        issued_at: crate::clock::from_unix_secs(iat),
        expires_at: crate::clock::from_unix_secs(exp),
        jti,
    })
}
