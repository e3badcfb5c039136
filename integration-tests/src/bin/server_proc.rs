//! `lanyard-server run` as a process of this package, so that end-to-end
//! tests can run several servers and kill one with SIGKILL. Same code path
//! as the real binary's `run`.

use std::process::ExitCode;

use clap::Parser;
use lanyard_server::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        // The admin commands, as the real binary runs them.
        cmd => {
            return match lanyard_server::cli::run_admin(cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if !e.message.is_empty() {
                        eprintln!("error: {}", e.message);
                    }
                    ExitCode::from(e.exit)
                }
            };
        }
    };
    let result: anyhow::Result<()> = async {
        let config = args.raw_config()?.validate()?;
        let bound = lanyard_server::build(config).await?;
        bound
            .run_until(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
