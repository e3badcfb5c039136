//! The command line: `lanyard-gate run --config FILE [--socket
//! AGENT_SOCKET]` runs the gateway; `lanyard-gate check --config FILE`
//! checks a configuration and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Config, Flags};
use clap::{Parser, Subcommand};
use lanyard_core::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "lanyard-gate",
    version,
    about = "The gateway in front of AI agents' tools: every call decided, recorded and credentialed in the path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The TOML configuration (see docs/gateway.md).
    #[arg(long, env = "LANYARD_GATE_CONFIG")]
    config: PathBuf,
    /// The node agent's socket [default: agent_socket, else
    /// $SPIFFE_ENDPOINT_SOCKET, else /run/lanyard/agent/api.sock].
    #[arg(long)]
    socket: Option<String>,
    /// Where callers connect (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// /metrics, /healthz, /readyz (overrides `admin_listen`).
    #[arg(long)]
    admin_listen: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (SIGHUP reloads the upstreams from the file).
    Run(Common),
    /// Checks the configuration and prints what it serves.
    Check(Common),
}

impl Common {
    fn load(&self) -> Result<(Config, Flags), String> {
        let flags = Flags {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            socket: self.socket.clone(),
        };
        Config::load(&self.config, &flags)
            .map(|c| (c, flags))
            .map_err(|e| e.to_string())
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Plain => b.init(),
    }
}

/// The process: parses the command line, runs, and says how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, run) = match &cli.command {
        Command::Run(c) => (c, true),
        Command::Check(c) => (c, false),
    };
    let (config, flags) = match common.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !run {
        println!(
            "listen {} (admin {:?}), agent socket {}",
            config.listen,
            config.admin_listen,
            config.agent_socket.display()
        );
        for u in &config.upstreams {
            println!(
                "upstream {} ({:?}) at {} -> {}",
                u.name, u.kind, u.path, u.url
            );
        }
        return ExitCode::SUCCESS;
    }
    init_tracing(config.log_format);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = common.config.clone();
    rt.block_on(async move {
        // Handlers first: a SIGHUP that arrives while the gateway starts (a
        // reload sent as soon as it is listening) must not kill it, which
        // is what a hangup does to a process that handles none.
        let (Ok(mut hup), Ok(mut term)) = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        ) else {
            eprintln!("error: cannot handle signals");
            return ExitCode::FAILURE;
        };
        let running = match crate::start(config, Some((path, flags)), Duration::from_secs(60)).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        // Printed for scripts that start it on port 0.
        println!("lanyard-gate listening on {}", running.addr);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(e) = running.gate.reload() {
                        tracing::error!(err = %format!("{e:#}"), "reload refused; the configuration in force stays");
                    }
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        running.stop();
        tracing::info!("lanyard-gate stopped");
        ExitCode::SUCCESS
    })
}
