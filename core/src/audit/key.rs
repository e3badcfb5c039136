//! The audit key: Ed25519, used for nothing but checkpoints, so it can be
//! handed to auditors (its public half) without saying anything about the
//! CA. The public key travels as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Why an audit key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditKeyError {
    /// The private key file is not an Ed25519 PKCS#8 key.
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    Private(String),
    /// The public key text holds no Ed25519 public key.
    #[error("not an Ed25519 public key: {0}")]
    Public(String),
    /// No randomness for a new key.
    #[error("no randomness for a new audit key")]
    Random,
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the
/// 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The private audit key. Its `Debug` shows the key ID only.
pub struct AuditKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.public().id())
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// A new key and its PKCS#8 encoding (to store).
    pub fn generate() -> Result<(Self, Vec<u8>), AuditKeyError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AuditKeyError::Random)?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AuditKeyError> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(|pair| Self { pair })
            .map_err(|e| AuditKeyError::Private(e.to_string()))
    }

    /// The public half.
    pub fn public(&self) -> AuditPublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        AuditPublicKey { raw }
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// A public audit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPublicKey {
    raw: [u8; 32],
}

impl AuditPublicKey {
    /// Its ID: the first 8 bytes of SHA-256 of the key, hex.
    pub fn id(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.raw);
        hex::encode(&d.as_ref()[..8])
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Vec<u8> {
        let mut out = SPKI_PREFIX.to_vec();
        out.extend_from_slice(&self.raw);
        out
    }

    /// PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.to_der()))
    }

    /// From SubjectPublicKeyInfo DER.
    pub fn from_der(der: &[u8]) -> Result<Self, AuditKeyError> {
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|r| r.len() == 32)
            .ok_or_else(|| {
                AuditKeyError::Public("expected an Ed25519 SubjectPublicKeyInfo".into())
            })?;
        let mut out = [0u8; 32];
        out.copy_from_slice(raw);
        Ok(Self { raw: out })
    }

    /// Whether `sig` is this key's signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(msg, sig)
            .is_ok()
    }
}

/// The line `audit key` writes before a key to name the chain it signs.
pub const CHAIN_LINE: &str = "# lanyard audit chain: ";

/// Every `PUBLIC KEY` block in `text` with the chain it is bound to (the
/// [`CHAIN_LINE`] before it, if any); at least one.
pub fn parse_bound_public_keys(
    text: &str,
) -> Result<Vec<(Option<String>, AuditPublicKey)>, AuditKeyError> {
    let keys = parse_public_keys(text)?;
    // The binding lines, in the order of the blocks they precede.
    let mut bindings = vec![];
    let mut pending: Option<String> = None;
    for line in text.lines() {
        if let Some(chain) = line.strip_prefix(CHAIN_LINE) {
            pending = Some(chain.trim().to_owned()).filter(|c| !c.is_empty());
        } else if line.starts_with("-----BEGIN PUBLIC KEY-----") {
            bindings.push(pending.take());
        }
    }
    Ok(keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (bindings.get(i).cloned().flatten(), k))
        .collect())
}

/// Every `PUBLIC KEY` block in `text` (one per server); at least one.
pub fn parse_public_keys(text: &str) -> Result<Vec<AuditPublicKey>, AuditKeyError> {
    let blocks = pem::parse_many(text).map_err(|e| AuditKeyError::Public(e.to_string()))?;
    let keys = blocks
        .iter()
        .filter(|b| b.tag() == "PUBLIC KEY")
        .map(|b| AuditPublicKey::from_der(b.contents()))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(AuditKeyError::Public("no PUBLIC KEY block".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_verify_and_round_trip() {
        let (k, pkcs8) = AuditKey::generate().unwrap();
        let again = AuditKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(k.public(), again.public());
        let sig = k.sign(b"checkpoint");
        assert!(k.public().verify(b"checkpoint", &sig));
        assert!(!k.public().verify(b"checkpoinT", &sig));
        let (other, _) = AuditKey::generate().unwrap();
        assert!(!other.public().verify(b"checkpoint", &sig));
        let both = k.public().to_pem() + &other.public().to_pem();
        assert_eq!(
            parse_public_keys(&both).unwrap(),
            vec![k.public(), other.public()]
        );
        assert_eq!(k.public().id().len(), 16);
        assert!(!format!("{k:?}").contains(&hex::encode(&pkcs8)));
        assert!(parse_public_keys("garbage").is_err());
        assert!(AuditKey::from_pkcs8(b"garbage").is_err());
        assert!(AuditPublicKey::from_der(&[0x30, 0x00]).is_err());
    }
}
