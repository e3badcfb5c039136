//! Three servers (real processes) on one real PostgreSQL database, one
//! real agent given all three addresses, a workload holding an
//! `X509Source`: an entry created through another server reaches the
//! agent at once; the bundle holds every server's CA; SIGKILL of the
//! agent's server moves it to another without the workload ever holding
//! an expired SVID; a ban through one server is refused by every server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

// The Workload API's metadata header, as every workload sends it.
use crate::enforce_support::header;
use lanyard_core::x509::CertInfo;
use lanyard_integration_tests::server_proc::ServerProc;
use lanyard_integration_tests::{NODE, TD, endpoint, eventually, init, own_uid};
use lanyard_pg_testing::PgCluster;
use lanyard_proto::admin::admin_client::AdminClient;
mod approvals;
mod credentials;
use lanyard_proto::admin::{
    AgentRequest, AuthorityRequest, CreateEntryRequest, CreateJoinTokenRequest,
    ListAuthoritiesRequest,
};
use lanyard_proto::server::SyncRequest;
use lanyard_proto::types;
use tonic::transport::Channel;

const SERVER: &str = env!("CARGO_BIN_EXE_server_proc");

/// `Some` once the workload's X.509 context holds an SVID for `spiffe_id`.
async fn holds_svid(client: &spiffe::WorkloadApiClient, spiffe_id: &str) -> Option<()> {
    let ctx = client.fetch_x509_context().await.ok()?;
    ctx.svids()
        .iter()
        .any(|s| s.spiffe_id().to_string() == spiffe_id)
        .then_some(())
}

/// The server ports this process holds an established TCP connection to
/// (the agent runs in this process; its sync stream is the only TCP
/// connection to a server port).
fn connected_ports(ports: &[u16]) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (f.get(2), f.get(3)) else {
                continue;
            };
            let port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "01"
                && let Some(p) = port
                && ports.contains(&p)
            {
                out.insert(p);
            }
        }
    }
    out
}

/// Three server processes on one database, each with its own data dir.
struct Fleet {
    pg: PgCluster,
    db: String,
    dir: tempfile::TempDir,
    /// `None` once killed.
    servers: Vec<Option<ServerProc>>,
    ports: Vec<u16>,
}

impl Fleet {
    /// The first server creates the schema; the others start together.
    async fn start() -> Self {
        let pg = PgCluster::start().await.unwrap();
        let db = pg.create_db().await.unwrap();
        let url = pg.url(&db);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("server.toml"),
            format!("[[approver]]\nname = \"{}\"\n", approvals::APPROVER),
        )
        .unwrap();
        let s1 = ServerProc::start(SERVER, dir.path(), 1, &url);
        s1.ready().await;
        let s2 = ServerProc::start(SERVER, dir.path(), 2, &url);
        let s3 = ServerProc::start(SERVER, dir.path(), 3, &url);
        s2.ready().await;
        s3.ready().await;
        let servers = vec![Some(s1), Some(s2), Some(s3)];
        let ports = servers.iter().flatten().map(|s| s.port).collect();
        Self {
            pg,
            db,
            dir,
            servers,
            ports,
        }
    }

    fn admin(&self, i: usize) -> AdminClient<Channel> {
        self.servers[i].as_ref().unwrap().admin()
    }
}

