//! rustls verifiers on the peer validator: they read the live bundle and
//! revocations on every handshake, so a revoked SVID fails the handshake in
//! both directions without a restart.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{LiveTrust, Peer, PeerError, Requirements};
use crate::spiffe_id::SpiffeId;
use crate::tls::{algorithms, handshake_signatures};
use crate::x509::PeerUsage;

fn check(
    trust: &LiveTrust,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: PeerUsage,
    req: &Requirements,
    now: UnixTime,
) -> Result<Peer, Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.to_vec());
    chain.extend(intermediates.iter().map(|c| c.to_vec()));
    let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
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
