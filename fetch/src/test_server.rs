//! A loopback HTTPS server with answers set by the test: a stand-in for a
//! kubelet or a cluster issuer. Its certificate is minted at start for
//! `127.0.0.1` and `localhost`; [`TestServer::ca_pem`] is what to trust.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, Answer>,
    bearer: Option<String>,
    hits: HashMap<String, usize>,
}

/// The running server; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestServer {
    /// Starts on `bind` (e.g. `127.0.0.1:0`).
    pub async fn start(bind: &str) -> std::io::Result<Self> {
        Self::start_for(bind, &["127.0.0.1", "localhost"]).await
    }

    /// Starts on `bind` with a certificate for `names` (host names or IP
    /// addresses).
    pub async fn start_for(bind: &str, names: &[&str]) -> std::io::Result<Self> {
        let err = |e: String| std::io::Error::other(e);
        let key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .map_err(|e| err(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| err(e.to_string()))?;
        let ca_pem = cert.pem();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| err(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let mut st = lock(&state);
                            let path = req.uri().path().to_owned();
                            *st.hits.entry(path.clone()).or_default() += 1;
                            let auth = req
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let answer = match &st.bearer {
                                Some(t) if auth.as_deref() != Some(&format!("Bearer {t}")) => {
                                    Answer {
                                        status: 401,
                                        body: b"Unauthorized".to_vec(),
                                    }
                                }
                                _ => st.answers.get(&path).cloned().unwrap_or(Answer {
                                    status: 404,
                                    body: b"404 page not found".to_vec(),
                                }),
                            };
                            drop(st);
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(answer.body)));
                            *resp.status_mut() = http::StatusCode::from_u16(answer.status)
                                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem,
            state,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The PEM of its (self-signed) certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Answers `GET path` with `status` and `body` from now on.
    pub fn set(&self, path: &str, status: u16, body: impl Into<Vec<u8>>) {
        lock(&self.state).answers.insert(
            path.to_owned(),
            Answer {
                status,
                body: body.into(),
            },
        );
    }

    /// Requires `Authorization: Bearer TOKEN` on every request (401
    /// otherwise).
    pub fn require_bearer(&self, token: &str) {
        lock(&self.state).bearer = Some(token.to_owned());
    }

    /// How many requests `path` had.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.state).hits.get(path).copied().unwrap_or(0)
    }
}
