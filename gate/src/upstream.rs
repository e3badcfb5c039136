//! Reaching the tool servers: one pooled HTTP client per upstream (TLS
//! verified against its CA file or the system's roots), the request the
//! gateway sends (the caller's, cleaned of hop-by-hop headers, of its own
//! `Authorization` and of every header the gateway injects, then carrying
//! the upstream credential), and a timeout on the answer.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, BoxError};
use crate::config::{Inject, Upstream};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The clients, by upstream name.
pub struct Clients(HashMap<String, HttpsClient>);

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No answer within the timeout.
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// Connecting, TLS or the exchange failed.
    #[error("upstream {0}: {1}")]
    Failed(String, String),
    /// The request could not be built.
    #[error("upstream {0}: {1}")]
    Request(String, String),
}

fn roots(u: &Upstream) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match &u.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("upstream {}: ca_file {}: {e}", u.name, path.display())
            })?;
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| {
                    anyhow::anyhow!("upstream {}: ca_file {}: {e}", u.name, path.display())
                })?;
                roots.add(c).map_err(|e| {
                    anyhow::anyhow!("upstream {}: ca_file {}: {e}", u.name, path.display())
                })?;
            }
            if roots.is_empty() {
                anyhow::bail!(
                    "upstream {}: ca_file {}: no certificate",
                    u.name,
                    path.display()
                );
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

impl Clients {
    /// A client per upstream.
    pub fn new(upstreams: &[Upstream]) -> anyhow::Result<Self> {
        let mut out = HashMap::new();
        for u in upstreams {
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots(u)?)
                .with_no_client_auth();
            // Small requests and answers go out at once (no Nagle delay
            // waiting for the peer's delayed ACK).
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https);
            out.insert(u.name.clone(), client);
        }
        Ok(Self(out))
    }

    /// Sends `req` to `u` and waits for the answer's head.
    pub async fn send(
        &self,
        u: &Upstream,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let client = self.0.get(&u.name).ok_or_else(|| {
            UpstreamError::Request(u.name.clone(), "no client (reloading?)".into())
        })?;
        let resp = tokio::time::timeout(u.timeout, client.request(req))
            .await
            .map_err(|_| UpstreamError::Timeout(u.name.clone(), u.timeout))?
            .map_err(|e| UpstreamError::Failed(u.name.clone(), error_chain(&e)))?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(http::Response::from_parts(
            parts,
            body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
        ))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        h.remove(n);
    }
    h.remove(http::header::TRANSFER_ENCODING);
}

/// The request to send upstream.
pub struct Outgoing<'a> {
    /// Where.
    pub upstream: &'a Upstream,
    /// The path after the gateway's prefix (empty for MCP).
    pub rest: &'a str,
    /// The caller's query string.
    pub query: Option<&'a str>,
    /// Its method.
    pub method: http::Method,
    /// Its headers (cleaned here).
    pub headers: http::HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The upstream credential, when the upstream has one.
    pub credential: Option<String>,
}

impl Outgoing<'_> {
    /// The request, cleaned and credentialed.
    pub fn build(self) -> Result<http::Request<Full<Bytes>>, UpstreamError> {
        let u = self.upstream;
        let bad = |e: String| UpstreamError::Request(u.name.clone(), e);
        let base = u.url.path().trim_end_matches('/');
        let path = match self.rest {
            "" => u.url.path().to_owned(),
            r => format!("{base}{r}"),
        };
        let inject = u.credential.as_ref().map(|c| &c.inject);
        let mut query: Vec<(String, String)> = self
            .query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if let Some(Inject::Query(name)) = inject {
            // The caller's own value for the injected parameter never
            // reaches the upstream.
            query.retain(|(k, _)| k != name);
            if let Some(cred) = &self.credential {
                query.push((name.clone(), cred.clone()));
            }
        }
        let mut pq = path;
        if !query.is_empty() {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &query {
                ser.append_pair(k, v);
            }
            pq.push('?');
            pq.push_str(&ser.finish());
        } else if let Some(q) = self.query.filter(|_| inject.is_none()) {
            pq = format!("{pq}?{q}");
        }
        let uri = http::Uri::builder()
            .scheme(u.url.scheme_str().unwrap_or("http"))
            .authority(
                u.url
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .unwrap_or_default(),
            )
            .path_and_query(pq)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut headers = self.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::HOST);
        headers.remove(http::header::CONTENT_LENGTH);
        // The caller's credential for the gateway is not the upstream's.
        headers.remove(http::header::AUTHORIZATION);
        if let Some(Inject::Header { name, prefix }) = inject {
            headers.remove(name);
            if let Some(cred) = &self.credential {
                let v = http::HeaderValue::from_str(&format!("{prefix}{cred}"))
                    .map_err(|_| bad("the credential is not a valid header value".into()))?;
                headers.insert(name.clone(), v);
            }
        }
        let mut req = http::Request::builder()
            .method(self.method)
            .uri(uri)
            .body(Full::new(self.body))
            .map_err(|e| bad(e.to_string()))?;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

#[cfg(test)]
mod tests;
