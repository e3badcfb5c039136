//! JWT-SVID validation against a trust domain's JWT authorities.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_lc_rs::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{Jwk, JwtAuthority, JwtError};
use crate::clock::unix_secs;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// A token that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

pub(super) fn b64(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
}

pub(super) fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
    }
}

pub(super) enum Verifier {
    Ec(&'static signature::EcdsaVerificationAlgorithm, &'static str),
    Rsa(&'static RsaParameters),
}

pub(super) fn verifier(alg: &str) -> Result<Verifier, JwtError> {
    Ok(match alg {
        "ES256" => Verifier::Ec(&signature::ECDSA_P256_SHA256_FIXED, "P-256"),
        "ES384" => Verifier::Ec(&signature::ECDSA_P384_SHA384_FIXED, "P-384"),
        "ES512" => Verifier::Ec(&signature::ECDSA_P521_SHA512_FIXED, "P-521"),
        "RS256" => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        other => return Err(JwtError::Algorithm(other.to_owned())),
    })
}

pub(super) fn verify_signature(
    alg: &str,
    kid: &str,
    jwk: &Jwk,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), JwtError> {
    let mismatch = || JwtError::KeyMismatch(kid.to_owned(), alg.to_owned());
    let field = |v: &Option<String>| -> Result<Vec<u8>, JwtError> {
        URL_SAFE_NO_PAD
            .decode(v.as_deref().ok_or_else(mismatch)?)
            .map_err(|_| mismatch())
    };
    match verifier(alg)? {
        Verifier::Ec(algo, crv) => {
            if jwk.kty != "EC" || jwk.crv.as_deref() != Some(crv) {
                return Err(mismatch());
            }
            let mut point = vec![4u8];
            point.extend(field(&jwk.x)?);
            point.extend(field(&jwk.y)?);
            UnparsedPublicKey::new(algo, point)
                .verify(msg, sig)
                .map_err(|_| JwtError::BadSignature)
        }
        Verifier::Rsa(params) => {
            if jwk.kty != "RSA" {
                return Err(mismatch());
            }
            RsaPublicKeyComponents {
                n: field(&jwk.n)?,
                e: field(&jwk.e)?,
            }
            .verify(params, msg, sig)
            .map_err(|_| JwtError::BadSignature)
        }
    }
}

/// Most audiences one JWT-SVID may be requested for.
pub const MAX_AUDIENCES: usize = 32;

/// Whether a requested audience list is acceptable: at most
/// [`MAX_AUDIENCES`] entries, each 1 to [`MAX_AUDIENCE_LEN`] bytes (an
/// empty list is the caller's to refuse where an audience is required).
pub fn audiences_ok(audience: &[String]) -> bool {
    audience.len() <= MAX_AUDIENCES
        && audience
            .iter()
            .all(|a| !a.is_empty() && a.len() <= MAX_AUDIENCE_LEN)
}

/// Checks a compact JWS against `authorities` and returns its payload:
/// at most [`MAX_TOKEN_LEN`] bytes, three parts, an asymmetric `alg`
/// (never `none` or HMAC), `typ` JWT or JOSE when present, a `kid` found
/// among `authorities`, and a signature that verifies. Claims are the
/// caller's to check.
pub fn verify_jws(
    token: &str,
    authorities: &[JwtAuthority],
) -> Result<Map<String, Value>, JwtError> {
    verify_jws_as(token, authorities, &|typ| {
        typ.is_none_or(|t| t == "JWT" || t == "JOSE")
    })
    .map_err(|e| match e {
        JwtError::Malformed(m) if m == TYP_REFUSED => {
            JwtError::Malformed("header typ must be JWT or JOSE".into())
        }
        other => other,
    })
}

/// [`verify_jws`] for a token of an explicit type (`typ` present and equal
/// to `typ`), such as a transaction token's `txntoken+jwt`.
pub fn verify_jws_typed(
    token: &str,
    authorities: &[JwtAuthority],
    typ: &str,
) -> Result<Map<String, Value>, JwtError> {
    verify_jws_as(token, authorities, &|t| t == Some(typ)).map_err(|e| match e {
        JwtError::Malformed(m) if m == TYP_REFUSED => {
            JwtError::Malformed(format!("header typ must be {typ}"))
        }
        other => other,
    })
}

const TYP_REFUSED: &str = "typ";

fn verify_jws_as(
    token: &str,
    authorities: &[JwtAuthority],
    typ_ok: &dyn Fn(Option<&str>) -> bool,
) -> Result<Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong("token"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(JwtError::Malformed(format!(
            "expected 3 dot-separated parts, found {}",
            parts.len()
        )));
    };
    let header = json_object(&b64(h, "header")?, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(JwtError::Algorithm(String::new())),
    };
    verifier(&alg)?;
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(JwtError::Malformed(TYP_REFUSED.into())),
    };
    if !typ_ok(typ) {
        return Err(JwtError::Malformed(TYP_REFUSED.into()));
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(JwtError::MissingKid),
    };
    let keys: HashMap<&str, &JwtAuthority> =
        authorities.iter().map(|a| (a.key_id.as_str(), a)).collect();
    let authority = keys
        .get(kid.as_str())
        .ok_or_else(|| JwtError::UnknownKid(kid.clone()))?;
    let jwk = Jwk::from_spki(&authority.public_key)?;
    let sig = b64(s, "signature")?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    verify_signature(&alg, &kid, &jwk, signing_input.as_bytes(), &sig)?;

    let claims = json_object(&b64(p, "payload")?, "payload")?;
    Ok(claims)
}

