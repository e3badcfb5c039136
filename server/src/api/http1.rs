//! A small HTTP/1.1 server loop shared by the server's web endpoints
//! (OpenID Connect discovery, the operator console): bounded connections,
//! each with a deadline, over TLS when an acceptor is given, until
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};

/// Serves `listener` with `handle` until `shutdown` changes: at most
/// `max_connections` at once (more wait in the kernel's backlog), each
/// given `deadline` for its handshake, requests and answers.
pub fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    deadline: Duration,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let Ok((tcp, _)) = accepted else {
                // Out of descriptors, say: let the others finish first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (handle, acceptor) = (handle.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let served = async {
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => {
                                let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        },
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                };
                let _ = tokio::time::timeout(deadline, served).await;
            });
        }
    });
}
