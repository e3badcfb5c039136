//! Helpers for the containerised end-to-end run (`scripts/e2e-docker.sh`),
//! shipped in the test image beside the real binaries:
//!
//! - `kubelet --bind ADDR --name HOST --pods FILE --token-file FILE --ca-out FILE`:
//!   a kubelet stand-in serving `GET /pods` (the file, re-read on each
//!   request) over HTTPS with a certificate for HOST, wanting the bearer
//!   token in the token file; writes its CA certificate to `--ca-out`.
//! - `idle`: sleeps until killed (a workload container's main process;
//!   the image has no shell).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("idle") => loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        },
        Some("kubelet") => match kubelet(&args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: lanyard_e2e kubelet --bind ADDR --name HOST --pods FILE --token-file FILE --ca-out FILE | idle"
            );
            ExitCode::from(2)
        }
    }
}

async fn kubelet(args: &[String]) -> Result<(), String> {
    let need = |n: &str| arg(args, n).ok_or_else(|| format!("{n} is required"));
    let bind = need("--bind")?;
    let name = need("--name")?;
    let pods = PathBuf::from(need("--pods")?);
    let token =
        std::fs::read_to_string(need("--token-file")?).map_err(|e| format!("token file: {e}"))?;
    let srv = lanyard_fetch::test_server::TestServer::start_for(&bind, &[&name, "localhost"])
        .await
        .map_err(|e| e.to_string())?;
    srv.require_bearer(token.trim());
    std::fs::write(need("--ca-out")?, srv.ca_pem()).map_err(|e| format!("--ca-out: {e}"))?;
    eprintln!("kubelet stand-in on {} for {name}", srv.addr());
    loop {
        match std::fs::read(&pods) {
            Ok(body) => srv.set("/pods", 200, body),
            Err(e) => eprintln!("pods file: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
