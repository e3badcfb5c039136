//! The gateway's own identity, as any workload gets it: following the node
//! agent's Workload API (its SVID, the bundle, the CRLs) into live trust
//! for the Lanyard peer verifiers, and the SVID it presents (swapped on
//! rotation). The stream is followed again after the agent restarts. The
//! example tool server and client use it too.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use lanyard_core::TrustDomain;
use lanyard_core::peer::{LiveTrust, SvidResolver, TrustState};
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{X509svidRequest, X509svidResponse};

/// A request with the Workload API's security header.
pub fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// The certificate chain a TLS peer presented (DER, leaf first; empty when
/// it presented none).
pub fn peer_chain(conn: &rustls::CommonState) -> Vec<Vec<u8>> {
    conn.peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

/// The socket named by `SPIFFE_ENDPOINT_SOCKET`.
pub fn agent_socket() -> anyhow::Result<std::path::PathBuf> {
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET")
        .context("set SPIFFE_ENDPOINT_SOCKET, e.g. unix:///run/lanyard/agent/api.sock")?;
    Ok(lanyard_uds::socket_path(&endpoint))
}

/// This workload's identity as the agent serves it, kept current.
pub struct Identity {
    /// Bundle and CRLs, for the peer verifiers.
    pub trust: Arc<LiveTrust>,
    /// The default SVID (a task SVID while the process holds a task).
    pub key: Arc<SvidResolver>,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its DER chain, leaf first.
    pub chain: Arc<RwLock<Vec<Vec<u8>>>>,
    /// When the agent last answered (a fresh SVID or CRL): readiness.
    pub updated: Arc<RwLock<SystemTime>>,
}

/// Follows FetchX509SVID on `socket`: the first answer is awaited, later
/// ones (rotation, new CRLs) replace the state in the background.
pub async fn follow(socket: &Path, td: &str) -> anyhow::Result<Identity> {
    let mut stream = open(socket).await?;
    let first = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("FetchX509SVID: {:?}: {}", s.code(), s.message()))?
        .context("the agent closed the stream")?;
    let trust = LiveTrust::new(TrustState::new(TrustDomain::new(td)?, vec![]));
    let svid = first.svids.first().context("no SVID")?;
    let chain = lanyard_core::x509::der_chain_split(&svid.x509_svid)?;
    let key = SvidResolver::new(lanyard_core::tls::certified_key(
        &chain,
        &svid.x509_svid_key,
    )?);
    let chain = Arc::new(RwLock::new(chain));
    let apply = {
        let trust = trust.clone();
        let key = key.clone();
        let chain = chain.clone();
        move |m: X509svidResponse| -> anyhow::Result<()> {
            let svid = m.svids.first().context("no SVID")?;
            let authorities = lanyard_core::x509::der_chain_split(&svid.bundle)?;
            for e in trust.update_from_workload_api(authorities, &m.crl, SystemTime::now()) {
                tracing::warn!(err = %e, "a CRL from the agent was refused");
            }
            let c = lanyard_core::x509::der_chain_split(&svid.x509_svid)?;
            key.set(lanyard_core::tls::certified_key(&c, &svid.x509_svid_key)?);
            *chain.write().unwrap_or_else(|p| p.into_inner()) = c;
            Ok(())
        }
    };
    let spiffe_id = svid.spiffe_id.clone();
    let updated = Arc::new(RwLock::new(SystemTime::now()));
    apply(first)?;
    let socket = socket.to_owned();
    let stamp = updated.clone();
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        backoff = std::time::Duration::from_millis(200);
                        match apply(m) {
                            Ok(()) => {
                                *stamp.write().unwrap_or_else(|p| p.into_inner()) =
                                    SystemTime::now()
                            }
                            Err(e) => {
                                tracing::warn!(err = %format!("{e:#}"), "an update from the agent was not applied")
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(s) => {
                        tracing::warn!(code = ?s.code(), msg = s.message(), "identity stream ended");
                        break;
                    }
                }
            }
            // Follow again (the agent restarted, or the stream was cut).
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                match open(&socket).await {
                    Ok(s) => {
                        stream = s;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(err = %format!("{e:#}"), "cannot follow the Workload API yet")
                    }
                }
            }
        }
    });
    Ok(Identity {
        trust,
        key,
        spiffe_id,
        chain,
        updated,
    })
}

async fn open(socket: &Path) -> anyhow::Result<tonic::Streaming<X509svidResponse>> {
    let ch = lanyard_uds::unix_channel(socket)?;
    Ok(SpiffeWorkloadApiClient::new(ch)
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .map_err(|s| anyhow::anyhow!("FetchX509SVID: {:?}: {}", s.code(), s.message()))?
        .into_inner())
}
