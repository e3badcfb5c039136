//! An attacker on the same node or the same network: real processes that
//! hand their connection on, exec another program, flood the agent's
//! socket; a stale agent credential on an open connection; a flood of TCP
//! connections to the server from one peer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lanyard_integration_tests::{
    NODE, TestServer, agent_config, endpoint, eventually, init, node_client_from, wait_for_svid,
};
use lanyard_proto::admin::AuthorityRequest;
use lanyard_proto::server::SignX509SvidsRequest;
use spiffe::WorkloadApiClient;

const WAIT: Duration = Duration::from_secs(20);
const TRICKS: &str = env!("CARGO_BIN_EXE_peer_tricks");

/// Starts an agent with `tweak` applied to its configuration.
async fn agent_with(
    server: &TestServer,
    tweak: impl FnOnce(&mut lanyard_agent::Config),
) -> lanyard_agent::Bound {
    init();
    let token = server.token(NODE).await;
    let mut cfg = agent_config(&server.dir, server.addr(), Some(token));
    tweak(&mut cfg);
    lanyard_agent::build(cfg).await.unwrap()
}

/// Reads the child's stdout lines until `want` lines arrived or `WAIT`.
fn lines(child: &mut Child, want: usize) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while got.len() < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    got
}

/// Runs the helper with `args` and returns the first two lines it prints.
async fn tricks(args: Vec<std::ffi::OsString>) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(TRICKS)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let got = lines(&mut child, 2);
        let _ = child.wait();
        got
    })
    .await
    .unwrap()
}

/// The caller that opened a stream exits and leaves the connection to a
/// child: the next rotation is not sent to the child; the stream ends.
async fn handoff_case(use_pidfd: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    // 2 s SVIDs: a rotation (and so a send) within about a second.
    server.entry_for_me("spiffe://example.org/w", NODE, 2).await;
    let agent = agent_with(&server, |c| c.use_pidfd = use_pidfd).await;
    wait_for_svid(&agent.socket).await;
    let got = tricks(vec!["handoff".into(), agent.socket.clone().into()]).await;
    assert_eq!(got, vec!["first", "ended"], "pidfd {use_pidfd}");
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_process_exits_and_leaves_the_connection_to_a_child() {
    handoff_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_time_fallback_ends_a_handed_off_stream_too() {
    handoff_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_process_execs_another_program() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    server.entry_for_me("spiffe://example.org/w", NODE, 2).await;
    let agent = agent_with(&server, |_| {}).await;
    wait_for_svid(&agent.socket).await;
    // Another executable (a copy: another inode) for the exec.
    let other = dir.path().join("other-program");
    std::fs::copy(TRICKS, &other).unwrap();
    let got = tricks(vec![
        "exec".into(),
        agent.socket.clone().into(),
        other.into(),
    ])
    .await;
    assert_eq!(got, vec!["first", "ended"]);
    agent.shutdown().await;
    server.stop().await;
}

/// Local processes of another uid hold 20,000 idle connections (the
/// descriptor limit of this machine's processes): the agent keeps serving
/// everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_from_one_caller_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    // Another uid must reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    server
        .entry_for_me("spiffe://example.org/w", NODE, 60)
        .await;
    let agent = agent_with(&server, |_| {}).await;
    wait_for_svid(&agent.socket).await;
    // Two processes of the attacker's uid, 10,000 connections each: more
    // than this process's descriptor limit (20,000 here) could hold.
    // The helper must be executable by that uid wherever the checkout is.
    let tricks = dir.path().join("peer_tricks");
    std::fs::copy(TRICKS, &tricks).unwrap();
    std::fs::set_permissions(&tricks, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut floods = Vec::new();
    for _ in 0..2 {
        let mut flood = Command::new(&tricks)
            .arg("flood")
            .arg(&agent.socket)
            .arg("10000")
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (flood, ready) = tokio::task::spawn_blocking(move || {
            let l = lines(&mut flood, 1);
            (flood, l)
        })
        .await
        .unwrap();
        assert!(
            ready.first().is_some_and(|l| l.starts_with("ready ")),
            "{ready:?}"
        );
        floods.push(flood);
    }
    // While the flood holds its connections, a fresh caller is served.
    served_three_times(&agent.socket).await;
    end_floods(floods);
    agent.shutdown().await;
    server.stop().await;
}

/// An agent SVID whose CA is revoked stops working on a connection that
/// was established while it was valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_ca_stops_an_agent_credential_on_an_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = agent_with(&server, |_| {}).await;
    agent.shutdown().await;
    let old_ca = server.active_ca_id();
    let mut client = node_client_from(&dir.path().join("agent-data"), server.addr());
    client
        .sign_x509_svids(SignX509SvidsRequest { csrs: vec![] })
        .await
        .expect("the stored SVID works");
    let mut admin = server.admin();
    admin
        .prepare_authorities(lanyard_proto::admin::ListAuthoritiesRequest {})
        .await
        .unwrap();
    admin
        .activate_authorities(lanyard_proto::admin::ListAuthoritiesRequest {})
        .await
        .unwrap();
    admin
        .taint_authority(AuthorityRequest { id: old_ca.clone() })
        .await
        .unwrap();
    admin
        .revoke_authority(AuthorityRequest { id: old_ca })
        .await
        .unwrap();
    // Same client, same HTTP/2 connection.
    let err = client
        .sign_x509_svids(SignX509SvidsRequest { csrs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("no longer in the trust bundle"),
        "{}",
        err.message()
    );
    server.stop().await;
}

/// One network peer opens thousands of connections and never handshakes:
/// beyond its share they are closed at once, and an agent on another
/// address attests and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_flood_from_one_peer_does_not_stop_agents_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", |c| {
        c.net.max_connections_per_peer = 64;
        c.net.max_handshakes = 32;
    })
    .await;
    server
        .entry_for_me("spiffe://example.org/w", NODE, 60)
        .await;
    let addr = server.addr();
    let mut held = Vec::new();
    for _ in 0..1500 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(s) = sock.connect(addr).await {
            held.push(s);
        }
    }
    // Over the peer's share, connections are closed by the server: reading
    // gives end-of-file at once.
    let mut closed = 0;
    for s in &mut held {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1500 - 64, "only {closed} of 1500 closed");
    let agent = agent_with(&server, |_| {}).await;
    wait_for_svid(&agent.socket).await;
    drop(held);
    agent.shutdown().await;
    server.stop().await;
}

