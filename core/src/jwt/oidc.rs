//! OpenID Connect discovery for JWT-SVIDs: the issuer URL every JWT-SVID
//! names in `iss`, the discovery document at
//! `{issuer}/.well-known/openid-configuration` and the JWKS at its
//! `jwks_uri`. External verifiers (cloud workload identity federation,
//! Vault's JWT auth, any OIDC library) find the keys this way.

use serde_json::{Value, json};

use super::JwtError;
use super::jwk::{Jwk, JwtAuthority};

/// Where the discovery document is, under the issuer URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS is, under the issuer URL.
pub const JWKS_PATH: &str = "/keys";

/// Checks an issuer URL and returns it without a trailing `/`: `https://`
/// (or `http://`, for a discovery endpoint behind a TLS-terminating proxy
/// or on loopback), a host, and no query, fragment or user info, as OpenID
/// Connect Discovery requires of an issuer.
pub fn issuer_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (or http://)")?;
    if rest.contains(['?', '#']) {
        return Err("must not have a query or a fragment".into());
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("must name a host".into());
    }
    if host.contains('@') {
        return Err("must not carry user information".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The default issuer of a trust domain: `https://<trust domain>`.
pub fn default_issuer(trust_domain: &str) -> String {
    format!("https://{trust_domain}")
}

/// The OpenID Connect discovery document of `issuer` (as returned by
/// [`issuer_url`]).
pub fn discovery_document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "ES384", "ES512", "RS256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti"],
    })
}

/// The JWS algorithm a key signs with, as OIDC verifiers want it in `alg`.
fn algorithm(jwk: &Jwk) -> Option<&'static str> {
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("EC", Some("P-256")) => Some("ES256"),
        ("EC", Some("P-384")) => Some("ES384"),
        ("EC", Some("P-521")) => Some("ES512"),
        ("RSA", _) => Some("RS256"),
        _ => None,
    }
}

/// The JWKS at `jwks_uri`: the JWT authorities (the same set as the JWT
/// bundle) with `use: sig`, `alg` and `kid`, as OIDC verifiers read them.
pub fn oidc_jwks(jwt_authorities: &[JwtAuthority]) -> Result<Vec<u8>, JwtError> {
    let mut keys = Vec::with_capacity(jwt_authorities.len());
    for a in jwt_authorities {
        let jwk = Jwk::from_spki(&a.public_key)?;
        let mut key = serde_json::to_value(&jwk).map_err(|e| JwtError::Key(e.to_string()))?;
        if let Value::Object(m) = &mut key {
            m.insert("kid".into(), json!(a.key_id));
            m.insert("use".into(), json!("sig"));
            if let Some(alg) = algorithm(&jwk) {
                m.insert("alg".into(), json!(alg));
            }
        }
        keys.push(key);
    }
    serde_json::to_vec(&json!({ "keys": keys })).map_err(|e| JwtError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::JwtSigner;
    use std::time::{Duration, SystemTime};

    #[test]
    fn issuer_urls_are_checked_and_normalised() {
        assert_eq!(
            issuer_url("https://oidc.example.org/").unwrap(),
            "https://oidc.example.org"
        );
        assert_eq!(
            issuer_url("http://127.0.0.1:8443/lanyard").unwrap(),
            "http://127.0.0.1:8443/lanyard"
        );
        for bad in [
            "oidc.example.org",
            "spiffe://example.org",
            "https://",
            "https:///path",
            "https://a.org/?x=1",
            "https://a.org/#f",
            "https://user@a.org",
            "https://a.org/a b",
        ] {
            assert!(issuer_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn discovery_names_the_issuer_and_its_keys() {
        let d = discovery_document("https://oidc.example.org");
        assert_eq!(d["issuer"], "https://oidc.example.org");
        assert_eq!(d["jwks_uri"], "https://oidc.example.org/keys");
        assert!(
            d["id_token_signing_alg_values_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("ES256"))
        );
    }

    #[test]
    fn a_jwt_svid_names_its_issuer_key_time_and_id() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = SystemTime::now();
        let s = JwtSigner::generate(now, now + Duration::from_secs(600)).unwrap();
        let sub = crate::SpiffeId::new("spiffe://example.org/agent").unwrap();
        let m = s
            .sign_svid(
                "https://oidc.example.org",
                &sub,
                &["https://auth.example.org".into()],
                Duration::from_secs(60),
                now,
                Default::default(),
            )
            .unwrap();
        let part = |i: usize| -> Value {
            let seg = m.token.split('.').nth(i).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
        };
        assert_eq!(part(0)["kid"], s.key_id());
        let claims = part(1);
        assert_eq!(claims["iss"], "https://oidc.example.org");
        assert_eq!(claims["sub"], "spiffe://example.org/agent");
        assert_eq!(claims["jti"], m.jti.as_str());
        assert!(claims["iat"].as_u64().unwrap() <= claims["exp"].as_u64().unwrap());
    }

    #[test]
    fn jwks_keys_say_use_sig_alg_and_kid() {
        let now = SystemTime::now();
        let s = JwtSigner::generate(now, now + Duration::from_secs(60)).unwrap();
        let doc: Value = serde_json::from_slice(&oidc_jwks(&[s.authority()]).unwrap()).unwrap();
        let k = &doc["keys"][0];
        assert_eq!(k["use"], "sig");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["kid"], s.key_id());
        assert_eq!(doc["keys"].as_array().unwrap().len(), 1);
    }
}