/// `sub`: a SPIFFE ID of `td`.
pub(super) fn subject_in(
    claims: &Map<String, Value>,
    td: &TrustDomain,
) -> Result<SpiffeId, JwtError> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::Claim("sub"))?;
    let spiffe_id = SpiffeId::new(sub).map_err(|_| JwtError::Subject(sub.to_owned()))?;
    if !spiffe_id.is_member_of(td) {
        return Err(JwtError::ForeignSubject(sub.to_owned(), td.to_string()));
    }
    Ok(spiffe_id)
}

/// `exp` as whole seconds, required, and not passed at `now_secs`.
pub(super) fn expiry(claims: &Map<String, Value>, now_secs: u64) -> Result<u64, JwtError> {
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(JwtError::Claim("exp"))?;
    if now_secs >= exp {
        return Err(JwtError::Expired);
    }
    Ok(exp)
}

/// Validates a JWT-SVID for `audience` against the JWT authorities of
/// `td`, at `now`: SPIFFE algorithms only, `kid` required and known,
/// signature, `exp` (and `nbf` when present), `aud` contains the audience,
/// `sub` a SPIFFE ID of `td`.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    td: &TrustDomain,
    authorities: &[JwtAuthority],
    now: SystemTime,
) -> Result<ValidatedJwt, JwtError> {
    if audience.len() > MAX_AUDIENCE_LEN {
        return Err(JwtError::TooLong("audience"));
    }
    let claims = verify_jws(token, authorities)?;
    let now_secs = unix_secs(now);
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(JwtError::Claim("exp"))?;
    if (now_secs as f64) >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(JwtError::Claim("nbf"))?;
        if (now_secs as f64) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) if !list.is_empty() => {
            list.iter().any(|a| a.as_str() == Some(audience))
        }
        _ => return Err(JwtError::Claim("aud")),
    };
    if !aud_ok {
        return Err(JwtError::Audience(audience.to_owned()));
    }
    let spiffe_id = subject_in(&claims, td)?;
    Ok(ValidatedJwt { spiffe_id, claims })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::clock::from_unix_secs;
    use crate::jwt::JwtSigner;

    const T0: u64 = 1_800_000_000;

    fn setup() -> (TrustDomain, JwtSigner, Vec<JwtAuthority>) {
        let td = TrustDomain::new("td").unwrap();
        let signer = JwtSigner::generate(from_unix_secs(T0), from_unix_secs(T0 + 3600)).unwrap();
        let auths = vec![signer.authority()];
        (td, signer, auths)
    }

    fn now() -> SystemTime {
        from_unix_secs(T0 + 10)
    }

    fn mint(s: &JwtSigner) -> String {
        s.sign_svid(
            "https://td",
            &SpiffeId::new("spiffe://td/w").unwrap(),
            &["aud1".into(), "aud2".into()],
            Duration::from_secs(60),
            now(),
            Map::new(),
        )
        .unwrap()
        .token
    }

    fn forge(header: Value, claims: Value, s: &JwtSigner) -> String {
        s.sign_with_header(&header, &claims).unwrap()
    }

    #[test]
    fn minted_token_validates_with_all_claims() {
        let (td, s, auths) = setup();
        let t = mint(&s);
        let v = validate_jwt_svid(&t, "aud2", &td, &auths, now()).unwrap();
        assert_eq!(v.spiffe_id.as_str(), "spiffe://td/w");
        assert_eq!(v.claims["exp"], json!(T0 + 70));
        assert_eq!(v.claims["iat"], json!(T0 + 10));
        assert!(v.claims["jti"].as_str().unwrap().len() == 32);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            json!({"alg": "ES256", "kid": s.key_id(), "typ": "JWT"})
        );
    }

    #[test]
    fn refuses_every_bad_token() {
        let (td, s, auths) = setup();
        let good = mint(&s);
        let claims = json!({"sub": "spiffe://td/w", "aud": ["a"], "exp": T0 + 100});
        let check = |t: &str, aud: &str| validate_jwt_svid(t, aud, &td, &auths, now());

        assert!(matches!(check(&good, "other"), Err(JwtError::Audience(_))));
        assert!(matches!(
            validate_jwt_svid(&good, "aud1", &td, &auths, from_unix_secs(T0 + 70)),
            Err(JwtError::Expired)
        ));
        assert!(matches!(check("a.b", "a"), Err(JwtError::Malformed(_))));
        assert!(matches!(check("a.b.c.d", "a"), Err(JwtError::Malformed(_))));
        assert!(matches!(
            check("!!.??.**", "a"),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            check(&"a".repeat(MAX_TOKEN_LEN + 1), "a"),
            Err(JwtError::TooLong(_))
        ));
        assert!(matches!(
            check(&good, &"a".repeat(MAX_AUDIENCE_LEN + 1)),
            Err(JwtError::TooLong(_))
        ));

        // alg none, HS256 and no alg.
        let none = forge(
            json!({"alg": "none", "kid": s.key_id()}),
            claims.clone(),
            &s,
        );
        assert!(matches!(check(&none, "a"), Err(JwtError::Algorithm(a)) if a == "none"));
        let hs = forge(
            json!({"alg": "HS256", "kid": s.key_id()}),
            claims.clone(),
            &s,
        );
        assert!(matches!(check(&hs, "a"), Err(JwtError::Algorithm(_))));
        let noalg = forge(json!({"kid": s.key_id()}), claims.clone(), &s);
        assert!(matches!(check(&noalg, "a"), Err(JwtError::Algorithm(_))));
        // kid missing or unknown.
        let nokid = forge(json!({"alg": "ES256"}), claims.clone(), &s);
        assert!(matches!(check(&nokid, "a"), Err(JwtError::MissingKid)));
        let badkid = forge(json!({"alg": "ES256", "kid": "nope"}), claims.clone(), &s);
        assert!(matches!(check(&badkid, "a"), Err(JwtError::UnknownKid(_))));
        // Wrong algorithm for the key.
        let es384 = forge(
            json!({"alg": "ES384", "kid": s.key_id()}),
            claims.clone(),
            &s,
        );
        assert!(matches!(check(&es384, "a"), Err(JwtError::KeyMismatch(..))));
        let rs = forge(
            json!({"alg": "RS256", "kid": s.key_id()}),
            claims.clone(),
            &s,
        );
        assert!(matches!(check(&rs, "a"), Err(JwtError::KeyMismatch(..))));
        // Tampered payload and signature.
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        let tampered_claims = json!({"sub": "spiffe://td/admin", "aud": ["aud1"], "exp": T0 + 70});
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered_claims).unwrap());
        assert!(matches!(
            check(&parts.join("."), "aud1"),
            Err(JwtError::BadSignature)
        ));
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        sig[5] ^= 1;
        parts[2] = URL_SAFE_NO_PAD.encode(sig);
        assert!(matches!(
            check(&parts.join("."), "aud1"),
            Err(JwtError::BadSignature)
        ));
        // Subject rules.
        let h = json!({"alg": "ES256", "kid": s.key_id(), "typ": "JWT"});
        let bad_sub = forge(
            h.clone(),
            json!({"sub": "not-spiffe", "aud": "a", "exp": T0 + 100}),
            &s,
        );
        assert!(matches!(check(&bad_sub, "a"), Err(JwtError::Subject(_))));
        let foreign = forge(
            h.clone(),
            json!({"sub": "spiffe://other/w", "aud": "a", "exp": T0 + 100}),
            &s,
        );
        assert!(matches!(
            check(&foreign, "a"),
            Err(JwtError::ForeignSubject(..))
        ));
        let no_exp = forge(h.clone(), json!({"sub": "spiffe://td/w", "aud": "a"}), &s);
        assert!(matches!(check(&no_exp, "a"), Err(JwtError::Claim("exp"))));
        let future = forge(
            h.clone(),
            json!({"sub": "spiffe://td/w", "aud": "a", "exp": T0 + 100, "nbf": T0 + 50}),
            &s,
        );
        assert!(matches!(check(&future, "a"), Err(JwtError::NotYetValid)));
        // A single-string audience is accepted.
        let single = forge(
            h,
            json!({"sub": "spiffe://td/w", "aud": "a", "exp": T0 + 100}),
            &s,
        );
        assert!(check(&single, "a").is_ok());
    }

    #[test]
    fn lifetime_is_capped_at_key_expiry_and_signer_round_trips() {
        let (_, s, _) = setup();
        let m = s
            .sign_svid(
                "https://td",
                &SpiffeId::new("spiffe://td/w").unwrap(),
                &["a".into()],
                Duration::from_secs(86_400),
                now(),
                Map::new(),
            )
            .unwrap();
        assert_eq!(m.expires_at, from_unix_secs(T0 + 3600));
        let again =
            JwtSigner::from_parts(s.key_id(), s.pkcs8(), s.not_before(), s.not_after()).unwrap();
        assert_eq!(again.spki_der(), s.spki_der());
        assert!(
            s.sign_svid(
                "https://td",
                &SpiffeId::new("spiffe://td/w").unwrap(),
                &[],
                Duration::from_secs(1),
                now(),
                Map::new()
            )
            .is_err()
        );
    }

    #[test]
    fn bundle_json_follows_the_spiffe_bundle_format() {
        let (td, s, auths) = setup();
        let ca = crate::x509::X509Authority::generate_root(&td, now(), Duration::from_secs(3600))
            .unwrap();
        let doc: Value = serde_json::from_str(
            &crate::jwt::spiffe_bundle_json(&[ca.cert_der().to_vec()], &auths, 7, 60).unwrap(),
        )
        .unwrap();
        assert_eq!(doc["spiffe_sequence"], 7);
        assert_eq!(doc["spiffe_refresh_hint"], 60);
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let x509 = keys.iter().find(|k| k["use"] == "x509-svid").unwrap();
        assert!(x509.get("kid").is_none());
        assert_eq!(x509["x5c"].as_array().unwrap().len(), 1);
        assert_eq!(x509["kty"], "EC");
        let jwt = keys.iter().find(|k| k["use"] == "jwt-svid").unwrap();
        assert_eq!(jwt["kid"], s.key_id());
        assert_eq!(jwt["crv"], "P-256");
        let plain: Value =
            serde_json::from_slice(&crate::jwt::jwks_for_workloads(&auths).unwrap()).unwrap();
        assert_eq!(plain["keys"].as_array().unwrap().len(), 1);
        assert!(plain.get("spiffe_sequence").is_none());
    }
}

