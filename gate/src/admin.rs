//! The operator's endpoint (plain HTTP, keep it private): `/metrics`
//! (OpenMetrics), `/healthz` (the process serves), `/readyz` (it holds a
//! valid SVID of its own, so callers can connect).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::body::full;
use crate::state::Gate;

fn ready(gate: &Gate) -> Result<(), String> {
    let chain = gate
        .identity
        .chain
        .read()
        .unwrap_or_else(|p| p.into_inner());
    let leaf = chain.first().ok_or("no SVID")?;
    let info = lanyard_core::x509::CertInfo::parse(leaf).map_err(|e| e.to_string())?;
    if info.not_after <= SystemTime::now() {
        return Err("the gateway's SVID has expired (is the node agent running?)".into());
    }
    Ok(())
}

/// Serves the endpoint on `bind` until `stop`; returns the bound address.
pub async fn serve(
    bind: SocketAddr,
    gate: Arc<Gate>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let gate = gate.clone();
                    async move {
                        let (status, ct, body) = match (req.method(), req.uri().path()) {
                            (&http::Method::GET, "/metrics") => (
                                http::StatusCode::OK,
                                lanyard_metrics::CONTENT_TYPE,
                                gate.metrics.registry.render(),
                            ),
                            (&http::Method::GET, "/healthz") => {
                                (http::StatusCode::OK, "text/plain", "ok\n".to_owned())
                            }
                            (&http::Method::GET, "/readyz") => match ready(&gate) {
                                Ok(()) => {
                                    (http::StatusCode::OK, "text/plain", "ready\n".to_owned())
                                }
                                Err(e) => (
                                    http::StatusCode::SERVICE_UNAVAILABLE,
                                    "text/plain",
                                    format!("{e}\n"),
                                ),
                            },
                            _ => (
                                http::StatusCode::NOT_FOUND,
                                "text/plain",
                                "see /metrics, /healthz, /readyz\n".to_owned(),
                            ),
                        };
                        let mut r = http::Response::new(full(body));
                        *r.status_mut() = status;
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(ct),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
