//! Authority keys as the bundle knows them: the public part of every
//! server's keys, the private key only where this server holds it.
//!
//! With a shared database a server's private keys are kept in its own data
//! dir (`keys/`, files 0600) and its database rows hold only the
//! certificate or public key; other servers never see them. A database
//! compromise then exposes entries and records, not the power to sign.
//! (`ca_keys_in_datastore = true` keeps them in the rows instead, as the
//! single-server sled store always does: its database is in the data dir.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::clock::{from_unix_secs, unix_secs};
use lanyard_core::jwt::{JwtAuthority, JwtSigner};
use lanyard_core::x509::{CertInfo, X509Authority};

use super::CaError;
use crate::store::{CaKeyRecord, JwtKeyRecord, StoreError};

/// What both kinds of key expose to the life cycle.
pub(super) trait Key {
    fn id(&self) -> &str;
    fn not_before(&self) -> SystemTime;
    fn not_after(&self) -> SystemTime;
}

/// An X.509 CA: its certificate, and its signer when this server holds it.
pub(super) struct X509Key {
    id: String,
    not_before: SystemTime,
    not_after: SystemTime,
    cert_der: Vec<u8>,
    signer: Option<Arc<X509Authority>>,
}

impl X509Key {
    pub(super) fn own(a: X509Authority) -> Self {
        let info = a.info();
        Self {
            id: info.subject_key_id.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            cert_der: a.cert_der().to_vec(),
            signer: Some(Arc::new(a)),
        }
    }

    /// From a stored record: with the private key from the record, from
    /// `key_file` (when the record has none and the key is this server's),
    /// or public only.
    pub(super) fn from_record(rec: &CaKeyRecord, key_file: Option<&Path>) -> Result<Self, CaError> {
        if !rec.key_pkcs8.is_empty() {
            return Ok(Self::own(X509Authority::from_parts(
                &rec.cert_der,
                &rec.key_pkcs8,
            )?));
        }
        if let Some(path) = key_file {
            let key = read_key(path, &rec.id)?;
            return Ok(Self::own(X509Authority::from_parts(&rec.cert_der, &key)?));
        }
        let info = CertInfo::parse(&rec.cert_der)?;
        Ok(Self {
            id: rec.id.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            cert_der: rec.cert_der.clone(),
            signer: None,
        })
    }

    pub(super) fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub(super) fn signer(&self) -> Option<&Arc<X509Authority>> {
        self.signer.as_ref()
    }
}

impl Key for X509Key {
    fn id(&self) -> &str {
        &self.id
    }
    fn not_before(&self) -> SystemTime {
        self.not_before
    }
    fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// A JWT key: its public key, and its signer when this server holds it.
pub(super) struct JwtKey {
    not_before: SystemTime,
    not_after: SystemTime,
    authority: JwtAuthority,
    signer: Option<Arc<JwtSigner>>,
}

impl JwtKey {
    pub(super) fn own(s: JwtSigner) -> Self {
        Self {
            not_before: s.not_before(),
            not_after: s.not_after(),
            authority: s.authority(),
            signer: Some(Arc::new(s)),
        }
    }

    /// See [`X509Key::from_record`]; `nb` is the record's (or derived)
    /// validity start.
    pub(super) fn from_record(
        rec: &JwtKeyRecord,
        nb: u64,
        key_file: Option<&Path>,
    ) -> Result<Self, CaError> {
        let (nbt, nat) = (from_unix_secs(nb), from_unix_secs(rec.not_after));
        let private = if !rec.key_pkcs8.is_empty() {
            Some(rec.key_pkcs8.clone())
        } else if let Some(path) = key_file {
            Some(read_key(path, &rec.kid)?)
        } else {
            None
        };
        if let Some(p) = private {
            return Ok(Self::own(JwtSigner::from_parts(&rec.kid, &p, nbt, nat)?));
        }
        if rec.public_key.is_empty() {
            return Err(CaError::Store(StoreError::Corrupt {
                key: format!("jwt key {}", rec.kid),
                reason: "neither a private nor a public key".into(),
            }));
        }
        Ok(Self {
            not_before: nbt,
            not_after: nat,
            authority: JwtAuthority {
                key_id: rec.kid.clone(),
                public_key: rec.public_key.clone(),
                expires_at: rec.not_after,
            },
            signer: None,
        })
    }

    pub(super) fn authority(&self) -> JwtAuthority {
        self.authority.clone()
    }

    pub(super) fn signer(&self) -> Option<&Arc<JwtSigner>> {
        self.signer.as_ref()
    }
}

impl Key for JwtKey {
    fn id(&self) -> &str {
        &self.authority.key_id
    }
    fn not_before(&self) -> SystemTime {
        self.not_before
    }
    fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// The `key_pkcs8` of an own X.509 key's record: empty, with the private
/// key written to the data dir, when `key_dir` is set. `None` for a key
/// this server does not hold.
pub(super) fn x509_record(k: &X509Key, key_dir: Option<&Path>) -> Result<Option<Vec<u8>>, CaError> {
    let Some(signer) = k.signer() else {
        return Ok(None);
    };
    let pkcs8 = signer.key_pkcs8_der();
    Ok(Some(match key_dir {
        Some(dir) => {
            write_key(&key_path(dir, "x509", &k.id), &pkcs8)?;
            Vec::new()
        }
        None => pkcs8,
    }))
}

/// As [`x509_record`] for a JWT-format key (`kind` `jwt` or `wit`).
pub(super) fn jwt_record(
    k: &JwtKey,
    kind: &str,
    key_dir: Option<&Path>,
) -> Result<Option<Vec<u8>>, CaError> {
    let Some(signer) = k.signer() else {
        return Ok(None);
    };
    Ok(Some(match key_dir {
        Some(dir) => {
            write_key(&key_path(dir, kind, k.id()), signer.pkcs8())?;
            Vec::new()
        }
        None => signer.pkcs8().to_vec(),
    }))
}

/// Where an own key's private half is kept.
pub(super) fn key_path(dir: &Path, kind: &str, id: &str) -> PathBuf {
    let safe: String = if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_owned()
    } else {
        hex::encode(id)
    };
    dir.join(format!("{kind}-{safe}.key"))
}

fn io(path: &Path, e: std::io::Error) -> CaError {
    CaError::Store(StoreError::caused(format!("{}: {e}", path.display()), e))
}

fn read_key(path: &Path, id: &str) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|e| {
        CaError::Store(StoreError::caused(
            format!(
                "the private key of authority {id} is not in this server's data dir ({}: {e}); restore the data dir, or taint and revoke the authority",
                path.display()
            ),
            e,
        ))
    })
}

/// Writes a private key file once (0600, written whole).
fn write_key(path: &Path, pkcs8: &[u8]) -> Result<(), CaError> {
    match crate::private_file::write_new(path, pkcs8) {
        Ok(()) => Ok(()),
        Err((_, e)) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err((at, e)) => Err(io(&at, e)),
    }
}

/// Removes an own key's file (after the key left the bundle).
pub(super) fn remove_key(dir: Option<&Path>, kind: &str, id: &str) {
    if let Some(dir) = dir {
        let _ = std::fs::remove_file(key_path(dir, kind, id));
    }
}

/// Validity start of a JWT record written before it was stored.
pub(super) fn jwt_not_before(rec: &JwtKeyRecord, ttl_secs: u64) -> u64 {
    if rec.not_before == 0 {
        rec.not_after.saturating_sub(ttl_secs)
    } else {
        rec.not_before
    }
}

/// Unix seconds, for records.
pub(super) fn secs(t: SystemTime) -> u64 {
    unix_secs(t)
}
