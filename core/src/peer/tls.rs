//! rustls verifiers on the peer validator: they read the live bundle and
//! revocations on every handshake, so a revoked SVID fails the handshake in
//! both directions without a restart.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{LiveTrust, Peer, PeerError, Requirements};
use crate::spiffe_id::SpiffeId;
use crate::tls::{algorithms, chain_and_time, handshake_signatures};
use crate::x509::PeerUsage;

fn check(
    trust: &LiveTrust,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: PeerUsage,
    req: &Requirements,
    now: UnixTime,
) -> Result<Peer, Error> {
    let (chain, now) = chain_and_time(end_entity, intermediates, now);
    trust
        .current()
        .validate(&chain, usage, req, now)
        .map_err(to_rustls)
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
#[derive(Debug)]
pub struct PeerServerVerifier {
    trust: Arc<LiveTrust>,
    expected: Option<SpiffeId>,
    req: Requirements,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerServerVerifier {
    /// A verifier for servers of `trust`'s trust domain; `expected` pins
    /// one SPIFFE ID.
    pub fn new(trust: Arc<LiveTrust>, expected: Option<SpiffeId>, req: Requirements) -> Self {
        Self {
            trust,
            expected,
            req,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let peer = check(
            &self.trust,
            end_entity,
            intermediates,
            PeerUsage::Server,
            &self.req,
            now,
        )?;
        if let Some(want) = &self.expected
            && *want != peer.spiffe_id
        {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(crate::tls::UnexpectedPeer(
                    peer.spiffe_id.to_string(),
                ))),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Verifies client X.509-SVIDs with the peer validator. Client
/// certificates are mandatory.
#[derive(Debug)]
pub struct PeerClientVerifier {
    trust: Arc<LiveTrust>,
    req: Requirements,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerClientVerifier {
    /// A verifier for clients of `trust`'s trust domain.
    pub fn new(trust: Arc<LiveTrust>, req: Requirements) -> Self {
        Self {
            trust,
            req,
            algs: algorithms(),
        }
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check(
            &self.trust,
            end_entity,
            intermediates,
            PeerUsage::Client,
            &self.req,
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
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
        .with_client_cert_verifier(Arc::new(PeerClientVerifier::new(trust, req)))
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
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier::new(trust, expected, req)))
        .with_client_cert_resolver(svid)
}
