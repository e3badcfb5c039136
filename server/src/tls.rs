//! The server's mTLS listener: its own SVID (`spiffe://<td>/lanyard/server`)
//! served through a resolver that can be swapped without restarting, agent
//! client certificates verified against the live bundle, and an accept loop
//! that turns TCP connections into TLS streams for tonic.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use lanyard_core::SpiffeId;
use lanyard_core::clock::Clock;
use lanyard_core::tls::SpiffeClientVerifier;
use lanyard_core::x509::{CertInfo, SvidError, SvidKey, SvidParams};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::ca::{Ca, CaError};
use crate::config::NetLimits;
use lanyard_uds::{ConnLimiter, ConnPermit};

/// Lifetime of the server's own TLS certificate; renewed at half-life.
pub const SERVER_SVID_TTL: Duration = Duration::from_secs(3600);

/// The server's TLS identity, swappable at run time.
#[derive(Debug)]
pub struct ServerIdentity {
    id: SpiffeId,
    current: RwLock<Arc<CertifiedKey>>,
    /// (issuing CA key ID, renew at) of the current certificate.
    meta: RwLock<(String, std::time::SystemTime)>,
}

impl ServerIdentity {
    /// Mints the first identity.
    pub fn new(ca: &Ca, clock: &dyn Clock) -> Result<Arc<Self>, CaError> {
        let id = ca
            .trust_domain()
            .id_with_segments(["lanyard", "server"])
            .map_err(|e| CaError::Svid(lanyard_core::x509::SvidError::Issue(e.to_string())))?;
        let (key, meta) = mint(ca, &id, clock)?;
        Ok(Arc::new(Self {
            id,
            current: RwLock::new(Arc::new(key)),
            meta: RwLock::new(meta),
        }))
    }

    /// Re-mints the identity from the CA's active key.
    pub fn renew(&self, ca: &Ca, clock: &dyn Clock) -> Result<(), CaError> {
        let (key, meta) = mint(ca, &self.id, clock)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        *self.meta.write().unwrap_or_else(|p| p.into_inner()) = meta;
        Ok(())
    }

    /// True when the certificate is due for renewal: half its lifetime has
    /// passed, or the CA that signed it is no longer the active one.
    pub fn due(&self, ca: &Ca, now: std::time::SystemTime) -> bool {
        let (issuer, renew_at) = self.meta.read().unwrap_or_else(|p| p.into_inner()).clone();
        now >= renew_at || ca.snapshot().active.info().subject_key_id != issuer
    }

    /// When the certificate reaches its renewal point.
    pub fn renew_at(&self) -> std::time::SystemTime {
        self.meta.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// The server's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }
}

type Meta = (String, std::time::SystemTime);

fn mint(ca: &Ca, id: &SpiffeId, clock: &dyn Clock) -> Result<(CertifiedKey, Meta), CaError> {
    let snap = ca.snapshot();
    let key = SvidKey::generate()?;
    let params = SvidParams {
        spiffe_id: id.clone(),
        dns_names: vec!["localhost".into()],
        ttl: SERVER_SVID_TTL,
        extensions: vec![],
    };
    let spki = rcgen_spki(&key)?;
    let now = clock.now();
    let svid = snap.active.sign_public_key(&spki, &params, now)?;
    let renew = lanyard_core::rotation::renew_at(now.min(svid.not_after), svid.not_after, 0.0);
    let meta = (snap.active.info().subject_key_id.clone(), renew);
    let certified = lanyard_core::tls::certified_key(&[svid.cert_der], &key.pkcs8_der())
        .map_err(|e| CaError::Svid(lanyard_core::x509::SvidError::Crypto(e.to_string())))?;
    Ok((certified, meta))
}

fn rcgen_spki(key: &SvidKey) -> Result<lanyard_core::x509::Spki, CaError> {
    lanyard_core::x509::Spki::from_der(&key.spki_der())
        .map_err(|e| CaError::Svid(lanyard_core::x509::SvidError::Crypto(e.to_string())))
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The rustls configuration of the server API.
pub fn server_config(
    ca: &Ca,
    identity: Arc<ServerIdentity>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        SpiffeClientVerifier::new(ca.trust_domain().clone(), Arc::new(ca.clone()), false);
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote address.
    pub addr: Option<SocketAddr>,
    /// The verified client SVID, read once per connection; `None` when the
    /// client sent no certificate.
    pub client: Option<Result<ClientSvid, SvidError>>,
}

/// The parts of a verified client SVID that authorisation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its serial number, hex.
    pub serial: String,
    /// Its expiry: checked on every call, not only at the handshake.
    pub not_after: std::time::SystemTime,
    /// The issuing CA's key ID (authority key identifier), checked against
    /// the bundle on every call.
    pub issuer: Option<String>,
}

impl ClientSvid {
    /// Reads the SPIFFE ID and serial of a leaf certificate.
    pub fn parse(leaf: &[u8]) -> Result<Self, SvidError> {
        let info = CertInfo::parse(leaf)?;
        let spiffe_id = info
            .uri_sans
            .first()
            .and_then(|u| SpiffeId::new(u).ok())
            .ok_or(SvidError::UriSanCount(info.uri_sans.len()))?;
        Ok(Self {
            spiffe_id,
            serial: info.serial,
            not_after: info.not_after,
            issuer: info.authority_key_id,
        })
    }
}

/// A server-side TLS connection that tells tonic who the peer is. It holds
/// a slot of the connection limits, and ends (as a closed stream) at its
/// maximum age.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: ConnPermit<IpAddr>,
    expires: Pin<Box<tokio::time::Sleep>>,
}

impl TlsConn {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.expires.as_mut().poll(cx).is_ready()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            // Maximum age reached: end of stream; the agent reconnects.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and performs TLS handshakes concurrently; yields
/// the established connections. Failed handshakes (garbage, wrong CA,
/// timeouts) are logged and dropped without affecting anything else.
///
/// Limits: connections in total and per peer address (a slot is taken at
/// accept and held for the connection's life, so half-open handshakes count
/// too), handshakes in progress at once, a handshake deadline, and a
/// maximum connection age. Over a limit, a connection is closed at once.
/// Accept errors (descriptor exhaustion) back off instead of spinning.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: NetLimits,
) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let conns = ConnLimiter::new(limits.max_connections, limits.max_connections_per_peer);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes));
    tokio::spawn(async move {
        let mut backoff = lanyard_uds::accept_backoff();
        loop {
            let (tcp, addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => {
                        backoff.succeeded();
                        x
                    }
                    Err(e) => {
                        let pause = backoff.failed();
                        tracing::warn!(?e, ?pause, "accept failed; backing off");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let permit = match conns.try_acquire(addr.ip()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%addr, %e, "connection refused");
                    continue;
                }
            };
            let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%addr, "too many TLS handshakes in progress; connection refused");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let accepted =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshake);
                match accepted {
                    Ok(Ok(tls)) => {
                        let client = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|leaf| ClientSvid::parse(leaf));
                        let info = PeerInfo {
                            addr: Some(addr),
                            client,
                        };
                        let expires = Box::pin(tokio::time::sleep(limits.max_connection_age));
                        let conn = TlsConn {
                            inner: tls,
                            info,
                            _permit: permit,
                            expires,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, ?e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
