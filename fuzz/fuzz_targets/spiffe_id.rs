//! SPIFFE ID parsing: never panics; whatever parses prints back to itself
//! and parses to the same value.
#![no_main]
use lanyard_core::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::new(s) {
        assert_eq!(id.to_string(), s);
        assert_eq!(SpiffeId::new(&id.to_string()).ok(), Some(id.clone()));
        assert!(id.is_member_of(&id.trust_domain()));
        assert_eq!(TrustDomain::new(id.trust_domain_name()).ok(), Some(id.trust_domain()));
    }
    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(TrustDomain::new(td.name()).ok(), Some(td));
    }
});
