//! `lanyard-bench fleet`: thousands of simulated agents against one or
//! several real `lanyard-server` processes. Each simulated agent is a
//! lightweight session in this process: it attests with its own join
//! token, holds its own agent SVID, and keeps the real Sync stream open
//! over its own mTLS connection, exactly as `lanyard-agent` does; it only
//! skips the Workload API side. Reported: entry change → the affected
//! agent notified, one bundle change → every agent notified, server RSS
//! per connected agent, and SVID signings per second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_agent::upstream::client::{node_client, tls_config};
use lanyard_agent::upstream::creds::{AgentIdentity, ClientCert, Credentials};
use lanyard_core::tls::SpiffeServerVerifier;
use lanyard_core::x509::SvidKey;
use lanyard_core::{SpiffeId, TrustDomain};
use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, CreateJoinTokenRequest, GetBundleRequest};
use lanyard_proto::server::node_client::NodeClient;
use lanyard_proto::server::{AttestAgentRequest, SignX509SvidsRequest, SvidCsr, SyncRequest};
use lanyard_proto::types;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::procs::{self, Proc, TD};
use crate::stats::Report;

/// What `fleet` measures with.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    /// Simulated agents.
    pub agents: usize,
    /// Servers (more than one needs PostgreSQL).
    pub servers: usize,
    /// A `postgres://` URL; without it, several servers get a throwaway
    /// PostgreSQL cluster and one server uses sled.
    pub datastore: Option<String>,
    /// Entry-change samples.
    pub samples: usize,
    /// How long to drive SVID signing.
    pub sign_duration: Duration,
    /// Concurrent signing callers.
    pub sign_concurrency: usize,
}

/// A running server process.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) addr: String,
    pub(crate) admin: PathBuf,
}

/// One simulated agent.
struct SimAgent {
    id: SpiffeId,
    client: NodeClient<Channel>,
}

/// What a sync stream saw: entry IDs and the bundle sequence, with the
/// time they arrived.
#[derive(Default)]
struct Seen {
    entries: HashMap<String, Instant>,
    bundle: HashMap<u64, Instant>,
}

/// The results.
#[derive(Debug, serde::Serialize)]
pub struct FleetReport {
    /// Servers.
    pub servers: usize,
    /// Datastore kind.
    pub datastore: String,
    /// Agents connected with a live Sync stream.
    pub agents: usize,
    /// Seconds to attest and connect them all.
    pub connect_seconds: f64,
    /// Entry create → the affected agent's stream carries it.
    pub entry_notify: Report,
    /// One bundle change → each agent's stream carries it.
    pub bundle_fanout: Report,
    /// Server RSS (sum over servers) before and after the agents
    /// connected, bytes.
    pub rss_before: u64,
    /// After.
    pub rss_after: u64,
    /// (after - before) / agents.
    pub rss_per_agent: f64,
    /// X.509-SVID signings per second (all servers).
    pub signings_per_second: f64,
}

pub(crate) fn start_server(
    bins: &Path,
    dir: &Path,
    n: usize,
    datastore: &str,
) -> anyhow::Result<Server> {
    let port = procs::free_port()?;
    let dir = dir.join(format!("server{n}"));
    std::fs::create_dir_all(&dir)?;
    let admin = dir.join("admin.sock");
    let mut cmd = Command::new(bins.join("lanyard-server"));
    cmd.args(["run", "--trust-domain", TD, "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-socket")
        .arg(&admin)
        .args(["--max-connections", "60000"])
        .args(["--max-connections-per-peer", "60000"])
        .args(["--agent-svid-ttl", "1h", "--ca-ttl", "24h"])
        .env("LANYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if datastore != "sled" {
        cmd.args(["--datastore", datastore]);
    }
    let mut child = cmd.spawn().context("starting lanyard-server")?;
    procs::wait_for_socket(&admin, &mut child, "lanyard-server")?;
    Ok(Server {
        proc: Proc(child),
        addr: format!("127.0.0.1:{port}"),
        admin,
    })
}

/// Raises this process's open-file limit to its hard limit (servers
/// started after inherit it): 10,000 agents are 10,000 sockets here and
/// 10,000 on the servers.
fn raise_nofile() -> anyhow::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    setrlimit(Resource::Nofile, l).context("raising the open-file limit")?;
    Ok(l.current.unwrap_or(u64::MAX))
}

