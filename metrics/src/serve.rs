//! `GET /metrics` over plain HTTP/1.1 on the metrics address.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::Metrics;

/// OpenMetrics text, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `metrics` on `bind` until `shutdown` turns true; returns the
/// bound address.
pub async fn serve(
    bind: SocketAddr,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let Ok((tcp, _)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let mut resp = if req.method() == http::Method::GET
                            && req.uri().path() == "/metrics"
                        {
                            let mut r =
                                hyper::Response::new(Full::new(Bytes::from(metrics.render())));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(CONTENT_TYPE),
                            );
                            r
                        } else {
                            hyper::Response::new(Full::new(Bytes::from_static(
                                b"not found; metrics are at /metrics\n",
                            )))
                        };
                        if req.uri().path() != "/metrics" || req.method() != http::Method::GET {
                            *resp.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
            });
        }
    });
    Ok(addr)
}
