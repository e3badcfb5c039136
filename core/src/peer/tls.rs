//! rustls verifiers on the peer validator: they read the live bundle and
//! revocations on every handshake, so a revoked SVID fails the handshake in
//! both directions without a restart.

use std::sync::Arc;

use rustls::{CertificateError, Error, SignatureScheme};

use super::{LiveTrust, PeerError, Requirements};
use crate::spiffe_id::SpiffeId;
use crate::tls::{ChainCheck, ClientVerifier, ServerVerifier};
use crate::x509::PeerUsage;

/// The peer validator as a verifier's check: chain, SVID rules, revocation
/// and task requirements, on the trust state current at the handshake.
#[derive(Debug)]
pub struct PeerCheck {
    trust: Arc<LiveTrust>,
    req: Requirements,
}

impl PeerCheck {
    /// Checks on `trust` with `req`.
    pub fn new(trust: Arc<LiveTrust>, req: Requirements) -> Self {
        Self { trust, req }
    }
}

impl ChainCheck for PeerCheck {
    fn check(
        &self,
        chain: &[Vec<u8>],
        usage: PeerUsage,
        now: std::time::SystemTime,
    ) -> Result<SpiffeId, Error> {
        self.trust
            .current()
            .validate(chain, usage, &self.req, now)
            .map(|peer| peer.spiffe_id)
            .map_err(to_rustls)
    }
}

fn to_rustls(e: PeerError) -> Error {
    match e {
        PeerError::Revoked { .. } => Error::InvalidCertificate(CertificateError::Revoked),
        other => {
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(other))))
        }
    }
}

/// Verifies a server's X.509-SVID with the peer validator: chain, SVID
/// rules, revocation, task requirements, and (when given) its SPIFFE ID.
pub type PeerServerVerifier = ServerVerifier<PeerCheck>;

impl ServerVerifier<PeerCheck> {
    /// A verifier for servers of `trust`'s trust domain; `expected` pins
    /// one SPIFFE ID.
    pub fn peer(trust: Arc<LiveTrust>, expected: Option<SpiffeId>, req: Requirements) -> Self {
        Self::with(PeerCheck::new(trust, req), expected)
    }
}

/// Verifies client X.509-SVIDs with the peer validator. Client
/// certificates are mandatory.
pub type PeerClientVerifier = ClientVerifier<PeerCheck>;

impl ClientVerifier<PeerCheck> {
    /// A verifier for clients of `trust`'s trust domain.
    pub fn peer(trust: Arc<LiveTrust>, req: Requirements) -> Self {
        Self::with(PeerCheck::new(trust, req), true)
    }
}

/// The SVID a TLS endpoint presents, swapped in place on rotation: a
/// rustls certificate resolver for servers and clients alike.
#[derive(Debug)]
pub struct SvidResolver(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl SvidResolver {
    /// A resolver presenting `key`.
    pub fn new(key: rustls::sign::CertifiedKey) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(Arc::new(key))))
    }

    /// Presents `key` from the next handshake on.
    pub fn set(&self, key: rustls::sign::CertifiedKey) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for SvidResolver {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS server config for a tool server: mandatory client SVIDs checked by
/// [`PeerClientVerifier`] on `trust`, presenting `svid`.
pub fn server_config(
    trust: Arc<LiveTrust>,
    svid: Arc<SvidResolver>,
    req: Requirements,
) -> rustls::ServerConfig {
    rustls::ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(PeerClientVerifier::peer(trust, req)))
        .with_cert_resolver(svid)
}

/// A TLS client config: the server's SVID checked by [`PeerServerVerifier`]
/// on `trust` (pinned to `expected` when given), presenting `svid`.
pub fn client_config(
    trust: Arc<LiveTrust>,
    expected: Option<SpiffeId>,
    svid: Arc<SvidResolver>,
    req: Requirements,
) -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier::peer(trust, expected, req)))
        .with_client_cert_resolver(svid)
}