/// The agent's gauge of bytes held for incomplete HTTP/2 headers, scraped
/// from its metrics endpoint.
async fn header_bytes(addr: std::net::SocketAddr) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (_, body) = buf.split_once("\r\n\r\n")?;
    lanyard_metrics::parse_exposition(body)
        .ok()?
        .get("lanyard_agent_header_buffered_bytes")
        .copied()
}

/// A helper copy another uid may execute.
fn tricks_for_others(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tricks = dir.join("peer_tricks");
    std::fs::copy(TRICKS, &tricks).unwrap();
    std::fs::set_permissions(&tricks, std::fs::Permissions::from_mode(0o755)).unwrap();
    tricks
}

/// 1,000 connections of another uid send the HTTP/2 preface and half a
/// header frame, then stall: the agent holds their bytes (counted in its
/// metric) only until the header deadline, closes every one, and the
/// metric returns to its floor; everyone else is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stalled_mid_header_are_dropped_and_their_bytes_released() {
    let dir = tempfile::tempdir().unwrap();
    let tricks = tricks_for_others(dir.path());
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    server
        .entry_for_me("spiffe://example.org/w", NODE, 60)
        .await;
    let agent = agent_with(&server, |c| {
        c.limits.max_connections_per_caller = 2000;
        c.limits.header_timeout = Duration::from_secs(3);
        c.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = agent.metrics_addr.unwrap();
    wait_for_svid(&agent.socket).await;
    let floor = eventually("the metric", WAIT, || header_bytes(metrics)).await;
    let mut stall = Command::new(&tricks)
        .arg("stall")
        .arg(&agent.socket)
        .arg("1000")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = stall.stdin.take().unwrap();
    let out = stall.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ready = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(ready, "ready 1000");
    // Held while they stall (the gauge is sampled every 2 s).
    let peak = eventually("the stalled bytes counted", WAIT, || async {
        header_bytes(metrics)
            .await
            .filter(|b| *b > floor + 1000.0 * 300.0)
    })
    .await;
    // Everyone else is served meanwhile.
    let client = WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    client.fetch_x509_svid().await.unwrap();
    // After the deadline: every stalled connection closed, bytes released.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        use std::io::Write;
        writeln!(stdin, "count").unwrap();
        let line = rx.recv_timeout(WAIT).unwrap();
        if line == "closed 1000" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still open: {line}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("the metric back to its floor", WAIT, || async {
        header_bytes(metrics).await.filter(|b| *b <= floor)
    })
    .await;
    println!("stalled: floor {floor} B, peak {peak} B for 1,000 connections");
    drop(stdin);
    let _ = stall.wait();
    agent.shutdown().await;
    server.stop().await;
}

/// One uid makes 64 cgroups of its own (a delegated subtree) and fills
/// each with connections: they count as one caller, so the agent's total
/// is never reached and another uid is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cgroups_of_one_uid_cannot_lock_another_uid_out() {
    let dir = tempfile::tempdir().unwrap();
    let tricks = tricks_for_others(dir.path());
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    server
        .entry_for_me("spiffe://example.org/w", NODE, 60)
        .await;
    let agent = agent_with(&server, |c| {
        c.limits.max_connections = 200;
        c.limits.max_connections_per_caller = 20;
    })
    .await;
    wait_for_svid(&agent.socket).await;
    // A subtree delegated to uid 65534, as systemd delegates one to a user
    // or a runtime to a container; the tenant makes 64 cgroups in it.
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.join("cgroup.controllers").exists())
        .expect("a unified cgroup hierarchy");
    let top = unified.join(format!("lanyard-test-{}", std::process::id()));
    std::fs::create_dir(&top).unwrap();
    let _cleanup = RemoveTree(top.clone());
    let tenant = top.join("tenant");
    std::fs::create_dir(&tenant).unwrap();
    for f in ["", "cgroup.procs", "cgroup.subtree_control"] {
        std::os::unix::fs::chown(tenant.join(f), Some(65534), Some(65534)).unwrap();
    }
    let mut floods = Vec::new();
    for i in 0..64 {
        let cg = tenant.join(format!("c{i}"));
        let made = Command::new("mkdir")
            .arg(&cg)
            .uid(65534)
            .gid(65534)
            .status()
            .unwrap();
        assert!(made.success());
        // Moved in by root (the tenant could not leave the root cgroup),
        // then running as the tenant.
        let mut flood = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$1" flood "$2" 20"#)
            .arg(&cg)
            .arg(&tricks)
            .arg(&agent.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (flood, ready) = tokio::task::spawn_blocking(move || {
            let l = lines(&mut flood, 1);
            (flood, l)
        })
        .await
        .unwrap();
        assert!(
            ready.first().is_some_and(|l| l.starts_with("ready ")),
            "{ready:?}"
        );
        floods.push(flood);
    }
    // Each flood process is in a cgroup of its own.
    let cgroup_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_ne!(cgroup_of(floods[0].id()), cgroup_of(floods[1].id()));
    // Another uid (this process) is served: 3 fresh connections.
    served_three_times(&agent.socket).await;
    end_floods(floods);
    agent.shutdown().await;
    server.stop().await;
}

