//! Workload Proof Tokens (draft-ietf-wimse-wpt-01): a WIT's proof of
//! possession for one HTTP request.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::super::JwtError;
use super::super::validate::{b64, expiry, json_object, verify_signature};
use super::{
    MAX_JTI_LEN, MAX_WPT_LIFETIME, ReplayCache, ValidatedWit, WPT_TYP, WitError, WorkloadKey,
};
use crate::clock::unix_secs;

/// What the request a proof came with carried: its target URI and the
/// other tokens the proof must bind.
#[derive(Debug, Clone, Default)]
pub struct WptRequest<'a> {
    /// The HTTP target URI (query and fragment are ignored).
    pub target_uri: &'a str,
    /// The `Txn-Token` header, if any (bound by `tth`).
    pub txn_token: Option<&'a str>,
    /// Other context tokens by lower-case header name (bound by `oth`).
    pub other_tokens: &'a [(&'a str, &'a str)],
}

/// A proof that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedWpt {
    /// `jti`.
    pub jti: String,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// The header names of the other tokens it binds (`oth`): only these
    /// may inform a decision.
    pub bound_tokens: Vec<String>,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

/// The base64url SHA-256 of a token's ASCII text, as `wth`, `tth` and
/// `oth` carry it.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, token.trim().as_bytes()).as_ref())
}

fn without_query(uri: &str) -> &str {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    &uri[..end]
}

fn binding(what: &str) -> WitError {
    WitError::Binding(what.to_owned())
}

/// Validates the proof `wpt` that came with the WIT `wit` (validated from
/// `wit_token`) on `request`, at `now`: `typ` `wpt+jwt`, `alg` equal to the
/// WIT key's, the signature by that key; `aud` the request's target URI,
/// `exp` not passed and at most `max_lifetime` ahead (capped at
/// [`MAX_WPT_LIFETIME`]), `jti`, `wth` the WIT's hash, `tth` exactly when a
/// Txn-Token came, every `oth` entry a token the request carried with a
/// matching hash; then the `jti` is taken in `replay` (per sender).
pub fn validate_wpt(
    wpt: &str,
    wit: &ValidatedWit,
    wit_token: &str,
    request: &WptRequest<'_>,
    now: SystemTime,
    max_lifetime: Duration,
    replay: &ReplayCache,
) -> Result<ValidatedWpt, WitError> {
    if wpt.len() > super::super::MAX_TOKEN_LEN {
        return Err(JwtError::TooLong("proof").into());
    }
    let parts: Vec<&str> = wpt.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(JwtError::Malformed(format!(
            "proof: expected 3 dot-separated parts, found {}",
            parts.len()
        ))
        .into());
    };
    let header = json_object(&b64(h, "proof header")?, "proof header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if alg != wit.cnf_alg {
        return Err(WitError::ProofAlgorithm {
            found: alg.to_owned(),
            want: wit.cnf_alg.clone(),
        });
    }
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if typ != WPT_TYP && typ != "application/wpt+jwt" {
        return Err(JwtError::Malformed(format!("proof header typ must be {WPT_TYP}")).into());
    }
    let sig = b64(s, "proof signature")?;
    verify_signature(
        alg,
        "cnf",
        &wit.cnf,
        &wpt.as_bytes()[..h.len() + 1 + p.len()],
        &sig,
    )?;
    let claims = json_object(&b64(p, "proof payload")?, "proof payload")?;

    let target = without_query(request.target_uri);
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == target,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(target)),
        _ => false,
    };
    if !aud_ok {
        return Err(WitError::Target(target.to_owned()));
    }
    let now_secs = unix_secs(now);
    let exp = expiry(&claims, now_secs)?;
    let longest = max_lifetime.min(MAX_WPT_LIFETIME).as_secs();
    if exp - now_secs > longest {
        return Err(WitError::Lifetime(exp - now_secs, longest));
    }
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_LEN => j.clone(),
        _ => return Err(JwtError::Claim("jti").into()),
    };
    if claims.get("wth").and_then(Value::as_str) != Some(token_hash(wit_token).as_str()) {
        return Err(binding("wth does not match the Workload-Identity-Token"));
    }
    match (claims.get("tth"), request.txn_token) {
        (None, None) => {}
        (Some(Value::String(t)), Some(txn)) if *t == token_hash(txn) => {}
        (None, Some(_)) => return Err(binding("tth is missing for the Txn-Token sent")),
        (Some(_), None) => return Err(binding("tth names a Txn-Token the request does not carry")),
        (Some(_), Some(_)) => return Err(binding("tth does not match the Txn-Token")),
    }
    let mut bound_tokens = Vec::new();
    match claims.get("oth") {
        None => {}
        Some(Value::Object(oth)) => {
            for (name, hash) in oth {
                let sent = request
                    .other_tokens
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .ok_or_else(|| binding(&format!("oth names {name:?}, not in the request")))?;
                if hash.as_str() != Some(token_hash(sent.1).as_str()) {
                    return Err(binding(&format!("oth {name:?} does not match its header")));
                }
                bound_tokens.push(name.to_ascii_lowercase());
            }
        }
        Some(_) => return Err(binding("oth is not an object")),
    }
    replay.take(wit.spiffe_id.as_str(), &jti, exp, now_secs)?;
    Ok(ValidatedWpt {
        jti,
        expires_at: exp,
        bound_tokens,
        claims,
    })
}

/// Signs a proof for one request with `key` (the WIT's): `aud` the target
/// URI without query, `exp` `ttl` from `now`, a random `jti`, `wth` the
/// WIT's hash, `tth` for a Txn-Token and `oth` for other tokens sent with
/// it.
pub fn sign_wpt(
    key: &WorkloadKey,
    wit_token: &str,
    request: &WptRequest<'_>,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, WitError> {
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti)
        .map_err(|_| WitError::from(JwtError::Key("random source failed".into())))?;
    let mut claims = json!({
        "aud": without_query(request.target_uri),
        "exp": unix_secs(now) + ttl.as_secs().max(1),
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "wth": token_hash(wit_token),
    });
    if let Some(t) = request.txn_token {
        claims["tth"] = json!(token_hash(t));
    }
    if !request.other_tokens.is_empty() {
        let oth: Map<String, Value> = request
            .other_tokens
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), json!(token_hash(v))))
            .collect();
        claims["oth"] = Value::Object(oth);
    }
    key.sign_with_header(&json!({"alg": "ES256", "typ": WPT_TYP}), &claims)
}
