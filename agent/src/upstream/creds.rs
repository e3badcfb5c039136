//! The agent's own identity and trust bundle, shared with the TLS stack:
//! rustls reads them through a resolver and a bundle source, so renewal
//! and bundle changes apply to new connections without rebuilding configs.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use lanyard_core::SpiffeId;
use lanyard_core::tls::X509BundleSource;
use lanyard_core::x509::{CertInfo, SvidError};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;

/// The agent SVID with its key.
pub struct AgentIdentity {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// DER chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 key.
    pub key_pkcs8: Vec<u8>,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// Key ID of the CA that signed it.
    pub issuer_id: Option<String>,
    certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl AgentIdentity {
    /// Builds the identity, checking that the key belongs to the leaf.
    pub fn new(chain: Vec<Vec<u8>>, key_pkcs8: Vec<u8>) -> Result<Self, SvidError> {
        let leaf = chain.first().ok_or(SvidError::Empty("agent SVID chain"))?;
        let info = CertInfo::parse(leaf)?;
        let key = lanyard_core::x509::SvidKey::from_pkcs8(&key_pkcs8)?;
        if key.spki_der() != info.spki_der {
            return Err(SvidError::Crypto(
                "agent key does not match its certificate".into(),
            ));
        }
        let uri = info.uri_sans.first().ok_or(SvidError::UriSanCount(0))?;
        let spiffe_id = SpiffeId::new(uri).map_err(|e| SvidError::BadSpiffeId(e.to_string()))?;
        let certified = lanyard_core::tls::certified_key(&chain, &key_pkcs8)
            .map_err(|e| SvidError::Crypto(e.to_string()))?;
        Ok(Self {
            spiffe_id,
            not_before: info.not_before,
            not_after: info.not_after,
            issuer_id: info.authority_key_id.clone(),
            chain,
            key_pkcs8,
            certified: Arc::new(certified),
        })
    }
}

/// Shared, swappable agent identity and bundle.
#[derive(Debug, Default)]
pub struct Credentials {
    identity: RwLock<Option<Arc<AgentIdentity>>>,
    bundle: RwLock<Arc<Vec<Vec<u8>>>>,
}

impl Credentials {
    /// The current identity.
    pub fn identity(&self) -> Option<Arc<AgentIdentity>> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the identity.
    pub fn set_identity(&self, id: Option<Arc<AgentIdentity>>) {
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = id;
    }

    /// Replaces the bundle.
    pub fn set_bundle(&self, bundle: Arc<Vec<Vec<u8>>>) {
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = bundle;
    }
}

impl X509BundleSource for Credentials {
    fn x509_authorities(&self) -> Arc<Vec<Vec<u8>>> {
        self.bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Presents the agent SVID as the TLS client certificate.
#[derive(Debug)]
pub struct ClientCert(pub Arc<Credentials>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.identity().is_some()
    }
}
