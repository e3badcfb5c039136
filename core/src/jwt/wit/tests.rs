//! WIT-SVIDs and proofs, minted and refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;
use crate::clock::from_unix_secs;
use crate::jwt::{JwtAuthority, JwtSigner};
use crate::spiffe_id::{SpiffeId, TrustDomain};

const T0: u64 = 1_800_000_000;
const TARGET: &str = "https://tools.example.org/crm/read";

struct Fixture {
    td: TrustDomain,
    signer: JwtSigner,
    authorities: Vec<JwtAuthority>,
    key: WorkloadKey,
    wit: String,
}

fn fixture() -> Fixture {
    let td = TrustDomain::new("example.org").unwrap();
    let signer = JwtSigner::generate(from_unix_secs(T0 - 10), from_unix_secs(T0 + 3600)).unwrap();
    let authorities = vec![signer.authority()];
    let key = WorkloadKey::generate().unwrap();
    let sub = SpiffeId::new("spiffe://example.org/agent/a").unwrap();
    let wit = sign_wit(
        &signer,
        &sub,
        &key.public_jwk(),
        Duration::from_secs(60),
        from_unix_secs(T0),
        Map::new(),
    )
    .unwrap()
    .token;
    Fixture {
        td,
        signer,
        authorities,
        key,
        wit,
    }
}

fn at(secs: u64) -> std::time::SystemTime {
    from_unix_secs(T0 + secs)
}

fn request() -> WptRequest<'static> {
    WptRequest {
        target_uri: TARGET,
        ..Default::default()
    }
}

