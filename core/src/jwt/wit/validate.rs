//! WIT-SVID validation.

use std::time::SystemTime;

use serde_json::{Map, Value};

use super::super::validate::{b64, expiry, json_object, subject_in, verifier, verify_jws_typed};
use super::super::{Jwk, JwtAuthority, JwtError};
use super::{ALGORITHMS, WIT_TYP, WitError};
use crate::clock::unix_secs;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// A WIT-SVID that passed validation. It proves nothing alone: the request
/// must also carry a proof signed with [`ValidatedWit::cnf`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedWit {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// `jti`, when the issuer set one.
    pub jti: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// The workload's public key (`cnf.jwk`).
    pub cnf: Jwk,
    /// `cnf.jwk.alg`: the algorithm its proofs are signed with.
    pub cnf_alg: String,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

/// JWK members that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// Reads `cnf.jwk`: a public EC or RSA key with an `alg` of the profile
/// that suits it.
fn confirmation(claims: &Map<String, Value>) -> Result<(Jwk, String), WitError> {
    let bad = |m: &str| WitError::Confirmation(m.to_owned());
    let jwk = claims
        .get("cnf")
        .and_then(Value::as_object)
        .and_then(|c| c.get("jwk"))
        .and_then(Value::as_object)
        .ok_or_else(|| bad("cnf.jwk is missing"))?;
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(bad(&format!("cnf.jwk carries private member {m:?}")));
    }
    let alg = jwk
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("cnf.jwk.alg is missing"))?;
    if !ALGORITHMS.contains(&alg) {
        return Err(bad(&format!("cnf.jwk.alg {alg:?} is not allowed")));
    }
    let key: Jwk = serde_json::from_value(Value::Object(jwk.clone()))
        .map_err(|e| bad(&format!("cnf.jwk: {e}")))?;
    let fits = match key.kty.as_str() {
        "EC" => {
            let crv = match alg {
                "ES256" => "P-256",
                "ES384" => "P-384",
                "ES512" => "P-521",
                _ => "",
            };
            key.crv.as_deref() == Some(crv) && key.x.is_some() && key.y.is_some()
        }
        "RSA" => {
            (alg.starts_with("RS") || alg.starts_with("PS")) && key.n.is_some() && key.e.is_some()
        }
        _ => false,
    };
    if !fits {
        return Err(bad(&format!("a {} key cannot verify {alg}", key.kty)));
    }
    // The algorithm is one aws-lc-rs verifies (checked again per proof).
    verifier(alg)?;
    Ok((key, alg.to_owned()))
}

/// Validates a WIT-SVID against the WIT authorities of `td` at `now`:
/// `typ` `wit+jwt`, an `alg` of the profile, `kid` required and known, no
/// other header parameter, the signature; `sub` a SPIFFE ID of `td`, `exp`
/// not passed, `nbf` (when present) passed, no `aud`, and `cnf.jwk` a
/// public key whose `alg` is of the profile.
pub fn validate_wit_svid(
    token: &str,
    td: &TrustDomain,
    authorities: &[JwtAuthority],
    now: SystemTime,
) -> Result<ValidatedWit, WitError> {
    let claims = verify_jws_typed(token, authorities, WIT_TYP)?;
    // The signature held, so the header parses.
    let header = json_object(
        &b64(token.split('.').next().unwrap_or_default(), "header")?,
        "header",
    )?;
    if let Some(k) = header
        .keys()
        .find(|k| !matches!(k.as_str(), "alg" | "typ" | "kid"))
    {
        return Err(WitError::HeaderParameter(k.clone()));
    }
    let now_secs = unix_secs(now);
    let exp = expiry(&claims, now_secs)?;
    if let Some(nbf) = claims.get("nbf")
        && now_secs < nbf.as_u64().ok_or(JwtError::Claim("nbf"))?
    {
        return Err(JwtError::NotYetValid.into());
    }
    if claims.contains_key("aud") {
        return Err(WitError::HasAudience);
    }
    let spiffe_id = subject_in(&claims, td)?;
    let jti = match claims.get("jti") {
        None => None,
        Some(Value::String(j)) if !j.is_empty() => Some(j.clone()),
        Some(_) => return Err(JwtError::Claim("jti").into()),
    };
    let (cnf, cnf_alg) = confirmation(&claims)?;
    Ok(ValidatedWit {
        spiffe_id,
        jti,
        expires_at: exp,
        cnf,
        cnf_alg,
        claims,
    })
}
