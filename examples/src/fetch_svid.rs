//! A workload that knows nothing about Lanyard: it uses the standard
//! `spiffe` crate to fetch its X.509-SVID from the Workload API named by
//! `SPIFFE_ENDPOINT_SOCKET`, and prints it.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock cargo run -p lanyard-examples --bin fetch-svid
//! ```

use std::time::Duration;

use anyhow::Context;
use spiffe::{WorkloadApiClient, X509Source};
use x509_parser::prelude::{FromDer, X509Certificate};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET")
        .context("set SPIFFE_ENDPOINT_SOCKET, e.g. unix:///run/lanyard/agent/api.sock")?;

    // One-shot fetch with the Workload API client.
    let client = WorkloadApiClient::connect_to(&endpoint)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let svid = tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_svid())
        .await
        .context("timed out waiting for an SVID")?
        .context("fetching X.509-SVID")?;
    let leaf = svid.leaf().as_bytes();
    let (_, cert) = X509Certificate::from_der(leaf).context("parsing the leaf")?;
    println!("workload SPIFFE ID : {}", svid.spiffe_id());
    println!(
        "certificate chain  : {} certificate(s)",
        svid.cert_chain().len()
    );
    println!(
        "serial             : {}",
        cert.tbs_certificate.raw_serial_as_string()
    );
    println!("valid from         : {}", cert.validity().not_before);
    println!("valid until        : {}", cert.validity().not_after);

    // The long-lived source most services use: kept fresh by the agent's
    // stream as SVIDs rotate.
    let source = X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .context("starting X509Source")?;
    let bundles = source.bundle_set().context("reading bundles")?;
    for (td, bundle) in bundles.iter() {
        println!(
            "trust bundle       : {td} with {} CA certificate(s)",
            bundle.authorities().len()
        );
    }
    source.shutdown().await;
    Ok(())
}
