//! The callers' listener: HTTPS (HTTP/1.1 and HTTP/2) with the gateway's
//! own X.509-SVID, client certificates optional at the TLS layer (a caller
//! without one must bring a bearer JWT-SVID) and, when presented, checked
//! by the peer verifier on the live bundle and revocations. A connection
//! whose peer is revoked (a task revoked or quarantined, an SVID revoked)
//! is closed at once, mid-answer too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lanyard_core::peer::{PeerCheck, Requirements};
use lanyard_core::tls::ClientVerifier;
use lanyard_core::x509::PeerUsage;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::front::handle;
use crate::service::Conn;
use crate::state::Gate;

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 4096;
/// Time for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request's headers (HTTP/1.1).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// The rustls configuration of the callers' side.
pub fn tls_config(gate: &Gate) -> rustls::ServerConfig {
    let verifier = ClientVerifier::with(
        PeerCheck::new(gate.identity.trust.clone(), Requirements::default()),
        false,
    );
    let mut c = rustls::ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(gate.identity.key.clone());
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    c
}

/// Accepts callers on `listener` until `stop` turns true.
pub fn serve(gate: Arc<Gate>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&gate)));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(err = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%from, "too many connections; refused");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = permit;
                connection(gate, acceptor, tcp, from).await;
            });
        }
    });
}

async fn connection(
    gate: Arc<Gate>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(%from, err = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%from, "TLS handshake timed out");
            return;
        }
    };
    let chain = crate::identity::peer_chain(tls.get_ref().1);
    let trust = gate.identity.trust.clone();
    let peer = if chain.is_empty() {
        None
    } else {
        match trust.current().validate(
            &chain,
            PeerUsage::Client,
            &Requirements::default(),
            SystemTime::now(),
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::info!(%from, err = %e, "caller refused after the handshake");
                return;
            }
        }
    };
    let conn = Arc::new(Conn {
        peer: peer.clone().map(|p| (p, chain)),
    });
    let svc = {
        let gate = gate.clone();
        service_fn(move |req| {
            let gate = gate.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(gate, conn, req).await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().max_concurrent_streams(256);
    let served = builder.serve_connection(TokioIo::new(tls), svc);
    match peer {
        Some(p) => {
            tokio::select! {
                r = served => if let Err(e) = r { tracing::debug!(%from, err = %e, "connection ended") },
                why = trust.revoked(&p) => {
                    tracing::warn!(%from, peer = %p.spiffe_id, reason = %why, "caller revoked: connection closed");
                }
            }
        }
        None => {
            if let Err(e) = served.await {
                tracing::debug!(%from, err = %e, "connection ended");
            }
        }
    }
}
