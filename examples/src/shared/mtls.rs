//! What the example tool server and client share: following the agent's
//! Workload API (own SVID, bundle, CRLs) into live trust for the Lanyard
//! peer verifiers, and the SVID it presents (swapped on rotation).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use lanyard_core::TrustDomain;
use lanyard_core::peer::{LiveTrust, SvidResolver, TrustState};
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

pub fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
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
}

/// Follows FetchX509SVID on `socket`: the first answer is awaited, later
/// ones (rotation, new CRLs) replace the state in the background.
pub async fn follow(socket: &Path, td: &str) -> anyhow::Result<Identity> {
    let ch = lanyard_uds::unix_channel(socket)?;
    let mut stream = SpiffeWorkloadApiClient::new(ch)
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .map_err(|s| anyhow::anyhow!("FetchX509SVID: {:?}: {}", s.code(), s.message()))?
        .into_inner();
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
        move |m: lanyard_proto::workload::X509svidResponse| -> anyhow::Result<()> {
            let svid = m.svids.first().context("no SVID")?;
            let authorities = lanyard_core::x509::der_chain_split(&svid.bundle)?;
            for e in trust.update_from_workload_api(authorities, &m.crl, SystemTime::now()) {
                eprintln!("warning: a CRL from the agent was refused: {e}");
            }
            let c = lanyard_core::x509::der_chain_split(&svid.x509_svid)?;
            key.set(lanyard_core::tls::certified_key(&c, &svid.x509_svid_key)?);
            *chain.write().unwrap_or_else(|p| p.into_inner()) = c;
            Ok(())
        }
    };
    let spiffe_id = svid.spiffe_id.clone();
    apply(first)?;
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if let Err(e) = apply(m) {
                        eprintln!("warning: {e:#}");
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    eprintln!("identity stream ended: {:?}: {}", s.code(), s.message());
                    return;
                }
            }
        }
    });
    Ok(Identity {
        trust,
        key,
        spiffe_id,
        chain,
    })
}
