//! gRPC channels to the server over rustls mTLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper_util::rt::TokioIo;
use lanyard_proto::server::node_client::NodeClient;
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The server address is invalid.
    #[error("invalid server address {0:?}: {1}")]
    Address(String, String),
}

/// A TLS 1.3 client configuration with ALPN h2.
pub fn tls_config(
    verifier: Arc<dyn ServerCertVerifier>,
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_cert {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The server addresses in `servers`: `host:port`, comma-separated.
pub fn server_list(servers: &str) -> Result<Vec<String>, ClientError> {
    let list: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err(ClientError::Address(
            servers.to_owned(),
            "no server address".into(),
        ));
    }
    Ok(list)
}

/// How long one server address gets to accept a TCP connection before the
/// next is tried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A lazily connecting Node API client for `servers` (`host:port`, several
/// comma-separated). Every (re)connection starts with the server that
/// answered last (at first, one picked at random, which spreads agents
/// over the servers) and moves on to the next when it does not answer: an
/// agent whose server goes away reconnects to another one.
pub fn node_client(
    servers: &str,
    tls: Arc<ClientConfig>,
) -> Result<NodeClient<Channel>, ClientError> {
    node_client_with(servers, tls, crate::upstream::dns::ServerResolver::system())
}

/// [`node_client`] resolving server names with `resolver`.
pub fn node_client_with(
    servers: &str,
    tls: Arc<ClientConfig>,
    resolver: Arc<crate::upstream::dns::ServerResolver>,
) -> Result<NodeClient<Channel>, ClientError> {
    let addrs = Arc::new(server_list(servers)?);
    let first = addrs.first().cloned().unwrap_or_default();
    let endpoint = Endpoint::try_from(format!("http://{first}"))
        .map_err(|e| ClientError::Address(servers.to_owned(), e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT * 4 * u32::try_from(addrs.len()).unwrap_or(1))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let mut seed = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut seed);
    let current = Arc::new(AtomicUsize::new(
        usize::try_from(u64::from_le_bytes(seed) % addrs.len() as u64).unwrap_or(0),
    ));
    let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let (addrs, current, connector, resolver) = (
            addrs.clone(),
            current.clone(),
            connector.clone(),
            resolver.clone(),
        );
        async move {
            let start = current.load(Ordering::Relaxed);
            let mut last_err = None;
            for i in 0..addrs.len() {
                let idx = (start + i) % addrs.len();
                let addr = &addrs[idx];
                match connect_one(addr, &connector, &resolver).await {
                    Ok(tls) => {
                        if current.swap(idx, Ordering::Relaxed) != idx || i > 0 {
                            tracing::info!(server = %addr, "connected to server");
                        }
                        return Ok::<_, std::io::Error>(TokioIo::new(tls));
                    }
                    Err(e) => {
                        if addrs.len() > 1 {
                            tracing::warn!(server = %addr, error = %e, "server not answering; trying the next");
                        }
                        last_err = Some(e);
                    }
                }
            }
            Err(last_err.unwrap_or_else(|| std::io::Error::other("no server address")))
        }
    }));
    Ok(NodeClient::new(channel))
}

/// A TCP connection to one of the addresses `addr` names: each is tried in
/// turn; when none answers, the name is resolved afresh and tried once more.
async fn connect_tcp(
    addr: &str,
    resolver: &crate::upstream::dns::ServerResolver,
) -> std::io::Result<TcpStream> {
    let mut last_err = None;
    for fresh in [false, true] {
        let candidates = resolver.addresses(addr, fresh).await?;
        for a in &candidates {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
                Ok(Ok(tcp)) => {
                    resolver.used(addr, *a);
                    return Ok(tcp);
                }
                Ok(Err(e)) => {
                    tracing::debug!(server = %addr, address = %a, error = %e, "address not answering");
                    last_err = Some(e);
                }
                Err(_) => {
                    tracing::debug!(server = %addr, address = %a, "connect timed out");
                    last_err = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {a} timed out"),
                    ));
                }
            }
        }
        if candidates.len() == 1 && addr.parse::<std::net::SocketAddr>().is_ok() {
            break;
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no address")))
}

async fn connect_one(
    addr: &str,
    connector: &TlsConnector,
    resolver: &crate::upstream::dns::ServerResolver,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_tcp(addr, resolver).await?;
    let _ = tcp.set_nodelay(true);
    // SPIFFE authenticates the server by SPIFFE ID, not by name; the name
    // only fills SNI.
    let name = ServerName::try_from("lanyard-server")
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Whether `status` says the server does not have the RPC behind
/// `feature` (`Unimplemented`: an older server during a rolling upgrade).
/// The agent then treats the feature as off: it says so once per feature
/// (at warn), and the caller neither retries nor treats it as an error.
pub fn server_lacks(status: &tonic::Status, feature: &'static str) -> bool {
    if status.code() != tonic::Code::Unimplemented {
        return false;
    }
    static SAID: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !said.contains(&feature) {
        said.push(feature);
        tracing::warn!(
            feature,
            "the server does not offer this (an older version, during an upgrade?); it is off until the server is upgraded"
        );
    }
    true
}

#[cfg(test)]
mod lacks_tests {
    use super::*;

    #[test]
    fn only_unimplemented_means_the_feature_is_off() {
        assert!(server_lacks(
            &tonic::Status::unimplemented("x"),
            "a feature"
        ));
        assert!(server_lacks(
            &tonic::Status::unimplemented("x"),
            "a feature"
        ));
        assert!(!server_lacks(&tonic::Status::unavailable("x"), "a feature"));
        assert!(!server_lacks(
            &tonic::Status::permission_denied("x"),
            "a feature"
        ));
    }
}