/// An entry for this process's uid, with 6 s SVIDs.
fn entry_req(spiffe_id: &str) -> CreateEntryRequest {
    CreateEntryRequest {
        entry: Some(types::Entry {
            spiffe_id: spiffe_id.into(),
            parent_id: NODE.into(),
            selectors: vec![format!("unix:uid:{}", own_uid())],
            x509_ttl_seconds: 6,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_on_one_database_serve_one_agent_through_failover_and_bans() {
    init();
    let mut f = Fleet::start().await;
    every_server_publishes_its_ca_and_keeps_its_private_keys(&f).await;
    credentials::a_secret_provider_is_shared_and_the_database_holds_only_ciphertext(&f).await;
    let (agent, client, home) = the_agent_attests_through_one_and_trusts_all_three(&f).await;
    an_entry_through_another_server_arrives_at_once(&f, &client, home).await;
    credentials::a_secret_added_through_one_server_is_released_through_another(&f, &agent, home)
        .await;
    approvals::a_call_held_through_one_server_is_approved_through_another(&f, &agent, home).await;
    let (dead, now_home) =
        a_killed_server_hands_the_agent_over_with_fresh_svids(&mut f, &agent, home).await;
    let third = (0..3).find(|i| *i != home && *i != now_home).unwrap();
    entries_after_the_failover_arrive_in_creation_order(&f, &client, third).await;
    a_dead_servers_keys_are_revoked_and_leave_the_bundle(&f, &dead, &client, third).await;
    let live: Vec<u16> = f
        .ports
        .iter()
        .copied()
        .filter(|p| *p != f.ports[home])
        .collect();
    a_ban_through_any_server_is_refused_by_every_server(&f, &live, third).await;

    agent.shutdown().await;
    for s in f.servers.iter().flatten() {
        let log = s.log();
        assert!(!log.contains("panicked"), "{log}");
    }
    drop(dead);
}

/// Every server's CA is in the bundle each of them publishes; private keys
/// stay in each server's data dir (0600), the shared database holds
/// certificates and public keys only.
async fn every_server_publishes_its_ca_and_keeps_its_private_keys(f: &Fleet) {
    let owners = eventually("three servers' CAs", Duration::from_secs(20), || async {
        let list = f
            .admin(0)
            .list_authorities(ListAuthoritiesRequest {})
            .await
            .ok()?
            .into_inner()
            .authorities;
        let owners: BTreeSet<String> = list
            .iter()
            .filter(|a| a.kind == "x509" && a.state == "active")
            .map(|a| a.server_id.clone())
            .collect();
        (owners.len() == 3).then_some(owners)
    })
    .await;
    eprintln!("server IDs: {owners:?}");
    let db_client = f.pg.client(&f.db).await.unwrap();
    for table in ["lanyard_ca_keys", "lanyard_jwt_keys"] {
        let (rows, with_private): (i64, i64) = {
            let r = db_client
                .query_one(
                    &format!(
                        "SELECT count(*), count(*) FILTER (WHERE jsonb_array_length(data->'key_pkcs8') > 0) FROM {table}"
                    ),
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert!(rows >= 3, "{table}: {rows} rows");
        assert_eq!(with_private, 0, "{table} holds private keys");
    }
    for s in f.servers.iter().flatten() {
        let keys: Vec<_> = std::fs::read_dir(s.dir.join("data").join("keys"))
            .unwrap()
            .flatten()
            .collect();
        assert!(keys.len() >= 2, "{:?}", keys);
        for k in keys {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(k.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}

/// The agent attests through server 2 and is given all three addresses;
/// its bundle holds the three CAs. Returns the agent, a workload client
/// and the index of the server the agent attached to.
async fn the_agent_attests_through_one_and_trusts_all_three(
    f: &Fleet,
) -> (lanyard_agent::Bound, spiffe::WorkloadApiClient, usize) {
    let token = f
        .admin(1)
        .create_join_token(CreateJoinTokenRequest {
            agent_id: NODE.into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    f.admin(1)
        .create_entry(entry_req("spiffe://example.org/first"))
        .await
        .unwrap();
    let all = f
        .servers
        .iter()
        .flatten()
        .map(ServerProc::addr)
        .collect::<Vec<_>>()
        .join(",");
    let agent_dir = f.dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = lanyard_agent::build(
        lanyard_agent::config::RawConfig {
            server: Some(all),
            trust_domain: Some(TD.into()),
            join_token: Some(token),
            insecure_bootstrap: Some(true),
            socket: Some(agent_dir.join("agent.sock")),
            data_dir: Some(agent_dir.join("data")),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
    .await
    .expect("agent starts");
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    eventually("the first SVID", Duration::from_secs(20), || async {
        client.fetch_x509_svid().await.ok()
    })
    .await;
    let attached = eventually("the agent's server", Duration::from_secs(20), || async {
        let c = connected_ports(&f.ports);
        (c.len() == 1).then(|| c.into_iter().next().unwrap())
    })
    .await;
    let home = f.ports.iter().position(|p| *p == attached).unwrap();
    eprintln!("agent attached to server {}", home + 1);

    let ctx = client.fetch_x509_context().await.unwrap();
    let bundle = ctx
        .bundle_set()
        .get(&spiffe::TrustDomain::new(TD).unwrap())
        .unwrap()
        .clone();
    assert!(
        bundle.authorities().len() >= 3,
        "the agent's bundle holds {} CAs",
        bundle.authorities().len()
    );
    (agent, client, home)
}

/// An entry created through another server than the agent's reaches the
/// agent at once.
async fn an_entry_through_another_server_arrives_at_once(
    f: &Fleet,
    client: &spiffe::WorkloadApiClient,
    home: usize,
) {
    let other = (home + 1) % 3;
    let created = Instant::now();
    f.admin(other)
        .create_entry(entry_req("spiffe://example.org/second"))
        .await
        .unwrap();
    eventually(
        "the entry created through another server",
        Duration::from_secs(10),
        || holds_svid(client, "spiffe://example.org/second"),
    )
    .await;
    let latency = created.elapsed();
    eprintln!(
        "entry via server {} → agent on server {}: {latency:?}",
        other + 1,
        home + 1
    );
    assert!(
        latency < Duration::from_secs(2),
        "an entry took {latency:?} to reach an agent of another server"
    );
}

/// SIGKILL the agent's server: the agent moves to another one, and a
/// workload holding an X509Source (checked every 50 ms) never holds an
/// expired SVID across it. Returns the killed server and the index of the
/// agent's new one.
async fn a_killed_server_hands_the_agent_over_with_fresh_svids(
    f: &mut Fleet,
    agent: &lanyard_agent::Bound,
    home: usize,
) -> (ServerProc, usize) {
    let source = spiffe::X509Source::builder()
        .endpoint(endpoint(&agent.socket))
        .build()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (source, stop) = (source.clone(), stop.clone());
        tokio::spawn(async move {
            let mut serials = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let svid = source.svid().expect("an SVID");
                let leaf = CertInfo::parse(svid.leaf().as_bytes()).unwrap();
                assert!(
                    leaf.not_after > SystemTime::now(),
                    "the workload held an expired SVID (serial {})",
                    leaf.serial
                );
                serials.insert(leaf.serial);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            serials
        })
    };

    let killed_at = Instant::now();
    let mut dead = f.servers[home].take().unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let attached = f.ports[home];
    let live: Vec<u16> = f.ports.iter().copied().filter(|p| *p != attached).collect();
    let moved = eventually(
        "the agent to reach another server",
        Duration::from_secs(30),
        || async {
            let c = connected_ports(&live);
            (c.len() == 1).then(|| c.into_iter().next().unwrap())
        },
    )
    .await;
    eprintln!(
        "agent moved to port {moved} {:?} after the kill",
        killed_at.elapsed()
    );
    // Three SVID lifetimes (6 s each) on the new server.
    tokio::time::sleep(Duration::from_secs(18)).await;
    stop.store(true, Ordering::Relaxed);
    let serials = watcher.await.unwrap();
    assert!(
        serials.len() >= 3,
        "the SVID rotated across the failover: {serials:?}"
    );
    source.shutdown().await;
    let now_home = f.ports.iter().position(|p| *p == moved).unwrap();
    (dead, now_home)
}

/// An entry created after the failover still arrives (through the third
/// server). The three entries were created through three different
/// servers, and the agent has changed servers since: it serves them in
/// creation order, the oldest as the default SVID.
async fn entries_after_the_failover_arrive_in_creation_order(
    f: &Fleet,
    client: &spiffe::WorkloadApiClient,
    third: usize,
) {
    f.admin(third)
        .create_entry(entry_req("spiffe://example.org/third"))
        .await
        .unwrap();
    eventually(
        "an entry after the failover",
        Duration::from_secs(10),
        || holds_svid(client, "spiffe://example.org/third"),
    )
    .await;
    let order = eventually("all three SVIDs", Duration::from_secs(10), || async {
        let ctx = client.fetch_x509_context().await.ok()?;
        let ids: Vec<String> = ctx
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        (ids.len() == 3).then_some(ids)
    })
    .await;
    assert_eq!(
        order,
        [
            "spiffe://example.org/first",
            "spiffe://example.org/second",
            "spiffe://example.org/third"
        ]
    );
}

/// The killed server is gone for good: its keys (its CA is still the
/// active one it left) are tainted, then revoked, through another server,
/// and leave the agent's bundle.
async fn a_dead_servers_keys_are_revoked_and_leave_the_bundle(
    f: &Fleet,
    dead: &ServerProc,
    client: &spiffe::WorkloadApiClient,
    third: usize,
) {
    let dead_id = std::fs::read_to_string(dead.dir.join("data").join("server-id"))
        .unwrap()
        .trim()
        .to_owned();
    let dead_keys: Vec<(String, String)> = f
        .admin(third)
        .list_authorities(ListAuthoritiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .authorities
        .into_iter()
        .filter(|a| a.server_id == dead_id)
        .map(|a| (a.id, a.kind))
        .collect();
    assert!(
        dead_keys.iter().any(|(_, k)| k == "x509") && dead_keys.iter().any(|(_, k)| k == "jwt"),
        "{dead_keys:?}"
    );
    for (id, _) in &dead_keys {
        f.admin(third)
            .taint_authority(AuthorityRequest { id: id.clone() })
            .await
            .unwrap();
        f.admin(third)
            .revoke_authority(AuthorityRequest { id: id.clone() })
            .await
            .unwrap();
    }
    let dead_x509: BTreeSet<String> = dead_keys
        .iter()
        .filter(|(_, k)| k == "x509")
        .map(|(id, _)| id.clone())
        .collect();
    eventually(
        "the dead server's CA to leave the agent's bundle",
        Duration::from_secs(20),
        || async {
            let ctx = client.fetch_x509_context().await.ok()?;
            let b = ctx
                .bundle_set()
                .get(&spiffe::TrustDomain::new(TD).unwrap())?
                .clone();
            let ids: BTreeSet<String> = b
                .authorities()
                .iter()
                .map(|c| CertInfo::parse(c.as_bytes()).unwrap().subject_key_id)
                .collect();
            (ids.len() >= 2 && ids.is_disjoint(&dead_x509)).then_some(())
        },
    )
    .await;
}

/// A ban through a server the agent is not on: every live server refuses
/// the agent's credentials, and its stream is ended.
async fn a_ban_through_any_server_is_refused_by_every_server(
    f: &Fleet,
    live: &[u16],
    third: usize,
) {
    f.admin(third)
        .ban_agent(AgentRequest {
            spiffe_id: NODE.into(),
        })
        .await
        .unwrap();
    let agent_data = f.dir.path().join("agent").join("data");
    for (i, s) in f.servers.iter().enumerate() {
        let Some(s) = s else { continue };
        let addr: std::net::SocketAddr = s.addr().parse().unwrap();
        let node = lanyard_integration_tests::node_client_from(&agent_data, addr);
        let status = eventually("the ban on every server", Duration::from_secs(10), || {
            let mut node = node.clone();
            async move {
                match node.sync(SyncRequest {}).await {
                    Err(st) => Some(st),
                    Ok(mut stream) => stream.get_mut().message().await.err(),
                }
            }
        })
        .await;
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "server {}: {status:?}",
            i + 1
        );
        assert!(status.message().contains("banned"), "{status:?}");
    }
    eventually(
        "the banned agent's stream to end",
        Duration::from_secs(10),
        || async { connected_ports(live).is_empty().then_some(()) },
    )
    .await;
}
