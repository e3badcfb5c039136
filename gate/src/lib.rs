//! lanyard-gate: the gateway in front of AI agents' tools. It runs beside a
//! node agent as an enforcement point, with its own SVID; callers present
//! their task SVID (mutual TLS) or a task JWT-SVID; every MCP `tools/call`
//! and every routed HTTP request is decided by the node agent, forwarded
//! with the upstream credential of the caller's task (the caller never sees
//! it), and recorded once with its outcome.

pub mod admin;
pub mod agent;
pub mod body;
pub mod caller;
pub mod cli;
pub mod config;
pub mod ext_authz;
pub mod front;
pub mod identity;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod recorder;
pub mod routes;
pub mod service;
pub mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Flags};
use crate::state::{Gate, Live};

/// A started gateway.
pub struct Running {
    /// The callers' address.
    pub addr: SocketAddr,
    /// The operator endpoint's address.
    pub admin: Option<SocketAddr>,
    /// The gateway.
    pub gate: Arc<Gate>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Stops accepting.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Follows the agent's Workload API until it answers (a gateway started
/// with its node agent waits for it), at most `patience`.
async fn own_identity(config: &Config, patience: Duration) -> anyhow::Result<identity::Identity> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = Duration::from_millis(200);
    loop {
        match identity::follow(&config.agent_socket, &config.trust_domain).await {
            Ok(id) => return Ok(id),
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(socket = %config.agent_socket.display(), err = %format!("{e:#}"), "no SVID from the node agent yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "no SVID from the node agent at {} (is it running, and does an entry match this process?)",
                    config.agent_socket.display()
                )));
            }
        }
    }
}

/// Starts a gateway on `config` (`source`: the file, for reloads).
pub async fn start(
    config: Config,
    source: Option<(PathBuf, Flags)>,
    patience: Duration,
) -> anyhow::Result<Running> {
    let identity = own_identity(&config, patience).await?;
    tracing::info!(spiffe_id = %identity.spiffe_id, "gateway identity from the node agent");
    let agent = agent::Agent::new(&config.agent_socket)?;
    let registry = lanyard_metrics::Metrics::default();
    let metrics = metrics::GateMetrics::new(registry);
    let listen = config.listen;
    let admin_listen = config.admin_listen;
    let live = Live::new(config)?;
    let gate = Arc::new(Gate::new(live, agent, identity, metrics, source));
    let (stop, stopped) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    listener::serve(gate.clone(), listener, stopped.clone());
    let live = gate.live();
    if let Some(sock) = &live.config.ext_authz_socket {
        ext_authz::serve(
            gate.clone(),
            sock,
            live.config.ext_authz_uids.clone(),
            stopped.clone(),
        )
        .await?;
        tracing::info!(socket = %sock.display(), "serving Envoy external authorization");
    }
    let admin = match admin_listen {
        Some(a) => Some(
            admin::serve(a, gate.clone(), stopped.clone())
                .await
                .map_err(|e| anyhow::anyhow!("admin_listen {a}: {e}"))?,
        ),
        None => None,
    };
    tracing::info!(%addr, admin = ?admin, upstreams = gate.live().config.upstreams.len(), "lanyard-gate serving");
    Ok(Running {
        addr,
        admin,
        gate,
        stop,
    })
}
