//! WIT-SVID and proof validation: never panics. The input is signed with
//! the right keys (header and claims JSON from the fuzzer) so that the
//! checks after the signature are reached; an accepted WIT is for the trust
//! domain with no audience, an accepted proof is for the target, bound to
//! the WIT and short-lived, and is never accepted twice.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use lanyard_core::jwt::JwtSigner;
use lanyard_core::jwt::wit::{
    ReplayCache, ValidatedWit, WorkloadKey, WptRequest, sign_wit, token_hash, validate_wit_svid,
    validate_wpt,
};
use lanyard_core::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const TARGET: &str = "https://tool.example/call";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

struct Keys {
    signer: JwtSigner,
    key: WorkloadKey,
    wit: String,
    validated: ValidatedWit,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        let signer =
            JwtSigner::generate(now(), now() + Duration::from_secs(86_400)).expect("signer");
        let key = WorkloadKey::generate().expect("key");
        let sub = SpiffeId::new("spiffe://td/agent").expect("id");
        let wit = sign_wit(
            &signer,
            &sub,
            &key.public_jwk(),
            Duration::from_secs(600),
            now(),
            Default::default(),
        )
        .expect("wit")
        .token;
        let td = TrustDomain::new("td").expect("td");
        let validated = validate_wit_svid(&wit, &td, &[signer.authority()], now()).expect("valid");
        Keys {
            signer,
            key,
            wit,
            validated,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let k = keys();
    let td = TrustDomain::new("td").expect("td");
    let (h, c) = s.split_once('\n').unwrap_or((s, "{}"));
    // "$KID" and "$WTH" stand for the issuer's key ID and the WIT's hash,
    // which no fuzzer finds by chance.
    let h = h.replace("$KID", k.signer.key_id());
    let c = c.replace("$WTH", &token_hash(&k.wit));
    let (Ok(header), Ok(claims)) = (
        serde_json::from_str::<Value>(&h),
        serde_json::from_str::<Value>(&c),
    ) else {
        // Not JSON: the raw text as a token.
        let _ = validate_wit_svid(s, &td, &[k.signer.authority()], now());
        let cache = ReplayCache::new(8);
        let _ = validate_wpt(
            s,
            &k.validated,
            &k.wit,
            &WptRequest {
                target_uri: TARGET,
                ..Default::default()
            },
            now(),
            Duration::from_secs(60),
            &cache,
        );
        return;
    };
    if mode % 2 == 0 {
        let Ok(token) = k.signer.sign_with_header(&header, &claims) else {
            return;
        };
        if let Ok(v) = validate_wit_svid(&token, &td, &[k.signer.authority()], now()) {
            assert!(v.spiffe_id.is_member_of(&td));
            assert!(!v.claims.contains_key("aud"));
            assert!(lanyard_core::jwt::wit::ALGORITHMS.contains(&v.cnf_alg.as_str()));
        }
    } else {
        let Ok(token) = k.key.sign_with_header(&header, &claims) else {
            return;
        };
        let cache = ReplayCache::new(8);
        let req = WptRequest {
            target_uri: TARGET,
            ..Default::default()
        };
        if let Ok(v) = validate_wpt(
            &token,
            &k.validated,
            &k.wit,
            &req,
            now(),
            Duration::from_secs(60),
            &cache,
        ) {
            assert_eq!(
                v.claims.get("wth").and_then(Value::as_str),
                Some(token_hash(&k.wit).as_str())
            );
            let n = 1_800_000_000u64;
            assert!(v.expires_at > n && v.expires_at <= n + 60);
            assert!(
                validate_wpt(
                    &token,
                    &k.validated,
                    &k.wit,
                    &req,
                    now(),
                    Duration::from_secs(60),
                    &cache
                )
                .is_err()
            );
        }
    }
});
