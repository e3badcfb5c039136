//! Secrets at rest: a credential provider's secret is stored sealed
//! (AES-256-GCM) under a key held in a file beside the server, never in
//! the database, so the rows (sled or PostgreSQL) hold only ciphertext.
//! Every server of one PostgreSQL database needs the same key file.
//!
//! The key file holds one key per line (64 hex digits); the first seals,
//! and every line opens. Rotating the key: put a new line first on every
//! server, restart them, re-seal every secret, then drop the old line.
//! Each sealed value names the key that sealed it (the first 8 bytes of a
//! SHA-256 of the key, in hex), and is bound to what it is for (the
//! provider's name), so a sealed value copied into another provider's row
//! does not open.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Bytes of one key.
const KEY_LEN: usize = 32;

/// Why a secret could not be sealed or opened, or the key file read.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("credential key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not lines of 64 hex digits.
    #[error("credential key file {}: {message}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No key of the key file sealed this value.
    #[error(
        "the secret was sealed with key {0}, which the credential key file does not hold (every server of one database needs the same key file)"
    )]
    UnknownKey(String),
    /// The value was altered, or belongs to something else.
    #[error("the sealed secret does not open: it was altered, or belongs to another provider")]
    Tampered,
    /// The random source failed.
    #[error("no randomness for a nonce")]
    NoRandomness,
}

/// A sealed secret, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// ID of the key that sealed it.
    pub key_id: String,
    /// The nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}

/// One key.
struct Key {
    id: String,
    aead: LessSafeKey,
    mac: hmac::Key,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN]) -> Result<Self, SealError> {
        let id = hex::encode(&digest(&SHA256, bytes).as_ref()[..8]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::Tampered)?;
        Ok(Self {
            id,
            aead: LessSafeKey::new(unbound),
            mac: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }
}

/// The keys of the key file: the first seals, all of them open.
pub struct SealingKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKeys")
            .field("ids", &self.ids())
            .finish()
    }
}

impl SealingKeys {
    /// Reads the key file at `path`, creating it with one new key (mode
    /// 0600, written whole) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        if !path.exists() {
            let mut key = [0u8; KEY_LEN];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| SealError::NoRandomness)?;
            write_new(path, format!("{}\n", hex::encode(key)).as_bytes())?;
        }
        Self::load(path)
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let io = |source| SealError::Io {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text).map_err(|message| SealError::BadKeyFile {
            path: path.to_owned(),
            message,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes: [u8; KEY_LEN] = hex::decode(line)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("line {} is not a key of 64 hex digits", n + 1))?;
            keys.push(Key::new(&bytes).map_err(|e| e.to_string())?);
        }
        if keys.is_empty() {
            return Err("holds no key".into());
        }
        Ok(Self { keys })
    }

    /// The IDs of the keys, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Seals `secret` for `context` (what it belongs to, e.g. the provider's
    /// name) with the first key.
    pub fn seal(&self, secret: &[u8], context: &str) -> Result<Sealed, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::NoRandomness)?;
        let mut buf = secret.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Tampered)?;
        Ok(Sealed {
            key_id: key.id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(buf),
        })
    }

    /// Opens a value sealed for `context` by any key of the file.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Secret, SealError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SealError::Tampered)?;
        let mut buf = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| SealError::Tampered)?;
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Tampered)?
            .len();
        buf.truncate(plain);
        Ok(Secret(buf))
    }

    /// Whether `sealed` was sealed by another key than the first (it
    /// should be sealed again after a key rotation).
    pub fn stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.keys[0].id
    }

    /// A digest that names a secret in audit records and listings without
    /// revealing it: an HMAC under the sealing key (a plain hash of a
    /// short secret could be searched for), the same on every server with
    /// the same key file.
    pub fn digest(&self, secret: &[u8]) -> String {
        let tag = hmac::sign(&self.keys[0].mac, secret);
        format!("hmac-sha256:{}", hex::encode(&tag.as_ref()[..16]))
    }
}

/// An opened secret: wiped from memory when dropped, never printed.
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps bytes (read from a file, say) so they are wiped when dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Writes a new private file (0600, written whole); refuses to replace one.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
    crate::private_file::write_new(path, bytes)
        .map_err(|(path, source)| SealError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_provider_and_is_not_in_the_stored_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.key");
        let keys = SealingKeys::load_or_create(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = keys.seal(b"sk-live-0123456789", "crm-api-key").unwrap();
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("sk-live"));
        assert!(!stored.contains(&STANDARD.encode(b"sk-live-0123456789")));
        assert_eq!(
            keys.open(&sealed, "crm-api-key").unwrap().expose(),
            b"sk-live-0123456789"
        );
        // Moved to another provider, or altered: refused.
        assert!(matches!(
            keys.open(&sealed, "github"),
            Err(SealError::Tampered)
        ));
        let mut altered = sealed.clone();
        let mut ct = STANDARD.decode(&altered.ciphertext).unwrap();
        ct[0] ^= 1;
        altered.ciphertext = STANDARD.encode(ct);
        assert!(matches!(
            keys.open(&altered, "crm-api-key"),
            Err(SealError::Tampered)
        ));
        // Two seals of one secret differ (fresh nonces); the digest does
        // not, and does not reveal it.
        let again = keys.seal(b"sk-live-0123456789", "crm-api-key").unwrap();
        assert_ne!(again.ciphertext, sealed.ciphertext);
        assert_eq!(
            keys.digest(b"sk-live-0123456789"),
            keys.digest(b"sk-live-0123456789")
        );
        assert!(keys.digest(b"x").starts_with("hmac-sha256:"));
        // The same file opens it again (another server, a restart); a file
        // with another key does not.
        let reread = SealingKeys::load(&path).unwrap();
        assert_eq!(
            reread.open(&sealed, "crm-api-key").unwrap().expose(),
            b"sk-live-0123456789"
        );
        let other = SealingKeys::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(matches!(
            other.open(&sealed, "crm-api-key"),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_rotated_key_file_seals_with_its_first_key_and_opens_with_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.key");
        let old = SealingKeys::load_or_create(&path).unwrap();
        let sealed = old.seal(b"secret", "p").unwrap();
        let old_line = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("# rotated\n{}\n{old_line}", "ab".repeat(32))).unwrap();
        let rotated = SealingKeys::load(&path).unwrap();
        assert_eq!(rotated.ids().len(), 2);
        assert!(rotated.stale(&sealed));
        assert_eq!(rotated.open(&sealed, "p").unwrap().expose(), b"secret");
        let resealed = rotated.seal(b"secret", "p").unwrap();
        assert!(!rotated.stale(&resealed));
        assert_eq!(resealed.key_id, rotated.ids()[0]);
    }

    #[test]
    fn a_bad_key_file_is_refused_with_the_line_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.key");
        for (text, says) in [
            ("", "holds no key"),
            ("# only a comment\n", "holds no key"),
            ("abcd\n", "line 1"),
            (&format!("{}\nzz\n", "00".repeat(32)), "line 2"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = SealingKeys::load(&path).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("credential.key"), "{e}");
        }
        let e = SealingKeys::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, SealError::Io { .. }));
        // An existing file is never replaced by a new key.
        std::fs::write(&path, "00".repeat(32)).unwrap();
        let keys = SealingKeys::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "00".repeat(32));
        assert_eq!(keys.ids().len(), 1);
    }
}
