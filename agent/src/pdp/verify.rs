//! The credential an enforcement point was shown: an X.509-SVID chain, a
//! JWT-SVID, or a WIT-SVID with its proof, validated against the agent's
//! bundle and revocation set, with the signature work cached per credential
//! until it expires or the bundle changes (revocation is checked on every
//! call: a set lookup; a WIT's proof is checked on every call, and taken
//! once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use lanyard_core::jwt::wit::{
    MAX_WPT_LIFETIME, ReplayCache, ValidatedWit, WptRequest, validate_wit_svid, validate_wpt,
};
use lanyard_core::jwt::{ValidatedJwt, validate_jwt_svid};
use lanyard_core::peer::{self, Peer, Requirements, TrustState};
use lanyard_core::revocation::{Revocation, RevocationSet};
use lanyard_core::task::TaskClaims;
use lanyard_core::x509::PeerUsage;

use crate::cache::Snapshot;

/// Most certificates in a chain an enforcement point may hand in.
pub const MAX_CHAIN: usize = 8;
/// Largest certificate accepted.
pub const MAX_CERT: usize = 16 * 1024;
/// Verified credentials kept.
const CACHE_MAX: usize = 16_384;
/// Live proofs remembered for replay (a proof lives at most five minutes).
const REPLAY_MAX: usize = 200_000;
/// Most other context tokens sent with a WIT.
const MAX_OTHER_TOKENS: usize = 16;
/// The claim a task WIT-SVID carries its task under.
pub use lanyard_core::jwt::wit::TASK_CLAIM as WIT_TASK_CLAIM;

/// A WIT-SVID and its proof of possession, as the request carried them.
#[derive(Debug, Clone, Default)]
pub struct WitCall {
    /// The `Workload-Identity-Token` header.
    pub wit: String,
    /// The proof (`Authorization: WPT ...`).
    pub wpt: String,
    /// The `Txn-Token` header, or empty.
    pub txn_token: String,
    /// Other context-token headers by lower-case name.
    pub other_tokens: Vec<(String, String)>,
}

/// A credential that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its holder and claims (for a JWT-SVID, `serial` is empty).
    pub peer: Peer,
    /// The JWT ID of a JWT-SVID.
    pub jwt_id: Option<String>,
    /// `rctx.node` and `rctx.exe_sha256` of a task JWT, when present.
    pub node: String,
    /// Executable digest from the JWT's `rctx`.
    pub exe_sha256: String,
    /// The validated WIT-SVID, for checking each proof against.
    pub wit: Option<Arc<ValidatedWit>>,
}

/// Why a credential was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Not a credential at all (garbage, too large, empty).
    #[error("{0}")]
    Malformed(String),
    /// It did not verify, or is revoked.
    #[error("credential refused: {0}")]
    Refused(String),
}

/// Verified credentials by digest, for one bundle sequence, and the
/// proofs already taken.
pub struct VerifyCache {
    inner: Mutex<(u64, HashMap<[u8; 32], Verified>)>,
    replay: ReplayCache,
}

