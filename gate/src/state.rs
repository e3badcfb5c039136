//! What the gateway holds while it runs: the configuration in force (with
//! its upstream clients and static credentials, swapped whole on reload),
//! the node agent, its own identity, the MCP session bindings and the
//! metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::agent::Agent;
use crate::config::{Config, CredentialSource, Flags};
use crate::identity::Identity;
use crate::mcp::sessions::Sessions;
use crate::metrics::GateMetrics;
use crate::upstream::Clients;

/// The configuration in force.
pub struct Live {
    /// The checked configuration.
    pub config: Config,
    /// A client per upstream.
    pub clients: Clients,
    /// Static upstream credentials, by upstream name.
    pub statics: HashMap<String, String>,
}

impl Live {
    /// Builds the clients and reads the static credentials of `config`.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let clients = Clients::new(&config.upstreams)?;
        let mut statics = HashMap::new();
        for u in &config.upstreams {
            if let Some(CredentialSource::File(path)) = u.credential.as_ref().map(|c| &c.source) {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "upstream {}: credential file {}: {e}",
                        u.name,
                        path.display()
                    )
                })?;
                let cred = text.trim_end_matches(['\r', '\n']).to_owned();
                if cred.is_empty() || cred.contains(['\r', '\n']) {
                    anyhow::bail!(
                        "upstream {}: credential file {}: one line, not empty",
                        u.name,
                        path.display()
                    );
                }
                statics.insert(u.name.clone(), cred);
            }
        }
        Ok(Self {
            config,
            clients,
            statics,
        })
    }
}

/// The running gateway.
pub struct Gate {
    live: RwLock<Arc<Live>>,
    /// The node agent.
    pub agent: Agent,
    /// Call outcomes on their way to the agent.
    pub recorder: crate::recorder::Recorder,
    /// The gateway's own SVID and the trust it checks callers with.
    pub identity: Identity,
    /// MCP sessions by task.
    pub sessions: Sessions,
    /// Its metrics.
    pub metrics: GateMetrics,
    /// Where the configuration was read from (for reloads), and the flags.
    pub source: Option<(PathBuf, Flags)>,
}

impl Gate {
    /// A gateway on `live`.
    pub fn new(
        live: Live,
        agent: Agent,
        identity: Identity,
        metrics: GateMetrics,
        source: Option<(PathBuf, Flags)>,
    ) -> Self {
        Self {
            live: RwLock::new(Arc::new(live)),
            recorder: crate::recorder::Recorder::start(agent.clone()),
            agent,
            identity,
            sessions: Sessions::default(),
            metrics,
            source,
        }
    }

    /// The configuration in force.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The gateway's SPIFFE ID (the audience of bearer JWT-SVIDs).
    pub fn spiffe_id(&self) -> &str {
        &self.identity.spiffe_id
    }

    /// Reads the configuration file again; the new one takes over only if
    /// it is whole. Listener addresses and the agent socket are kept (they
    /// need a restart, and say so).
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some((path, flags)) = &self.source else {
            anyhow::bail!("no configuration file to reload");
        };
        let config = Config::load(path, flags)?;
        let old = self.live();
        if config.listen != old.config.listen
            || config.admin_listen != old.config.admin_listen
            || config.agent_socket != old.config.agent_socket
            || config.ext_authz_socket != old.config.ext_authz_socket
        {
            tracing::warn!(
                "listen, admin_listen, agent_socket and ext_authz_socket change only on restart"
            );
        }
        let live = Live::new(config)?;
        let n = live.config.upstreams.len();
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        tracing::info!(upstreams = n, "configuration reloaded");
        self.metrics.reloads.inc();
        Ok(())
    }
}
