//! A small HTTPS client for the few HTTP resources Lanyard uses: the
//! kubelet's pod list (agent), a cluster issuer's JWKS (server), and the
//! token and revocation endpoints of OAuth authorization servers (server,
//! a form POST). TLS by rustls against a CA file given by the operator,
//! the system's roots, or (where the operator says so) no verification:
//! kubelets often serve self-signed certificates. An optional bearer
//! token, a timeout on the whole exchange and a limit on the body. Plain
//! `http://` only to a loopback address, and only for a POST. Also a JSON
//! POST with headers of its own (the server's approval webhooks).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

/// Why a fetch failed. Each message names the URL's problem.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an `https://host[:port]/path` URL (or `http://` to a loopback
    /// address, for a POST).
    #[error("{0}: not an https:// URL")]
    BadUrl(String),
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {0}: {1}")]
    Ca(String, String),
    /// Connecting or the TLS handshake failed.
    #[error("{0}: {1}")]
    Connect(String, String),
    /// The exchange took longer than the timeout.
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// A status other than 200.
    #[error("{0}: HTTP {1}")]
    Status(String, u16),
    /// The body was longer than allowed, or broken.
    #[error("{0}: body: {1}")]
    Body(String, String),
}

/// How to reach one server.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_body: usize,
    /// The name the server's certificate must carry, when it is not the
    /// URL's host (a kubelet reached on 127.0.0.1 serves its node's name).
    server_name: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// Whom to trust.
#[derive(Debug, Clone)]
pub enum Trust {
    /// PEM certificates (the CA of the server's certificate).
    Pem(Vec<u8>),
    /// Exactly this DER certificate (a kubelet's self-signed serving
    /// certificate, read from its node), its handshake signature verified.
    Pinned(Vec<u8>),
    /// No verification of the server at all (development only; the
    /// operator's explicit choice).
    Insecure,
    /// The operating system's trusted roots.
    System,
}

/// An answer of any status (an OAuth error is a JSON body with a 400).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most the client's limit).
    pub body: Bytes,
}

impl Client {
    /// A client trusting `trust`, answering within `timeout` with at most
    /// `max_body` bytes.
    pub fn new(trust: Trust, timeout: Duration, max_body: usize) -> Result<Self, FetchError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Ca("(TLS)".into(), e.to_string()))?;
        let config = match trust {
            Trust::Pem(pem_bytes) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = pem::parse_many(&pem_bytes)
                    .map_err(|e| FetchError::Ca("PEM".into(), e.to_string()))?;
                for c in certs.iter().filter(|c| c.tag() == "CERTIFICATE") {
                    roots
                        .add(CertificateDer::from(c.contents().to_vec()))
                        .map_err(|e| FetchError::Ca("PEM".into(), e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(FetchError::Ca("PEM".into(), "no certificate in it".into()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pinned(der) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    lanyard_core::tls::PinnedCertVerifier::new(der),
                ))
                .with_no_client_auth(),
            Trust::System => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    // A root the platform holds but rustls cannot use is
                    // skipped, as every rustls client does.
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(FetchError::Ca(
                        "(system roots)".into(),
                        "the system holds no trusted root certificate".into(),
                    ));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    lanyard_core::tls::InsecureBootstrapVerifier::default(),
                ))
                .with_no_client_auth(),
        };
        Ok(Self {
            tls: Arc::new(config),
            timeout,
            max_body,
            server_name: None,
        })
    }

    /// Checks the server's certificate against `name` instead of the URL's
    /// host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// A client trusting the CA certificates in the PEM file at `path`.
    pub fn with_ca_file(
        path: &std::path::Path,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Self, FetchError> {
        let bytes = std::fs::read(path)
            .map_err(|e| FetchError::Ca(path.display().to_string(), e.to_string()))?;
        Self::new(Trust::Pem(bytes), timeout, max_body).map_err(|e| match e {
            FetchError::Ca(_, why) => FetchError::Ca(path.display().to_string(), why),
            other => other,
        })
    }

    /// `GET url` with `Authorization: Bearer TOKEN` when given; the body of
    /// a 200 answer.
    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Bytes, FetchError> {
        let a = self.send(url, bearer, None).await?;
        if a.status != 200 {
            return Err(FetchError::Status(url.to_owned(), a.status));
        }
        Ok(a.body)
    }

    /// `POST url` with `form` as `application/x-www-form-urlencoded`; the
    /// answer whatever its status. `http://` is accepted for a loopback
    /// address only.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Answer, FetchError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let post = Post {
            content_type: "application/x-www-form-urlencoded",
            body: Bytes::from(body),
            headers: vec![],
        };
        self.send(url, None, Some(post)).await
    }

    /// `POST url` with a JSON `body` and extra `headers` (names in lower
    /// case); the answer whatever its status. `http://` is accepted for a
    /// loopback address only.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Answer, FetchError> {
        let post = Post {
            content_type: "application/json",
            body: Bytes::from(body),
            headers,
        };
        self.send(url, None, Some(post)).await
    }

    async fn send(
        &self,
        url: &str,
        bearer: Option<&str>,
        form: Option<Post>,
    ) -> Result<Answer, FetchError> {
        tokio::time::timeout(self.timeout, self.send_inner(url, bearer, form))
            .await
            .map_err(|_| FetchError::Timeout(url.to_owned(), self.timeout))?
    }

    async fn send_inner(
        &self,
        url: &str,
        bearer: Option<&str>,
        form: Option<Post>,
    ) -> Result<Answer, FetchError> {
        let bad = || FetchError::BadUrl(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let host = uri.host().ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if form.is_some() && is_loopback(host) => false,
            _ => return Err(bad()),
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let connect = |e: String| FetchError::Connect(url.to_owned(), e);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| connect(e.to_string()))?;
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let mut req = match &form {
            Some(p) => http::Request::post(path).header(http::header::CONTENT_TYPE, p.content_type),
            None => http::Request::get(path),
        }
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match form {
            Some(p) => {
                for (name, value) in p.headers {
                    req = req.header(name, value);
                }
                p.body
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|_| bad())?;
        if tls {
            let name = ServerName::try_from(self.server_name.as_deref().unwrap_or(host).to_owned())
                .map_err(|_| bad())?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| connect(e.to_string()))?;
            self.exchange(url, TokioIo::new(stream), req).await
        } else {
            self.exchange(url, TokioIo::new(tcp), req).await
        }
    }

    async fn exchange<T>(
        &self,
        url: &str,
        io: T,
        req: http::Request<Full<Bytes>>,
    ) -> Result<Answer, FetchError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let connect = |e: String| FetchError::Connect(url.to_owned(), e);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| FetchError::Body(url.to_owned(), e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok(Answer { status, body })
    }
}

/// A POST's body and headers.
struct Post {
    content_type: &'static str,
    body: Bytes,
    headers: Vec<(&'static str, String)>,
}

/// Whether `host` names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(feature = "test-server")]
pub mod test_server;

#[cfg(test)]
mod tests;
