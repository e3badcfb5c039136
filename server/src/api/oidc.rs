//! OpenID Connect discovery over HTTP/1.1: the discovery document at
//! `…/.well-known/openid-configuration` and the JWT keys at `…/keys`, the
//! same set as the JWT bundle (every server's keys, prepared ones before
//! they sign), so verifiers outside SPIFFE (cloud workload identity
//! federation, Vault, any OIDC library) can check a JWT-SVID's signature,
//! `iss`, `aud` and `exp`. Read-only and unauthenticated, as discovery is;
//! HTTPS with a configured certificate (re-read when its files change) or
//! plain HTTP behind a TLS-terminating proxy. The paths are matched by
//! suffix, so a proxy may or may not strip the issuer URL's path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use lanyard_core::jwt::oidc::{DISCOVERY_PATH, JWKS_PATH, discovery_document, oidc_jwks};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::ca::Ca;
use crate::config::oidc::{OidcServe, OidcTransport};

/// Most connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A connection (TLS handshake, request and response) gets this long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Verifiers may cache the answers this long: keys are published well
/// before they sign (a prepared key is in the set from half its
/// predecessor's life), so a minute of caching never hides a signing key.
const CACHE_CONTROL: &str = "public, max-age=60";
/// How often the certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Why discovery could not be served.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The address could not be bound.
    #[error("OpenID Connect discovery on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The certificate or key is unusable.
    #[error("OpenID Connect discovery certificate {}: {message}", path.display())]
    Certificate {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Serves discovery for `issuer` on `serve.bind` until `shutdown` turns
/// true; returns the bound address.
pub async fn serve(
    serve: &OidcServe,
    issuer: &str,
    ca: Ca,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, OidcError> {
    let acceptor = match &serve.transport {
        OidcTransport::Tls { cert, key } => Some(tls_acceptor(cert, key)?),
        OidcTransport::PlainHttp => None,
    };
    let listener = tokio::net::TcpListener::bind(serve.bind)
        .await
        .map_err(|e| OidcError::Bind(serve.bind, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| OidcError::Bind(serve.bind, e))?;
    let document = Bytes::from(discovery_document(issuer).to_string());
    tracing::info!(%addr, issuer, https = acceptor.is_some(), "serving OpenID Connect discovery");
    crate::api::http1::serve(
        listener,
        acceptor,
        MAX_CONNECTIONS,
        CONNECTION_DEADLINE,
        shutdown,
        move |req| {
            let out = respond(&req, &document, &ca);
            async move { out }
        },
    );
    Ok(addr)
}

/// The answer to one request.
fn respond<B>(req: &hyper::Request<B>, document: &Bytes, ca: &Ca) -> hyper::Response<Full<Bytes>> {
    let method = req.method();
    if method != http::Method::GET && method != http::Method::HEAD {
        let mut r = text(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let path = req.uri().path().trim_end_matches('/');
    if path.ends_with(DISCOVERY_PATH) {
        return json(document.clone());
    }
    if path.ends_with(JWKS_PATH) {
        return match oidc_jwks(&ca.snapshot().jwt_authorities) {
            Ok(body) => json(Bytes::from(body)),
            Err(e) => {
                tracing::error!(error = %e, "JWT keys could not be encoded for discovery");
                text(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "the JWT keys could not be encoded\n",
                )
            }
        };
    }
    text(
        http::StatusCode::NOT_FOUND,
        "not found; discovery is at /.well-known/openid-configuration\n",
    )
}

fn json(body: Bytes) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static(CACHE_CONTROL),
    );
    r
}

fn text(status: http::StatusCode, body: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, OidcError> {
    file_acceptor(cert, key, &[b"http/1.1"])
}

/// A TLS acceptor serving the PEM certificate and key in these files
/// (read again when they change), offering `alpn`. Also the console's.
pub(crate) fn file_acceptor(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, OidcError> {
    let resolver = FileCert::load(cert, key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcError::Certificate {
            path: cert.to_owned(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A certificate and key read from PEM files, read again when either file
/// changes (a renewed certificate is served without a restart; a broken
/// renewal keeps the last good one and says so).
#[derive(Debug)]
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    current: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl FileCert {
    fn load(cert: &Path, key: &Path) -> Result<Self, OidcError> {
        let stamps = (modified(cert), modified(key));
        Ok(Self {
            state: Mutex::new(Loaded {
                current: read_certified_key(cert, key)?,
                stamps,
                checked: Instant::now(),
            }),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                state.stamps = stamps;
                match read_certified_key(&self.cert, &self.key) {
                    Ok(fresh) => {
                        tracing::info!(cert = %self.cert.display(), "discovery certificate reloaded");
                        state.current = fresh;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "discovery certificate not reloaded; serving the previous one");
                    }
                }
            }
        }
        Some(state.current.clone())
    }
}

fn read_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, OidcError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, message: String| OidcError::Certificate {
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "holds no CERTIFICATE block".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad(key, format!("does not match the certificate ({e})")))?;
    Ok(Arc::new(certified))
}
