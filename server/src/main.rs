use std::process::ExitCode;

use clap::Parser;
use lanyard_server::cli::{Cli, Command};
use lanyard_server::config::LogFormat;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Run(args) => {
            async {
                let config = args.raw_config()?.validate()?;
                init_tracing(config.log_format);
                tracing::info!(?config, "configuration");
                let bound = lanyard_server::build(config).await?;
                bound.run_until(shutdown_signal()).await;
                Ok(())
            }
            .await
        }
        Command::Datastore(cmd) => lanyard_server::cli::datastore::run(cmd)
            .await
            .map_err(Into::into),
        cmd => lanyard_server::cli::run_admin(cmd)
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<lanyard_server::cli::CliError>() {
            Some(c) => {
                if !c.message.is_empty() {
                    eprintln!("error: {}", c.message);
                }
                ExitCode::from(c.exit)
            }
            None => {
                eprintln!("error: {}", lanyard_core::error::report(e.as_ref()));
                ExitCode::FAILURE
            }
        },
    }
}