fn decode(part: &str) -> Value {
    use base64::Engine;
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn a_minted_wit_validates_and_carries_the_key_it_is_bound_to() {
    let f = fixture();
    let parts: Vec<&str> = f.wit.split('.').collect();
    let header = decode(parts[0]);
    assert_eq!(
        header,
        json!({"alg": "ES256", "kid": f.signer.key_id(), "typ": "wit+jwt"})
    );
    let v = validate_wit_svid(&f.wit, &f.td, &f.authorities, at(1)).unwrap();
    assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/agent/a");
    assert_eq!(v.cnf_alg, "ES256");
    assert_eq!(v.expires_at, T0 + 60);
    assert!(v.jti.is_some());
    assert!(!v.claims.contains_key("aud"));
    // The private half round-trips through its JWK.
    let again = WorkloadKey::from_private_jwk(&f.key.private_jwk().unwrap()).unwrap();
    assert_eq!(again.public_jwk(), f.key.public_jwk());
}

fn signed(f: &Fixture, header: Value, claims: Value) -> String {
    f.signer.sign_with_header(&header, &claims).unwrap()
}

fn good_claims(f: &Fixture) -> Value {
    json!({"sub": "spiffe://example.org/agent/a", "exp": T0 + 60, "cnf": {"jwk": f.key.public_jwk()}})
}

#[test]
fn wits_outside_the_profile_are_refused() {
    let f = fixture();
    let kid = f.signer.key_id().to_owned();
    let h = json!({"alg": "ES256", "kid": kid, "typ": "wit+jwt"});
    let check = |token: String, want: &str| {
        let e = validate_wit_svid(&token, &f.td, &f.authorities, at(1)).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    };
    let ok = validate_wit_svid(
        &signed(&f, h.clone(), good_claims(&f)),
        &f.td,
        &f.authorities,
        at(1),
    );
    assert!(ok.is_ok(), "{ok:?}");
    // A JWT-SVID is not a WIT-SVID, nor is a token of another typ.
    check(
        signed(
            &f,
            json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            good_claims(&f),
        ),
        "typ must be wit+jwt",
    );
    check(
        signed(&f, json!({"alg": "ES256", "kid": kid}), good_claims(&f)),
        "typ must be wit+jwt",
    );
    check(
        signed(
            &f,
            json!({"alg": "ES256", "typ": "wit+jwt"}),
            good_claims(&f),
        ),
        "key ID",
    );
    check(
        signed(
            &f,
            json!({"alg": "ES256", "kid": kid, "typ": "wit+jwt", "jku": "https://x"}),
            good_claims(&f),
        ),
        "\"jku\"",
    );
    let mut c = good_claims(&f);
    c["aud"] = json!("crm");
    check(signed(&f, h.clone(), c), "no aud");
    let mut c = good_claims(&f);
    c.as_object_mut().unwrap().remove("cnf");
    check(signed(&f, h.clone(), c), "cnf.jwk is missing");
    let mut c = good_claims(&f);
    c["cnf"]["jwk"]["d"] = json!("AAAA");
    check(signed(&f, h.clone(), c), "private member \"d\"");
    let mut c = good_claims(&f);
    c["cnf"]["jwk"]["alg"] = json!("HS256");
    check(signed(&f, h.clone(), c), "\"HS256\" is not allowed");
    let mut c = good_claims(&f);
    c["cnf"]["jwk"]["alg"] = json!("RS256");
    check(signed(&f, h.clone(), c), "cannot verify RS256");
    let mut c = good_claims(&f);
    c.as_object_mut().unwrap().remove("exp");
    check(signed(&f, h.clone(), c), "\"exp\"");
    let mut c = good_claims(&f);
    c["sub"] = json!("spiffe://other.org/agent/a");
    check(signed(&f, h.clone(), c), "not in trust domain");
    check(f.wit.clone().replace('.', ".x"), "");
    let e = validate_wit_svid(&f.wit, &f.td, &f.authorities, at(60)).unwrap_err();
    assert_eq!(e, WitError::Jwt(crate::jwt::JwtError::Expired));
    // Another issuer's key.
    let other = JwtSigner::generate(at(0), at(3600)).unwrap();
    let e = validate_wit_svid(&f.wit, &f.td, &[other.authority()], at(1)).unwrap_err();
    assert!(
        e.to_string().contains("not found in the trust bundle"),
        "{e}"
    );
}

#[test]
fn a_proof_binds_the_wit_the_target_and_the_other_tokens_once() {
    let f = fixture();
    let wit = validate_wit_svid(&f.wit, &f.td, &f.authorities, at(1)).unwrap();
    let cache = ReplayCache::new(100);
    let max = Duration::from_secs(60);
    let wpt = sign_wpt(&f.key, &f.wit, &request(), Duration::from_secs(30), at(1)).unwrap();
    // The target URI's query does not count.
    let with_query = WptRequest {
        target_uri: "https://tools.example.org/crm/read?id=4",
        ..Default::default()
    };
    let v = validate_wpt(&wpt, &wit, &f.wit, &with_query, at(2), max, &cache).unwrap();
    assert_eq!(v.expires_at, T0 + 31);
    assert!(v.bound_tokens.is_empty());
    // Once only.
    let e = validate_wpt(&wpt, &wit, &f.wit, &request(), at(3), max, &cache).unwrap_err();
    assert!(matches!(e, WitError::Replayed(_)), "{e}");

    // Another request target.
    let wpt = sign_wpt(&f.key, &f.wit, &request(), Duration::from_secs(30), at(1)).unwrap();
    let other = WptRequest {
        target_uri: "https://tools.example.org/crm/delete",
        ..Default::default()
    };
    let e = validate_wpt(&wpt, &wit, &f.wit, &other, at(2), max, &cache).unwrap_err();
    assert!(matches!(e, WitError::Target(_)), "{e}");
    // Expired, and too long-lived.
    let e = validate_wpt(&wpt, &wit, &f.wit, &request(), at(31), max, &cache).unwrap_err();
    assert_eq!(e, WitError::Jwt(crate::jwt::JwtError::Expired));
    let long = sign_wpt(&f.key, &f.wit, &request(), Duration::from_secs(600), at(1)).unwrap();
    let e = validate_wpt(&long, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert_eq!(e, WitError::Lifetime(599, 60));
}

#[test]
fn a_proof_by_another_key_or_for_another_wit_is_refused() {
    let f = fixture();
    let wit = validate_wit_svid(&f.wit, &f.td, &f.authorities, at(1)).unwrap();
    let cache = ReplayCache::new(100);
    let max = Duration::from_secs(60);
    // A thief holding the WIT but not its key signs with their own.
    let thief = WorkloadKey::generate().unwrap();
    let forged = sign_wpt(&thief, &f.wit, &request(), Duration::from_secs(30), at(1)).unwrap();
    let e = validate_wpt(&forged, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert_eq!(e, WitError::Jwt(crate::jwt::JwtError::BadSignature));
    // The right key, but the proof names another WIT.
    let other_wit = sign_wit(
        &f.signer,
        &SpiffeId::new("spiffe://example.org/agent/a").unwrap(),
        &f.key.public_jwk(),
        Duration::from_secs(60),
        at(0),
        Map::new(),
    )
    .unwrap()
    .token;
    let wpt = sign_wpt(
        &f.key,
        &other_wit,
        &request(),
        Duration::from_secs(30),
        at(1),
    )
    .unwrap();
    let e = validate_wpt(&wpt, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("wth"), "{e}");
    // Another algorithm than the key's.
    let claims = json!({"aud": TARGET, "exp": T0 + 30, "jti": "x", "wth": token_hash(&f.wit)});
    let rs = f
        .key
        .sign_with_header(&json!({"alg": "ES384", "typ": "wpt+jwt"}), &claims)
        .unwrap();
    let e = validate_wpt(&rs, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert!(matches!(e, WitError::ProofAlgorithm { .. }), "{e}");
    // Not typed as a proof (a WIT itself is not a proof).
    let untyped = f
        .key
        .sign_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims)
        .unwrap();
    let e = validate_wpt(&untyped, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("typ must be wpt+jwt"), "{e}");
    let no_jti = f
        .key
        .sign_with_header(
            &json!({"alg": "ES256", "typ": "wpt+jwt"}),
            &json!({"aud": TARGET, "exp": T0 + 30, "wth": token_hash(&f.wit)}),
        )
        .unwrap();
    let e = validate_wpt(&no_jti, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("\"jti\""), "{e}");
}

#[test]
fn txn_and_other_tokens_must_be_bound_exactly() {
    let f = fixture();
    let wit = validate_wit_svid(&f.wit, &f.td, &f.authorities, at(1)).unwrap();
    let cache = ReplayCache::new(100);
    let max = Duration::from_secs(60);
    let ttl = Duration::from_secs(30);
    let with_txn = WptRequest {
        target_uri: TARGET,
        txn_token: Some("txn.token.value"),
        other_tokens: &[],
    };
    let wpt = sign_wpt(&f.key, &f.wit, &with_txn, ttl, at(1)).unwrap();
    validate_wpt(&wpt, &wit, &f.wit, &with_txn, at(2), max, &cache).unwrap();
    // The same proof without its Txn-Token, or with another one.
    let wpt = sign_wpt(&f.key, &f.wit, &with_txn, ttl, at(1)).unwrap();
    let e = validate_wpt(&wpt, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("does not carry"), "{e}");
    let swapped = WptRequest {
        txn_token: Some("another.txn.token"),
        ..with_txn.clone()
    };
    let e = validate_wpt(&wpt, &wit, &f.wit, &swapped, at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("tth does not match"), "{e}");
    // A Txn-Token the proof does not bind.
    let bare = sign_wpt(&f.key, &f.wit, &request(), ttl, at(1)).unwrap();
    let e = validate_wpt(&bare, &wit, &f.wit, &with_txn, at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("tth is missing"), "{e}");

    let others = [("x-user-token", "user.jwt")];
    let with_other = WptRequest {
        target_uri: TARGET,
        txn_token: None,
        other_tokens: &others,
    };
    let wpt = sign_wpt(&f.key, &f.wit, &with_other, ttl, at(1)).unwrap();
    let v = validate_wpt(&wpt, &wit, &f.wit, &with_other, at(2), max, &cache).unwrap();
    assert_eq!(v.bound_tokens, vec!["x-user-token".to_owned()]);
    let wpt = sign_wpt(&f.key, &f.wit, &with_other, ttl, at(1)).unwrap();
    let e = validate_wpt(&wpt, &wit, &f.wit, &request(), at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("not in the request"), "{e}");
    let changed = [("x-user-token", "someone.else")];
    let wrong = WptRequest {
        other_tokens: &changed,
        ..with_other.clone()
    };
    let e = validate_wpt(&wpt, &wit, &f.wit, &wrong, at(2), max, &cache).unwrap_err();
    assert!(e.to_string().contains("does not match its header"), "{e}");
}

#[test]
fn only_a_public_p256_key_is_issued_and_nothing_else_it_carries() {
    let key = WorkloadKey::generate().unwrap();
    let mut sent = key.public_jwk();
    sent["kid"] = json!("chosen-by-the-sender");
    sent["x5u"] = json!("https://evil.example/cert");
    let cnf = issuable_cnf(&sent.to_string()).unwrap();
    assert_eq!(cnf, key.public_jwk());
    let refused = |v: Value, want: &str| {
        let e = issuable_cnf(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    };
    let private: Value = serde_json::from_str(&key.private_jwk().unwrap()).unwrap();
    refused(private, "private key");
    let mut p384 = key.public_jwk();
    p384["crv"] = json!("P-384");
    refused(p384, "P-256");
    let mut rs = key.public_jwk();
    rs["alg"] = json!("RS256");
    refused(rs, "ES256");
    let mut short = key.public_jwk();
    short["x"] = json!("AAAA");
    refused(short, "32 bytes");
    refused(json!("just text"), "JSON object");
}