impl Default for VerifyCache {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            replay: ReplayCache::new(REPLAY_MAX),
        }
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl VerifyCache {
    fn get(&self, key: &[u8; 32], sequence: u64, now: SystemTime) -> Option<Verified> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != sequence {
            return None;
        }
        g.1.get(key).filter(|v| v.peer.not_after > now).cloned()
    }

    fn put(&self, key: [u8; 32], sequence: u64, v: Verified) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != sequence || g.1.len() >= CACHE_MAX {
            g.0 = sequence;
            g.1.clear();
        }
        g.1.insert(key, v);
    }

    /// Validates an X.509-SVID chain (DER certificates, leaf first).
    pub fn x509(
        &self,
        snap: &Snapshot,
        chain: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<Verified, CredentialError> {
        if chain.is_empty() {
            return Err(CredentialError::Malformed(
                "x509_chain holds no certificate".into(),
            ));
        }
        if chain.len() > MAX_CHAIN || chain.iter().any(|c| c.len() > MAX_CERT || c.is_empty()) {
            return Err(CredentialError::Malformed(format!(
                "x509_chain: at most {MAX_CHAIN} certificates of 1 to {MAX_CERT} bytes"
            )));
        }
        let parts: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        let key = digest(&parts);
        let verified =
            match self.get(&key, snap.bundle_sequence, now) {
                Some(v) => v,
                None => {
                    // Garbage is the caller's mistake (InvalidArgument), not a
                    // refused credential.
                    if let Some((i, e)) = chain.iter().enumerate().find_map(|(i, c)| {
                        lanyard_core::x509::CertInfo::parse(c).err().map(|e| (i, e))
                    }) {
                        return Err(CredentialError::Malformed(format!("x509_chain[{i}]: {e}")));
                    }
                    let state = TrustState::new(snap.trust_domain.clone(), (*snap.bundle).clone());
                    let peer = state
                        .validate(chain, PeerUsage::Client, &Requirements::default(), now)
                        .map_err(|e| CredentialError::Refused(e.to_string()))?;
                    let v = Verified {
                        peer,
                        jwt_id: None,
                        node: String::new(),
                        exe_sha256: String::new(),
                        wit: None,
                    };
                    self.put(key, snap.bundle_sequence, v.clone());
                    v
                }
            };
        check_revoked(&snap.revocations, &verified)?;
        Ok(verified)
    }

    /// Validates a JWT-SVID for `audience`.
    pub fn jwt(
        &self,
        snap: &Snapshot,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<Verified, CredentialError> {
        if token.len() > lanyard_core::jwt::MAX_TOKEN_LEN {
            return Err(CredentialError::Malformed("jwt_svid is too long".into()));
        }
        let key = digest(&[token.as_bytes(), audience.as_bytes()]);
        let verified = match self.get(&key, snap.bundle_sequence, now) {
            Some(v) => v,
            None => {
                let v = validate_jwt_svid(
                    token,
                    audience,
                    &snap.trust_domain,
                    &snap.jwt_authorities,
                    now,
                )
                .map_err(|e| CredentialError::Refused(e.to_string()))?;
                let verified = from_jwt(&v)?;
                self.put(key, snap.bundle_sequence, verified.clone());
                verified
            }
        };
        check_revoked(&snap.revocations, &verified)?;
        Ok(verified)
    }

    /// Validates a WIT-SVID (cached like the other credentials), then its
    /// proof for the request to `target_uri` (every call; each proof is
    /// taken once).
    pub fn wit(
        &self,
        snap: &Snapshot,
        call: &WitCall,
        target_uri: &str,
        now: SystemTime,
    ) -> Result<Verified, CredentialError> {
        let max = lanyard_core::jwt::MAX_TOKEN_LEN;
        if call.wit.is_empty() || call.wpt.is_empty() {
            return Err(CredentialError::Malformed(
                "wit: both wit_svid and wpt (its proof) are required".into(),
            ));
        }
        if call.wit.len() > max || call.wpt.len() > max || call.txn_token.len() > max {
            return Err(CredentialError::Malformed(format!(
                "wit: tokens of at most {max} bytes"
            )));
        }
        if call.other_tokens.len() > MAX_OTHER_TOKENS
            || call
                .other_tokens
                .iter()
                .any(|(n, v)| n.len() > 256 || v.len() > max)
        {
            return Err(CredentialError::Malformed(format!(
                "wit.other_tokens: at most {MAX_OTHER_TOKENS} headers"
            )));
        }
        if target_uri.is_empty() || target_uri.len() > 8192 {
            return Err(CredentialError::Malformed(
                "target_uri (the request's URI, which the proof names) is required with a WIT"
                    .into(),
            ));
        }
        let key = digest(&[b"wit", call.wit.as_bytes()]);
        let verified = match self.get(&key, snap.bundle_sequence, now) {
            Some(v) => v,
            None => {
                let v =
                    validate_wit_svid(&call.wit, &snap.trust_domain, &snap.wit_authorities, now)
                        .map_err(|e| CredentialError::Refused(format!("WIT-SVID: {e}")))?;
                let verified = from_wit(v)?;
                self.put(key, snap.bundle_sequence, verified.clone());
                verified
            }
        };
        check_revoked(&snap.revocations, &verified)?;
        let wit = verified
            .wit
            .as_ref()
            .ok_or_else(|| CredentialError::Refused("not a WIT-SVID".into()))?;
        let others: Vec<(&str, &str)> = call
            .other_tokens
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request = WptRequest {
            target_uri,
            txn_token: (!call.txn_token.is_empty()).then_some(call.txn_token.as_str()),
            other_tokens: &others,
        };
        validate_wpt(
            &call.wpt,
            wit,
            &call.wit,
            &request,
            now,
            MAX_WPT_LIFETIME,
            &self.replay,
        )
        .map_err(|e| CredentialError::Refused(format!("proof: {e}")))?;
        Ok(verified)
    }
}

/// A validated WIT-SVID as a credential: its task claims (under
/// [`WIT_TASK_CLAIM`]) when it is a task WIT.
fn from_wit(v: ValidatedWit) -> Result<Verified, CredentialError> {
    let claims = match v.claims.get(WIT_TASK_CLAIM) {
        None => None,
        Some(serde_json::Value::Object(task)) => TaskClaims::from_jwt_claims(task)
            .map_err(|e| CredentialError::Refused(format!("task claims: {e}")))?,
        Some(_) => {
            return Err(CredentialError::Refused(format!(
                "task claims: {WIT_TASK_CLAIM} is not an object"
            )));
        }
    };
    let num = |k: &str| {
        v.claims
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Verified {
        peer: Peer {
            spiffe_id: v.spiffe_id.clone(),
            serial: String::new(),
            issued_at: lanyard_core::clock::from_unix_secs(num("iat")),
            not_after: lanyard_core::clock::from_unix_secs(v.expires_at),
            issuer: None,
            claims,
        },
        jwt_id: v.jti.clone(),
        node: String::new(),
        exe_sha256: String::new(),
        wit: Some(Arc::new(v)),
    })
}

fn from_jwt(v: &ValidatedJwt) -> Result<Verified, CredentialError> {
    let claims = TaskClaims::from_jwt_claims(&v.claims)
        .map_err(|e| CredentialError::Refused(format!("task claims: {e}")))?;
    let num = |k: &str| {
        v.claims
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let rctx = |k: &str| {
        v.claims
            .get("rctx")
            .and_then(|r| r.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Verified {
        peer: Peer {
            spiffe_id: v.spiffe_id.clone(),
            serial: String::new(),
            issued_at: lanyard_core::clock::from_unix_secs(num("iat")),
            not_after: lanyard_core::clock::from_unix_secs(num("exp")),
            issuer: None,
            claims,
        },
        jwt_id: v
            .claims
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        node: rctx("node"),
        exe_sha256: rctx("exe_sha256"),
        wit: None,
    })
}

fn check_revoked(set: &RevocationSet, v: &Verified) -> Result<(), CredentialError> {
    match revoked(set, &v.peer, v.jwt_id.as_deref()) {
        Some(r) => Err(CredentialError::Refused(peer::revoked(r).to_string())),
        None => Ok(()),
    }
}

/// The peer validator's revocation lookup, plus the parent task: a
/// delegated task dies with its parent.
fn revoked<'a>(
    set: &'a RevocationSet,
    peer: &Peer,
    jwt_id: Option<&str>,
) -> Option<&'a Revocation> {
    peer::revocation_of(set, peer, jwt_id).or_else(|| {
        let parent = peer.claims.as_ref()?.parent_task_id.as_ref()?.to_string();
        set.get(lanyard_core::revocation::RevokedKind::Task, &parent)
    })
}

/// The revocation naming a validated JWT-SVID, if any (for ValidateJWTSVID).
pub fn jwt_revocation<'a>(set: &'a RevocationSet, v: &ValidatedJwt) -> Option<&'a Revocation> {
    let verified = from_jwt(v).ok()?;
    revoked(set, &verified.peer, verified.jwt_id.as_deref())
}
