//! The `lanyard-agent` process around the library: logging, the
//! descriptor limit, the runtime, signals and the exit status. The binary
//! is this and its allocator.

use std::process::ExitCode;

use clap::Parser;

use super::{Cli, CliError, Command, RunArgs, run_client};
use crate::config::LogFormat;

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

/// Raises the soft descriptor limit so the connection limits, not the
/// kernel, decide when a caller is refused. Each connection holds its
/// socket, a pidfd and a /proc/PID directory: `max_connections` needs
/// 3 x it + 1024 descriptors. A default that does not fit the hard limit
/// is lowered to fit (said at info); only a configured value that does not
/// fit is warned about.
fn fit_fd_limit(config: &mut crate::Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = |conns: usize| (conns as u64).saturating_mul(3).saturating_add(1024);
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(?e, "cannot read the descriptor limit");
            return;
        }
    };
    let limits = &mut config.limits;
    if hard < need(limits.max_connections) {
        if limits.max_connections_default {
            let fits = usize::try_from(hard.saturating_sub(1024) / 3)
                .unwrap_or(usize::MAX)
                .max(1);
            tracing::info!(
                hard,
                max_connections = fits,
                "max_connections lowered from its default to fit the descriptor limit"
            );
            limits.max_connections = fits;
            limits.max_connections_per_caller = limits.max_connections_per_caller.min(fits);
        } else {
            tracing::warn!(
                hard,
                max_connections = limits.max_connections,
                "descriptor limit is below 3 x max_connections + 1024; lower max_connections or raise LimitNOFILE"
            );
        }
    }
    let target = need(limits.max_connections).min(hard);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_err() {
        tracing::warn!(soft, hard, "cannot raise the descriptor limit");
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// A multi-threaded runtime, with `workers` threads when given (else one
/// per CPU).
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// Runs the agent on a runtime with the configured worker threads.
fn run(args: &RunArgs) -> anyhow::Result<()> {
    let raw = args.raw_config()?;
    let workers = raw.worker_threads()?;
    runtime(workers)?.block_on(async {
        let mut config = raw.validate()?;
        init_tracing(config.log_format);
        fit_fd_limit(&mut config);
        tracing::info!(?config, ?workers, "configuration");
        let bound = crate::build(config).await?;
        bound.run_until(shutdown_signal()).await;
        Ok(())
    })
}

/// The whole `lanyard-agent` process: parses the command line, runs the
/// command and turns its error into a one-line message and an exit status.
pub fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Run(args) => run(&args),
        cmd => runtime(None)
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run_client(cmd)).map_err(Into::into)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<CliError>() {
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