/// Attests one simulated agent through `server`: its SPIFFE ID and an
/// mTLS client holding its agent SVID.
pub(crate) async fn attest(
    n: usize,
    server: &str,
    token: String,
    bundle: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<(SpiffeId, NodeClient<Channel>)> {
    let td = TrustDomain::new(TD)?;
    let server_id = td.id_with_segments(["lanyard", "server"])?;
    let creds = Arc::new(Credentials::default());
    creds.set_bundle(bundle);
    let verifier = Arc::new(SpiffeServerVerifier::new(server_id, creds.clone()));
    let boot = node_client(server, tls_config(verifier.clone(), None)?)?;
    let key = SvidKey::generate()?;
    let csr = key.csr(&td.id_with_segments(["lanyard", "agent"])?)?;
    let resp = boot
        .clone()
        .attest_agent(AttestAgentRequest {
            attestor: String::new(),
            attestation_data: vec![],
            join_token: token,
            csr,
        })
        .await
        .with_context(|| format!("attesting simulated agent {n}"))?
        .into_inner();
    let svid = resp.svid.context("no SVID")?;
    let identity = AgentIdentity::new(svid.cert_chain, key.pkcs8_der())?;
    let id = identity.spiffe_id.clone();
    creds.set_identity(Some(Arc::new(identity)));
    let client = node_client(
        server,
        tls_config(verifier, Some(Arc::new(ClientCert(creds))))?,
    )?;
    Ok((id, client))
}

/// Attests one simulated agent through `server` and opens its stream;
/// the stream's updates are recorded in `seen`.
async fn sim_agent(
    n: usize,
    server: &str,
    token: String,
    bundle: Arc<Vec<Vec<u8>>>,
    seen: Arc<Mutex<Seen>>,
    ready: mpsc::Sender<()>,
) -> anyhow::Result<SimAgent> {
    let (id, mut client) = attest(n, server, token, bundle).await?;
    let mut stream = client.sync(SyncRequest {}).await?.into_inner();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok(Some(u)) = stream.message().await {
            let now = Instant::now();
            {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                for e in &u.entries {
                    s.entries.entry(e.id.clone()).or_insert(now);
                }
                if let Some(b) = &u.bundle {
                    s.bundle.entry(b.sequence).or_insert(now);
                }
            }
            if std::mem::take(&mut first) {
                let _ = ready.send(()).await;
            }
        }
    });
    Ok(SimAgent { id, client })
}

/// Per-agent stream records: index = agent number.
type Streams = Vec<Arc<Mutex<Seen>>>;

