//! JWT-SVID validation: never panics; an accepted token is for the trust
//! domain and the audience asked for.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::jwt::{JwtAuthority, JwtSigner, validate_jwt_svid};
use libfuzzer_sys::fuzz_target;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn authority() -> &'static JwtAuthority {
    static A: OnceLock<JwtAuthority> = OnceLock::new();
    A.get_or_init(|| {
        JwtSigner::generate(now(), now() + Duration::from_secs(86_400))
            .expect("signer")
            .authority()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (token, audience) = s.split_once('\n').unwrap_or((s, "aud"));
    let td = TrustDomain::new("td").expect("td");
    if let Ok(v) = validate_jwt_svid(token, audience, &td, &[authority().clone()], now()) {
        assert!(v.spiffe_id.is_member_of(&td));
    }
});
