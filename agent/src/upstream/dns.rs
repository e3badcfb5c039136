//! Finding servers by name: `--server lanyard-server.lanyard.svc.cluster.local:8081`
//! resolves (with hickory, to every A and AAAA address) when the agent
//! connects; the agent tries each address until one answers, resolves
//! again when none does and when the records' TTL has run out, and logs
//! the address it uses. An IP address in `--server` is used as it is.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

type Dns = Resolver<TokioRuntimeProvider>;

/// Resolves server names, remembering each answer until its TTL.
pub struct ServerResolver {
    /// A name server to ask instead of the system's (`dns_server`).
    nameserver: Option<SocketAddr>,
    dns: tokio::sync::OnceCell<Result<Dns, String>>,
    cache: Mutex<HashMap<String, (Vec<SocketAddr>, Instant)>>,
    last_used: Mutex<HashMap<String, SocketAddr>>,
}

impl std::fmt::Debug for ServerResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerResolver")
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

impl ServerResolver {
    /// Uses the system's resolver configuration (`/etc/resolv.conf`), or
    /// `nameserver` when given.
    pub fn new(nameserver: Option<SocketAddr>) -> Self {
        Self {
            nameserver,
            dns: tokio::sync::OnceCell::new(),
            cache: Mutex::default(),
            last_used: Mutex::default(),
        }
    }

    /// The process's shared system resolver.
    pub fn system() -> Arc<Self> {
        static SYSTEM: OnceLock<Arc<ServerResolver>> = OnceLock::new();
        SYSTEM.get_or_init(|| Arc::new(Self::new(None))).clone()
    }

    async fn dns(&self) -> Result<&Dns, String> {
        self.dns
            .get_or_init(|| async {
                let mut builder = match self.nameserver {
                    Some(ns) => {
                        let mut server = NameServerConfig::udp_and_tcp(ns.ip());
                        for c in &mut server.connections {
                            c.port = ns.port();
                        }
                        Resolver::builder_with_config(
                            ResolverConfig::from_parts(None, vec![], vec![server]),
                            TokioRuntimeProvider::default(),
                        )
                    }
                    None => Resolver::builder_tokio()
                        .map_err(|e| format!("system resolver configuration: {e}"))?,
                };
                // Answers are cached here, by their TTL; the resolver's own
                // cache would hide a changed record after a failure.
                builder.options_mut().cache_size = 0;
                builder.build().map_err(|e| e.to_string())
            })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The addresses of `host_port`: its IP as given, or every address the
    /// name resolves to (from the cache while its TTL lasts, unless
    /// `fresh`).
    pub async fn addresses(
        &self,
        host_port: &str,
        fresh: bool,
    ) -> std::io::Result<Vec<SocketAddr>> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        if let Ok(a) = host_port.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let (host, port) = host_port
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| bad(format!("{host_port:?} is not host:port")))?;
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if !fresh {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((addrs, until)) = cache.get(host_port)
                && Instant::now() < *until
            {
                return Ok(addrs.clone());
            }
        }
        let dns = self.dns().await.map_err(std::io::Error::other)?;
        // A trailing dot: the name is absolute (no search domains).
        let name = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let answer = dns.lookup_ip(name.as_str()).await.map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("resolving {host}: {e}"),
            )
        })?;
        let addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no addresses"),
            ));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let changed = cache.get(host_port).is_none_or(|(old, _)| *old != addrs);
        if changed {
            tracing::info!(server = %host_port, addresses = ?addrs, "server name resolved");
        }
        cache.insert(host_port.to_owned(), (addrs.clone(), answer.valid_until()));
        Ok(addrs)
    }

    /// Records the address a connection to `host_port` went to, logging a
    /// change.
    pub fn used(&self, host_port: &str, addr: SocketAddr) {
        let mut last = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        if last.insert(host_port.to_owned(), addr) != Some(addr) {
            tracing::info!(server = %host_port, address = %addr, "connected to server address");
        }
    }
}