pub async fn run(bins: &Path, args: &FleetArgs) -> anyhow::Result<FleetReport> {
    let nofile = raise_nofile()?;
    anyhow::ensure!(
        nofile as usize > args.agents + 1000,
        "the open-file limit ({nofile}) is too low for {} agents",
        args.agents
    );
    let dir = tempfile::tempdir()?;
    let mut cluster = None;
    let datastore = match (&args.datastore, args.servers) {
        (Some(url), _) => url.clone(),
        (None, 1) => "sled".to_owned(),
        (None, _) => {
            eprintln!("  starting a throwaway PostgreSQL cluster");
            let pg = lanyard_pg_testing::PgCluster::start().await?;
            let db = pg.create_db().await?;
            let url = pg.url(&db);
            cluster = Some(pg);
            url
        }
    };
    let mut servers = Vec::new();
    for n in 0..args.servers {
        servers.push(start_server(bins, dir.path(), n + 1, &datastore)?);
    }
    let admins: Vec<AdminClient<Channel>> = servers
        .iter()
        .map(|s| procs::admin(&s.admin))
        .collect::<Result<_, _>>()?;
    // Every server's CA in the bundle before agents attest.
    let bundle = loop {
        let b = admins[0]
            .clone()
            .get_bundle(GetBundleRequest {})
            .await?
            .into_inner();
        if b.x509_authorities.len() >= args.servers {
            break Arc::new(b.x509_authorities);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rss = |servers: &[Server]| -> anyhow::Result<u64> {
        servers
            .iter()
            .map(|s| procs::rss_bytes(s.proc.0.id()))
            .sum()
    };
    let rss_before = rss(&servers)?;

    eprintln!(
        "  attesting and connecting {} agents to {} server(s) ({datastore})",
        args.agents,
        args.servers,
        datastore = if datastore == "sled" {
            "sled"
        } else {
            "postgres"
        }
    );
    let started = Instant::now();
    let streams: Streams = (0..args.agents).map(|_| Arc::default()).collect();
    let (ready_tx, mut ready_rx) = mpsc::channel(args.agents.max(1));
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = Vec::with_capacity(args.agents);
    for (n, seen) in streams.iter().enumerate() {
        let s = n % servers.len();
        let (addr, mut admin) = (servers[s].addr.clone(), admins[s].clone());
        let (bundle, seen, ready, sem) =
            (bundle.clone(), seen.clone(), ready_tx.clone(), sem.clone());
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let token = admin
                .create_join_token(CreateJoinTokenRequest {
                    agent_id: format!("spiffe://{TD}/bench/node/{n}"),
                    ttl_seconds: 3600,
                })
                .await?
                .into_inner()
                .token;
            sim_agent(n, &addr, token, bundle, seen, ready).await
        }));
    }
    drop(ready_tx);
    let mut agents = Vec::with_capacity(args.agents);
    for j in joins {
        agents.push(j.await??);
    }
    for _ in 0..args.agents {
        ready_rx
            .recv()
            .await
            .context("a sync stream ended before its first update")?;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {} agents connected in {connect_seconds:.1} s",
        args.agents
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss(&servers)?;

    // Entry change → the affected agent notified.
    let mut entry_lat = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let n = (i * 7919) % args.agents;
        let mut admin = admins[(i + 1) % admins.len()].clone();
        let t0 = Instant::now();
        let e = admin
            .create_entry(CreateEntryRequest {
                entry: Some(types::Entry {
                    spiffe_id: format!("spiffe://{TD}/bench/w/{i}"),
                    parent_id: agents[n].id.to_string(),
                    selectors: vec![format!("unix:uid:{}", 10_000 + i)],
                    x509_ttl_seconds: 300,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let at = streams[n]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entries
                .get(&e.id)
                .copied();
            if let Some(at) = at {
                entry_lat.push(at.saturating_duration_since(t0));
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "entry {} never arrived", e.id);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // One bundle change → every agent notified.
    let before = admins[0]
        .clone()
        .get_bundle(GetBundleRequest {})
        .await?
        .into_inner()
        .sequence;
    let t0 = Instant::now();
    admins[0]
        .clone()
        .prepare_authorities(lanyard_proto::admin::ListAuthoritiesRequest {})
        .await?;
    let deadline = t0 + Duration::from_secs(120);
    let fanout = loop {
        let times: Vec<Duration> = streams
            .iter()
            .filter_map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.bundle
                    .iter()
                    .filter(|(seq, _)| **seq > before)
                    .map(|(_, at)| at.saturating_duration_since(t0))
                    .min()
            })
            .collect();
        if times.len() == args.agents {
            break times;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} agents saw the bundle change",
            times.len(),
            args.agents
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // SVID signings/s: callers spread over the agents that have an entry.
    let with_entry: Vec<(usize, String)> = {
        let mut v = Vec::new();
        for i in 0..args.samples {
            let n = (i * 7919) % args.agents;
            let id = streams[n]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entries
                .keys()
                .next()
                .cloned();
            if let Some(id) = id {
                v.push((n, id));
            }
        }
        v
    };
    anyhow::ensure!(!with_entry.is_empty(), "no agent has an entry to sign for");
    let csr = SvidKey::generate()?.csr(&SpiffeId::new(&format!("spiffe://{TD}/x"))?)?;
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + args.sign_duration;
    let mut callers = Vec::new();
    for c in 0..args.sign_concurrency {
        let (n, entry_id) = with_entry[c % with_entry.len()].clone();
        let mut client = agents[n].client.clone();
        let (csr, count) = (csr.clone(), count.clone());
        callers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let r = client
                    .sign_x509_svids(SignX509SvidsRequest {
                        csrs: vec![SvidCsr {
                            entry_id: entry_id.clone(),
                            csr: csr.clone(),
                        }],
                    })
                    .await?;
                if r.into_inner().results.iter().all(|r| r.svid.is_some()) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let t = Instant::now();
    for c in callers {
        c.await??;
    }
    let signings_per_second =
        count.load(std::sync::atomic::Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();

    let report = FleetReport {
        servers: args.servers,
        datastore: if datastore == "sled" {
            "sled".into()
        } else {
            "postgres".into()
        },
        agents: args.agents,
        connect_seconds,
        entry_notify: Report::from_samples(
            "entry change → the affected agent notified",
            entry_lat,
            0,
            Duration::ZERO,
            false,
        ),
        bundle_fanout: Report::from_samples(
            "bundle change → every agent notified",
            fanout,
            0,
            Duration::ZERO,
            false,
        ),
        rss_before,
        rss_after,
        rss_per_agent: rss_after.saturating_sub(rss_before) as f64 / args.agents.max(1) as f64,
        signings_per_second,
    };
    drop(agents);
    drop(servers);
    drop(cluster);
    Ok(report)
}