/// A cgroup tree made by a test, removed (deepest first, waiting for its
/// processes to leave) when dropped, also when the test fails.
struct RemoveTree(std::path::PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        fn dirs(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs(&e.path(), out);
                }
            }
            out.push(d.to_owned());
        }
        let mut all = vec![];
        dirs(&self.0, &mut all);
        for d in all {
            for _ in 0..100 {
                if std::fs::remove_dir(&d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A fresh caller (this process) is served, three times over. A connect
/// can still meet a full accept queue for a moment while a flood's
/// connects are being closed (EAGAIN on a unix socket); SPIFFE clients
/// retry connects, so this one does too, briefly.
async fn served_three_times(socket: &std::path::Path) {
    for _ in 0..3 {
        let client = eventually("a connection to the agent", WAIT, || async {
            WorkloadApiClient::connect_to(endpoint(socket)).await.ok()
        })
        .await;
        let svid = tokio::time::timeout(WAIT, client.fetch_x509_svid())
            .await
            .expect("fetch within the deadline")
            .expect("an SVID while the flood holds its connections");
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/w");
    }
}

/// Closes the floods' stdin and waits for them to exit.
fn end_floods(floods: Vec<Child>) {
    for mut flood in floods {
        drop(flood.stdin.take());
        let _ = flood.wait();
    }
}