/// Generated garbage never panics the validator and is always refused.
#[cfg(test)]
mod generated {
    use super::*;

    #[test]
    fn garbage_tokens_are_refused_without_panicking() {
        let td = TrustDomain::new("td").unwrap();
        let now = crate::clock::from_unix_secs(1_800_000_000);
        let signer =
            crate::jwt::JwtSigner::generate(now, now + std::time::Duration::from_secs(60)).unwrap();
        let auths = vec![signer.authority()];
        let good = signer
            .sign_svid(
                "https://td",
                &SpiffeId::new("spiffe://td/w").unwrap(),
                &["a".into()],
                std::time::Duration::from_secs(30),
                now,
                Map::new(),
            )
            .unwrap()
            .token;
        let bytes = good.as_bytes();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut t = bytes.to_vec();
            // Flip, drop or duplicate a byte somewhere.
            let pos = (state % t.len() as u64) as usize;
            match i % 3 {
                0 => t[pos] = (state >> 8) as u8,
                1 => {
                    t.remove(pos);
                }
                _ => t.insert(pos, t[pos]),
            }
            let s = String::from_utf8_lossy(&t);
            if s == good {
                continue;
            }
            assert!(validate_jwt_svid(&s, "a", &td, &auths, now).is_err(), "{s}");
        }
    }
}
