//! Selector parsing: never panics; round trip through Display.
#![no_main]
use lanyard_core::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = s.parse::<Selector>() {
        let again: Selector = sel.to_string().parse().expect("a printed selector parses");
        assert_eq!(again, sel);
        assert_eq!(Selector::new(sel.kind(), sel.value()).ok(), Some(sel));
    }
});
