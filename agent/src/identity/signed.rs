//! What the server signs for this agent, checked before it is served, and
//! the jitter of rotation times.

use std::collections::HashMap;
use std::time::SystemTime;

use lanyard_core::rotation::renew_at;
use lanyard_core::x509::{CertInfo, SvidKey};
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId};

use crate::held::CachedSvid;

/// A uniformly random sample in [-1, 1] for rotation jitter.
pub fn jitter_sample() -> f64 {
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.0;
    }
    f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// One signing call's keys, by entry ID.
pub(crate) struct Batch {
    pub(super) keys: HashMap<String, (SvidKey, RegistrationEntry)>,
    pub(super) at: SystemTime,
}

/// Checks an SVID the server signed for `key` (exactly one URI SAN, the
/// expected SPIFFE ID; the requested key) and makes it servable: renewed at
/// half of the lifetime left on receipt (the backdated part of the validity
/// window does not count).
pub(super) fn accept_signed(
    entry_id: &EntryId,
    spiffe_id: &SpiffeId,
    revision: u64,
    hint: String,
    key: &SvidKey,
    chain: Vec<Vec<u8>>,
    now: SystemTime,
) -> Result<CachedSvid, String> {
    let leaf = chain.first().ok_or("empty certificate chain")?;
    let info = CertInfo::parse(leaf).map_err(|e| e.to_string())?;
    if info.uri_sans.len() != 1 || info.uri_sans[0] != spiffe_id.as_str() {
        return Err(format!(
            "SVID has URI SANs {:?}, wanted {spiffe_id}",
            info.uri_sans
        ));
    }
    if info.spki_der != key.spki_der() {
        return Err("SVID does not carry the requested key".into());
    }
    Ok(CachedSvid {
        entry_id: entry_id.clone(),
        spiffe_id: spiffe_id.clone(),
        key_pkcs8: key.pkcs8_der(),
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
        renew_at: renew_at(
            now.clamp(info.not_before, info.not_after),
            info.not_after,
            jitter_sample(),
        ),
        entry_revision: revision,
        issuer_id: info.authority_key_id,
        hint,
        chain,
    })
}
