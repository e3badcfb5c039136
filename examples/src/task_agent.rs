//! An AI agent process in Rust that works inside a Lanyard task: it begins
//! a task on its node agent, then uses the task SVID through the standard
//! `spiffe` crate (while the task runs it is the default SVID, so any
//! SPIFFE-aware library picks it up), prints the task claims it carries,
//! and ends the task.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/agent/api.sock \
//!   cargo run -p lanyard-examples --bin task-agent -- report.generate crm.read email.send
//! ```

use std::time::Duration;

use anyhow::Context;
use lanyard_core::TaskClaims;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{BeginTaskRequest, EndTaskRequest};
use spiffe::X509Source;

fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

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
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET")
        .context("set SPIFFE_ENDPOINT_SOCKET, e.g. unix:///run/lanyard/agent/api.sock")?;
    let mut args = std::env::args().skip(1);
    let task_type = args.next().unwrap_or_else(|| "report.generate".into());
    let tools: Vec<String> = args.collect();

    let channel = lanyard_uds::unix_channel(&lanyard_uds::socket_path(&endpoint))?;
    let mut tasks = TaskIdentityClient::new(channel);
    let begun = tasks
        .begin_task(header(BeginTaskRequest {
            task_type,
            tools,
            ttl_seconds: 300,
            intent: "example task from the Rust task agent".into(),
            ..Default::default()
        }))
        .await
        .map_err(|s| anyhow::anyhow!("BeginTask: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!("task {} granted {:?}", begun.task_id, begun.granted_tools);
    for d in &begun.denied {
        println!("  denied {}: {}", d.tool, d.reason);
    }

    // Any SPIFFE client now sees the task SVID first.
    let source = X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .context("connecting the X509Source")?;
    let want = format!("task:{}", begun.task_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let svid = loop {
        let svid = source.svid()?;
        if svid.hint() == Some(want.as_str()) {
            break svid;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the task SVID did not become the default SVID"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let claims = TaskClaims::from_x509(svid.cert_chain()[0].as_bytes())?
        .context("the default SVID carries no task claims")?;
    println!("default SVID: {} ({})", svid.spiffe_id(), want);
    println!(
        "  task type {}, tools {:?}, sensitivity {}, grant digest {}",
        claims.task_type,
        claims.tools,
        claims.data_sensitivity,
        hex::encode(claims.grant_digest)
    );

    tasks
        .end_task(header(EndTaskRequest {
            task_id: begun.task_id.clone(),
        }))
        .await
        .map_err(|s| anyhow::anyhow!("EndTask: {}", s.message()))?;
    println!("task {} ended", begun.task_id);
    Ok(())
}
