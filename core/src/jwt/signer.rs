//! The ES256 JWT signing key and JWT-SVID minting.

use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::{JwtAuthority, JwtError};
use crate::clock::unix_secs;
use crate::spiffe_id::SpiffeId;

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A freshly minted JWT-SVID.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// `iat`.
    pub issued_at: SystemTime,
    /// `exp`.
    pub expires_at: SystemTime,
    /// `jti`.
    pub jti: String,
}

impl std::fmt::Debug for MintedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedJwt")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("jti", &self.jti)
            .finish()
    }
}

/// An ES256 signing key with its key ID and expiry.
pub struct JwtSigner {
    kid: String,
    key: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn random_hex(n: usize) -> Result<String, JwtError> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| JwtError::Key("random source failed".into()))?;
    Ok(hex::encode(b))
}

impl JwtSigner {
    /// Generates a new key valid from `not_before` until `not_after`, with a
    /// random key ID.
    pub fn generate(not_before: SystemTime, not_after: SystemTime) -> Result<Self, JwtError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| JwtError::Key("key generation failed".into()))?;
        Self::from_parts(&random_hex(16)?, doc.as_ref(), not_before, not_after)
    }

    /// Rebuilds a key from its stored parts.
    pub fn from_parts(
        kid: &str,
        pkcs8: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, JwtError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|e| JwtError::Key(format!("JWT key: {e}")))?;
        Ok(Self {
            kid: kid.to_owned(),
            key,
            pkcs8: pkcs8.to_vec(),
            not_before,
            not_after,
        })
    }

    /// The key ID.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The PKCS#8 private key. Handle with care.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// When the key was created.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the key stops signing.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut v = P256_SPKI_PREFIX.to_vec();
        v.extend_from_slice(self.key.public_key().as_ref());
        v
    }

    /// The public part, as published in the bundle.
    pub fn authority(&self) -> JwtAuthority {
        JwtAuthority {
            key_id: self.kid.clone(),
            public_key: self.spki_der(),
            expires_at: unix_secs(self.not_after),
        }
    }

    /// Signs arbitrary claims with header `{alg: ES256, kid, typ: JWT}`.
    pub fn sign_claims(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" });
        self.sign_with_header(&header, claims)
    }

    /// Signs `header.claims` as given, whatever the header says. For tools
    /// and tests that need tokens a validator must refuse; SVIDs come from
    /// [`JwtSigner::sign_svid`].
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, JwtError> {
        let enc = |v: &Value| -> Result<String, JwtError> {
            let bytes = serde_json::to_vec(v).map_err(|e| JwtError::Key(e.to_string()))?;
            Ok(URL_SAFE_NO_PAD.encode(bytes))
        };
        let signing_input = format!("{}.{}", enc(header)?, enc(claims)?);
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| JwtError::Key("signing failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Mints a JWT-SVID for `sub` and `audience`, issued by `issuer` (its
    /// `iss`, the URL of the OpenID Connect discovery document), living
    /// `ttl` but never past the key's own expiry. `extra` claims are added
    /// (they cannot replace the standard ones).
    pub fn sign_svid(
        &self,
        issuer: &str,
        sub: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: SystemTime,
        extra: Map<String, Value>,
    ) -> Result<MintedJwt, JwtError> {
        if audience.is_empty() {
            return Err(JwtError::Claim("aud"));
        }
        if now >= self.not_after {
            return Err(JwtError::Key("the JWT signing key has expired".into()));
        }
        let iat = unix_secs(now);
        let exp = unix_secs(crate::rotation::capped_not_after(now, ttl, self.not_after));
        let jti = random_hex(16)?;
        let mut claims = extra;
        claims.insert("iss".into(), json!(issuer));
        claims.insert("sub".into(), json!(sub.as_str()));
        claims.insert("aud".into(), json!(audience));
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(jti));
        let token = self.sign_claims(&Value::Object(claims))?;
        Ok(MintedJwt {
            token,
            issued_at: crate::clock::from_unix_secs(iat),
            expires_at: crate::clock::from_unix_secs(exp),
            jti,
        })
    }
}
