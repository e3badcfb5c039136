//! Audit exports and agent-shipped events are untrusted text: the
//! verifier never panics on any input, and whatever parses as an event
//! seals into a chain that verifies (and stops verifying when one byte of
//! its record changes).
#![no_main]
use std::sync::OnceLock;

use lanyard_core::audit::{AuditKey, Checkpoint, Event, GENESIS, Verifier, seal};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static AuditKey {
    static KEY: OnceLock<AuditKey> = OnceLock::new();
    KEY.get_or_init(|| AuditKey::generate().expect("key").0)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut v = Verifier::new(vec![key().public()]);
    for line in text.lines() {
        if v.feed(line).is_err() {
            break;
        }
    }
    let _ = v.finish();

    let Ok(event) = serde_json::from_str::<Event>(text) else { return };
    let Ok(sealed) = seal("fuzz", 1, &GENESIS, &event) else { return };
    let cp = Checkpoint::sign(key(), "fuzz", 1, &sealed.hash, "2026-01-01T00:00:00.000Z".into(), false);
    let mut v = Verifier::new(vec![key().public()]);
    v.feed(&sealed.line).expect("a sealed record verifies");
    v.feed(&cp.to_line()).expect("its checkpoint verifies");
    v.finish().expect("the chain is complete");
});
