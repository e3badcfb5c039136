//! The proto → domain boundary: any bytes decoded as an entry message and
//! converted never panic; a converted entry converts back to the same
//! message content and again to the same entry.
#![no_main]
use lanyard_core::RegistrationEntry;
use lanyard_proto::types;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = types::Entry::decode(data) else { return };
    if let Ok(entry) = RegistrationEntry::try_from(msg) {
        let back = types::Entry::from(&entry);
        let again = RegistrationEntry::try_from(back).expect("a converted entry converts back");
        assert_eq!(again, entry);
    }
    let _ = types::Bundle::decode(data).map(|b| {
        let _: Vec<lanyard_core::jwt::JwtAuthority> =
            b.jwt_authorities.into_iter().map(Into::into).collect();
    });
});
