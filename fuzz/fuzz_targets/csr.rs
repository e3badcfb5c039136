//! CSRs from agents: parsing and signing never panic; a signed SVID always
//! validates against the CA and carries exactly the requested ID.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use lanyard_core::x509::{PeerUsage, SvidParams, X509Authority, validate_x509_svid};
use lanyard_core::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn ca() -> &'static X509Authority {
    static CA: OnceLock<X509Authority> = OnceLock::new();
    CA.get_or_init(|| {
        let td = TrustDomain::new("td").expect("td");
        X509Authority::generate_root(&td, now(), Duration::from_secs(86_400)).expect("CA")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = lanyard_core::x509::parse_csr_public_key(data);
    let id = SpiffeId::new("spiffe://td/w").expect("id");
    let params = SvidParams {
        spiffe_id: id.clone(),
        dns_names: vec![],
        ttl: Duration::from_secs(60),
        extensions: vec![],
    };
    if let Ok(svid) = ca().sign_x509_svid(data, &params, now()) {
        let td = TrustDomain::new("td").expect("td");
        let got = validate_x509_svid(
            &[svid.cert_der],
            &td,
            &[ca().cert_der().to_vec()],
            PeerUsage::Client,
            now(),
        )
        .expect("a signed SVID validates");
        assert_eq!(got, id);
    }
});
