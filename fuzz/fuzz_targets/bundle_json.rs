//! SPIFFE bundle JSON from peers: never panics; whatever parses is written
//! back by Lanyard's own encoder and parses to the same bundle.
#![no_main]
use lanyard_core::jwt::{parse_spiffe_bundle, spiffe_bundle_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = parse_spiffe_bundle(data) else { return };
    let Ok(json) = spiffe_bundle_json(
        &b.x509_authorities,
        &b.jwt_authorities,
        b.sequence.unwrap_or(0),
        b.refresh_hint.unwrap_or(0),
    ) else {
        return;
    };
    let again = parse_spiffe_bundle(json.as_bytes()).expect("our own bundle parses");
    assert_eq!(again.x509_authorities, b.x509_authorities);
    assert_eq!(again.jwt_authorities, b.jwt_authorities);
});
