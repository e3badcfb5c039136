//! Signed checkpoints: "record `seq` of `chain` has hash `hash`", signed by
//! the chain's audit key. They sit between records in the log and in an
//! export (one line each, `{"checkpoint":{...}}`), anchor an export that
//! does not start at seq 1 (a time window, or a log whose older records
//! were pruned: `pruned: true`), and close every export, so each record
//! of an export is covered by a signature.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AuditKey, AuditPublicKey};
use crate::task::canonical_json;

/// What a checkpoint signature covers comes after this text, so the key
/// signs nothing else by accident.
const DOMAIN: &[u8] = b"lanyard audit checkpoint v1\n";

fn is_false(b: &bool) -> bool {
    !*b
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The chain (server ID).
    pub chain: String,
    /// The last record it covers (0: none yet).
    pub seq: u64,
    /// That record's hash, hex.
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub time: String,
    /// Records up to `seq` were pruned: the chain continues from here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pruned: bool,
    /// ID of the signing key.
    pub key: String,
    /// Ed25519 signature, base64url without padding.
    pub sig: String,
}

impl Checkpoint {
    /// Signs a checkpoint.
    pub fn sign(
        key: &AuditKey,
        chain: &str,
        seq: u64,
        hash: &[u8; 32],
        time: String,
        pruned: bool,
    ) -> Self {
        let mut c = Self {
            chain: chain.to_owned(),
            seq,
            hash: hex::encode(hash),
            time,
            pruned,
            key: key.public().id(),
            sig: String::new(),
        };
        c.sig = URL_SAFE_NO_PAD.encode(key.sign(&c.message()));
        c
    }

    fn message(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "chain": self.chain,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "pruned": self.pruned,
            "key": self.key,
        });
        let mut out = DOMAIN.to_vec();
        // Strings and an integer below 2^53 always have a canonical form.
        out.extend_from_slice(canonical_json(&v).unwrap_or_default().as_bytes());
        out
    }

    /// Whether `key` signed this checkpoint.
    pub fn verify(&self, key: &AuditPublicKey) -> bool {
        key.id() == self.key
            && URL_SAFE_NO_PAD
                .decode(&self.sig)
                .is_ok_and(|sig| key.verify(&self.message(), &sig))
    }

    /// The hash it names, as bytes.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let raw = hex::decode(&self.hash).ok()?;
        raw.try_into().ok()
    }

    /// Its line in a log or export.
    pub fn to_line(&self) -> String {
        let v = serde_json::json!({ "checkpoint": self });
        canonical_json(&v).unwrap_or_default()
    }

    /// Reads a checkpoint line's value (`{"checkpoint": {...}}`).
    pub fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Object(mut m) if m.len() == 1 => m
                .remove("checkpoint")
                .ok_or_else(|| "not a checkpoint".to_owned())
                .and_then(|c| serde_json::from_value(c).map_err(|e| e.to_string())),
            _ => Err("not a checkpoint".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checkpoints_verify_only_under_their_key_and_unchanged() {
        let (key, _) = AuditKey::generate().unwrap();
        let (other, _) = AuditKey::generate().unwrap();
        let c = Checkpoint::sign(
            &key,
            "abc",
            7,
            &[7; 32],
            "2026-12-03T00:00:00.000Z".into(),
            false,
        );
        assert!(c.verify(&key.public()));
        assert!(!c.verify(&other.public()));
        let line = c.to_line();
        let back = Checkpoint::from_value(serde_json::from_str(&line).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.hash_bytes(), Some([7; 32]));
        for tamper in [
            Checkpoint {
                seq: 8,
                ..c.clone()
            },
            Checkpoint {
                pruned: true,
                ..c.clone()
            },
            Checkpoint {
                hash: hex::encode([8; 32]),
                ..c.clone()
            },
            Checkpoint {
                sig: "AAAA".into(),
                ..c.clone()
            },
        ] {
            assert!(!tamper.verify(&key.public()));
        }
        // The other key's own signature over the same statement is not
        // this chain's.
        let forged = Checkpoint::sign(&other, "abc", 7, &[7; 32], c.time.clone(), false);
        assert!(!forged.verify(&key.public()));
    }
}
