//! CRLs from the Workload API (what every peer reads): never panics, and a
//! CRL signed by a CA the check was not given never verifies.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use lanyard_core::TrustDomain;
use lanyard_core::x509::{X509Authority, parse_crl};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static Vec<u8> {
    static CA: OnceLock<Vec<u8>> = OnceLock::new();
    CA.get_or_init(|| {
        let td = TrustDomain::new("example.org").expect("trust domain");
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        X509Authority::generate_root(&td, now, Duration::from_secs(3600))
            .expect("CA")
            .cert_der()
            .to_vec()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_crl(data, std::slice::from_ref(ca()));
    // With no CA at all nothing can verify.
    assert!(parse_crl(data, &[]).is_err());
});
