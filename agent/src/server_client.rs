//! gRPC channels to the server over rustls mTLS.

use std::sync::Arc;

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

/// A lazily connecting Node API client for `server` (`host:port`).
pub fn node_client(
    server: &str,
    tls: Arc<ClientConfig>,
) -> Result<NodeClient<Channel>, ClientError> {
    let addr = server.to_owned();
    let endpoint = Endpoint::try_from(format!("http://{server}"))
        .map_err(|e| ClientError::Address(server.to_owned(), e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let addr = addr.clone();
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            let _ = tcp.set_nodelay(true);
            // SPIFFE authenticates the server by SPIFFE ID, not by name; the
            // name only fills SNI.
            let name = ServerName::try_from("lanyard-server")
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }));
    Ok(NodeClient::new(channel))
}
