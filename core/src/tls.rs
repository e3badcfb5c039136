//! rustls certificate verifiers that authenticate peers by SPIFFE ID
//! (sans-I/O: rustls drives them). One server verifier and one client
//! verifier, each over a [`ChainCheck`]: a live trust bundle here, the
//! peer validator (with revocation) in [`crate::peer`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509::{PeerUsage, validate_x509_svid};

/// Where a verifier reads the current X.509 authorities of its trust domain.
/// Implementations return a snapshot, so rotation never blocks a handshake.
pub trait X509BundleSource: Send + Sync + fmt::Debug {
    /// DER CA certificates trusted right now.
    fn x509_authorities(&self) -> Arc<Vec<Vec<u8>>>;
}

/// The handshake-signature methods every verifier shares: rustls's own
/// checks with the aws-lc-rs algorithms in `self.algs`.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

pub(crate) fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// What rustls hands a verifier, as the validators take it: the DER chain
/// (leaf first) and the time.
pub(crate) fn chain_and_time(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> (Vec<Vec<u8>>, std::time::SystemTime) {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.to_vec());
    chain.extend(intermediates.iter().map(|c| c.to_vec()));
    (chain, UNIX_EPOCH + Duration::from_secs(now.as_secs()))
}

/// What a verifier checks a presented chain (leaf first) against: the
/// SVID rules and a trust bundle ([`BundleCheck`]), or, on the peer
/// validator, also revocations and task requirements
/// ([`crate::peer::PeerCheck`]). Returns the peer's SPIFFE ID.
pub trait ChainCheck: Send + Sync + fmt::Debug {
    /// Validates `chain` for `usage` at `now`.
    fn check(
        &self,
        chain: &[Vec<u8>],
        usage: PeerUsage,
        now: std::time::SystemTime,
    ) -> Result<SpiffeId, Error>;
}

/// Chain and SVID rules against the current authorities of one trust
/// domain, without revocation: the server's and agent's own connections.
#[derive(Debug)]
pub struct BundleCheck {
    td: TrustDomain,
    bundle: Arc<dyn X509BundleSource>,
}

impl BundleCheck {
    /// Checks against `bundle`, for SVIDs of `td`.
    pub fn new(td: TrustDomain, bundle: Arc<dyn X509BundleSource>) -> Self {
        Self { td, bundle }
    }
}

impl ChainCheck for BundleCheck {
    fn check(
        &self,
        chain: &[Vec<u8>],
        usage: PeerUsage,
        now: std::time::SystemTime,
    ) -> Result<SpiffeId, Error> {
        validate_x509_svid(chain, &self.td, &self.bundle.x509_authorities(), usage, now).map_err(
            |e| Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e)))),
        )
    }
}

/// Verifies a server's certificate: an X.509-SVID that passes `C`, whose
/// SPIFFE ID is exactly the expected one when one is pinned (the DNS name
/// rustls passes is ignored; SPIFFE authenticates by ID).
#[derive(Debug)]
pub struct ServerVerifier<C> {
    check: C,
    expected: Option<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl<C: ChainCheck> ServerVerifier<C> {
    /// A verifier checking with `check`; `expected` pins one SPIFFE ID.
    pub fn with(check: C, expected: Option<SpiffeId>) -> Self {
        Self {
            check,
            expected,
            algs: algorithms(),
        }
    }
}

/// The server verifier of the server's and agent's own connections.
pub type SpiffeServerVerifier = ServerVerifier<BundleCheck>;

impl ServerVerifier<BundleCheck> {
    /// A verifier for a server that must present `expected`.
    pub fn new(expected: SpiffeId, bundle: Arc<dyn X509BundleSource>) -> Self {
        Self::with(
            BundleCheck::new(expected.trust_domain(), bundle),
            Some(expected),
        )
    }
}

impl<C: ChainCheck> ServerCertVerifier for ServerVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let (chain, now) = chain_and_time(end_entity, intermediates, now);
        let id = self.check.check(&chain, PeerUsage::Server, now)?;
        if let Some(want) = &self.expected
            && *want != id
        {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(UnexpectedPeer(id.to_string()))),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The peer presented an SVID with an unexpected SPIFFE ID.
#[derive(Debug, thiserror::Error)]
#[error("unexpected peer SPIFFE ID {0}")]
pub struct UnexpectedPeer(pub String);

/// Verifies client certificates as X.509-SVIDs that pass `C`. Where they
/// are optional at the TLS layer (`mandatory = false`), a service can serve
/// a bootstrap call without one; its handlers then require an identity.
#[derive(Debug)]
pub struct ClientVerifier<C> {
    check: C,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl<C: ChainCheck> ClientVerifier<C> {
    /// A client verifier checking with `check`.
    pub fn with(check: C, mandatory: bool) -> Self {
        Self {
            check,
            mandatory,
            algs: algorithms(),
        }
    }
}

/// The client verifier of the server's own listener.
pub type SpiffeClientVerifier = ClientVerifier<BundleCheck>;

impl ClientVerifier<BundleCheck> {
    /// A client verifier for `td`.
    pub fn new(td: TrustDomain, bundle: Arc<dyn X509BundleSource>, mandatory: bool) -> Self {
        Self::with(BundleCheck::new(td, bundle), mandatory)
    }
}

impl<C: ChainCheck> ClientCertVerifier for ClientVerifier<C> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let (chain, now) = chain_and_time(end_entity, intermediates, now);
        self.check.check(&chain, PeerUsage::Client, now)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts any server certificate whose handshake signature verifies,
/// without checking whom it belongs to. Only for `--insecure-bootstrap`
/// during development (the first connection then learns the bundle from the
/// server it reached, which an attacker on the path could impersonate) and
/// for a kubelet the operator chose not to verify
/// (`kubelet_insecure_skip_verify`).
#[derive(Debug)]
pub struct InsecureBootstrapVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl Default for InsecureBootstrapVerifier {
    fn default() -> Self {
        Self { algs: algorithms() }
    }
}

impl ServerCertVerifier for InsecureBootstrapVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts exactly one server certificate (compared byte for byte), whose
/// handshake signature must verify: a kubelet's self-signed serving
/// certificate, read from the node, pinned instead of trusted by name.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pinned: Vec<u8>,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedCertVerifier {
    /// Pins the DER certificate `der`.
    pub fn new(der: Vec<u8>) -> Self {
        Self {
            pinned: der,
            algs: algorithms(),
        }
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if end_entity.as_ref() == self.pinned.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    handshake_signatures!();
}

/// A rustls signing identity from a DER chain (leaf first) and its PKCS#8
/// ECDSA key: what a TLS client or server presents as its SVID.
pub fn certified_key(
    chain: &[Vec<u8>],
    key_pkcs8: &[u8],
) -> Result<rustls::sign::CertifiedKey, Error> {
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key_pkcs8.to_vec().into());
    let signing = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&der)?;
    let certs = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

/// A fixed bundle (tests, and the agent's bootstrap bundle file).
#[derive(Debug, Clone)]
pub struct StaticBundle(pub Arc<Vec<Vec<u8>>>);

impl X509BundleSource for StaticBundle {
    fn x509_authorities(&self) -> Arc<Vec<Vec<u8>>> {
        self.0.clone()
    }
}
