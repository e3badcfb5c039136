//! X.509-SVID validation of untrusted chains (a peer's handshake, a chain
//! submitted for a decision): never panics, and anything accepted names an
//! ID of the trust domain.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::x509::{PeerUsage, X509Authority, validate_x509_svid};
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
    // The input is a chain: 2-byte big-endian lengths, then the bytes.
    let mut chain = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && chain.len() < 4 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        chain.push(rest[2..2 + n].to_vec());
        rest = &rest[2 + n..];
    }
    let td = TrustDomain::new("td").expect("td");
    let _ = lanyard_core::x509::CertInfo::parse(data);
    for usage in [PeerUsage::Client, PeerUsage::Server] {
        if let Ok(id) =
            validate_x509_svid(&chain, &td, &[ca().cert_der().to_vec()], usage, now())
        {
            assert!(id.is_member_of(&td));
        }
    }
});
