//! The agent's own credentials and bundle in `--data-dir`, written
//! atomically (temp file, fsync, rename, fsync of the directory) so a crash
//! never leaves a half-written file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lanyard_core::x509::{SvidError, der_to_pem, pem_to_der_certs};

const SVID_FILE: &str = "agent_svid.pem";
const KEY_FILE: &str = "agent_key.der";
const BUNDLE_FILE: &str = "bundle.pem";
const TOKEN_FILE: &str = "join_token.sha256";
/// Task bindings (which process holds which task), kept across restarts.
const TASKS_FILE: &str = "tasks.json";
const QUARANTINE_FILE: &str = "quarantined.json";

/// Why stored credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// File system error.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A stored file is corrupt.
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, SvidError),
}

/// Stored agent credentials.
pub struct StoredCreds {
    /// SVID chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 key.
    pub key_pkcs8: Vec<u8>,
    /// Trust bundle, DER certificates.
    pub bundle: Vec<Vec<u8>>,
}

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct AgentStorage {
    dir: PathBuf,
}

/// The SHA-256 of a join token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

/// Writes `data` to `path` atomically with mode `mode`: a new temporary
/// file with an unpredictable name, created exclusively and never through a
/// symlink (`O_EXCL | O_NOFOLLOW`), synced, then renamed over `path` (which
/// replaces a symlink there rather than following it).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| std::io::Error::other("random source failed"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(nonce)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

impl AgentStorage {
    /// Opens (creating with mode 0700) the data directory.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io(dir.to_owned(), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StorageError::Io(dir.to_owned(), e))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Loads stored credentials; `None` when there are none yet.
    pub fn load(&self) -> Result<Option<StoredCreds>, StorageError> {
        let svid_path = self.dir.join(SVID_FILE);
        if !svid_path.exists() {
            return Ok(None);
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| StorageError::Io(p.to_owned(), e));
        let chain = pem_to_der_certs(&read(&svid_path)?)
            .map_err(|e| StorageError::Corrupt(svid_path.clone(), e))?;
        let key_path = self.dir.join(KEY_FILE);
        let key_pkcs8 = read(&key_path)?;
        let bundle_path = self.dir.join(BUNDLE_FILE);
        let bundle = pem_to_der_certs(&read(&bundle_path)?)
            .map_err(|e| StorageError::Corrupt(bundle_path.clone(), e))?;
        Ok(Some(StoredCreds {
            chain,
            key_pkcs8,
            bundle,
        }))
    }

    /// Stores the agent SVID and key (key first, so a crash in between
    /// leaves a mismatched pair that `load` callers detect and discard).
    pub fn save_svid(&self, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), StorageError> {
        let key_path = self.dir.join(KEY_FILE);
        write_atomic(&key_path, key_pkcs8, 0o600).map_err(|e| StorageError::Io(key_path, e))?;
        let svid_path = self.dir.join(SVID_FILE);
        write_atomic(
            &svid_path,
            der_to_pem("CERTIFICATE", chain).as_bytes(),
            0o644,
        )
        .map_err(|e| StorageError::Io(svid_path, e))
    }

    /// Stores the trust bundle.
    pub fn save_bundle(&self, bundle: &[Vec<u8>]) -> Result<(), StorageError> {
        let path = self.dir.join(BUNDLE_FILE);
        write_atomic(&path, der_to_pem("CERTIFICATE", bundle).as_bytes(), 0o644)
            .map_err(|e| StorageError::Io(path, e))
    }

    /// The SHA-256 (hex) of the join token the stored SVID came from.
    pub fn used_token_hash(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(TOKEN_FILE))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Records the join token the stored SVID came from (its hash only).
    pub fn save_used_token(&self, token: &str) -> Result<(), StorageError> {
        let path = self.dir.join(TOKEN_FILE);
        write_atomic(&path, token_hash(token).as_bytes(), 0o600)
            .map_err(|e| StorageError::Io(path, e))
    }

    /// Stores the task bindings (JSON, owner-only).
    pub fn save_tasks(&self, json: &[u8]) -> Result<(), StorageError> {
        let path = self.dir.join(TASKS_FILE);
        write_atomic(&path, json, 0o600).map_err(|e| StorageError::Io(path, e))
    }

    /// The stored task bindings, if any. A file that does not read is moved
    /// aside (kept for inspection) and reported.
    pub fn load_tasks(&self) -> Option<Vec<u8>> {
        let path = self.dir.join(TASKS_FILE);
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!(path = %path.display(), %e, "cannot read task bindings");
                None
            }
        }
    }

    /// Stores the quarantined process instances (JSON, owner-only).
    pub fn save_quarantined(&self, json: &[u8]) -> Result<(), StorageError> {
        let path = self.dir.join(QUARANTINE_FILE);
        write_atomic(&path, json, 0o600).map_err(|e| StorageError::Io(path, e))
    }

    /// The stored quarantined instances, if any.
    pub fn load_quarantined(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(QUARANTINE_FILE)).ok()
    }

    /// Moves a task bindings file that does not parse aside.
    pub fn quarantine_tasks_file(&self) {
        let path = self.dir.join(TASKS_FILE);
        let aside = self.dir.join(format!("{TASKS_FILE}.corrupt"));
        if let Err(e) = std::fs::rename(&path, &aside) {
            tracing::error!(path = %path.display(), %e, "cannot move corrupt task bindings aside");
        }
    }

    /// Removes stored credentials (after the server refused them for good).
    pub fn clear(&self) {
        for f in [SVID_FILE, KEY_FILE] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_never_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // The temp name of older versions, and the target itself, planted
        // as symlinks to the victim.
        std::os::unix::fs::symlink(&victim, dir.path().join(".svid.0.key.tmp")).unwrap();
        let target = dir.path().join("svid.0.key");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        assert!(
            !std::fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp files left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert_eq!(left.len(), 1, "only the planted link remains");
    }
}
