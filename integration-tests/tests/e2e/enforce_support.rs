//! Shared pieces of the enforcement tests: a server and agent with a
//! workload entry and an enforcement-point entry, a second workload
//! process holding a task, AuthorizeToolCall, a TLS tool server and client
//! on the peer validator, and a peer that follows the agent's bundles and
//! CRLs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::TrustDomain;
use lanyard_core::peer::{
    LiveTrust, Requirements, SvidResolver, TrustState, client_config, server_config,
};
use lanyard_integration_tests::{NODE, TD, TestServer, agent_config, own_uid};
use lanyard_proto::admin::{CreateEntryRequest, SetPolicyRequest};
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallRequest, AuthorizeToolCallResponse, X509Chain};
use lanyard_proto::types;
use lanyard_proto::workload::X509BundlesRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

pub const WAIT: Duration = Duration::from_secs(20);
pub const HOLDER: &str = env!("CARGO_BIN_EXE_task_holder");
pub const PLANNER: &str = "spiffe://example.org/agent/planner";
pub const TOOLS: &str = "spiffe://example.org/tool/crm";

pub fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

pub struct Setup {
    pub server: Option<TestServer>,
    pub agent: lanyard_agent::Bound,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn server(&self) -> &TestServer {
        self.server.as_ref().unwrap()
    }
}

/// A server and agent; the workload entry (this uid) and, when `ep`, the
/// enforcement-point entry (this uid and this test binary's path).
pub async fn setup(ep: bool) -> Setup {
    setup_with(ep, |_| {}).await
}

/// [`setup`] with the agent's configuration adjusted by `tweak`.
pub async fn setup_with(ep: bool, tweak: impl FnOnce(&mut lanyard_agent::Config)) -> Setup {
    setup_configured(ep, |_| {}, tweak).await
}

/// [`setup`] with the server's and the agent's configuration adjusted.
pub async fn setup_configured(
    ep: bool,
    server_tweak: impl FnOnce(&mut lanyard_server::Config),
    tweak: impl FnOnce(&mut lanyard_agent::Config),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", server_tweak).await;
    let token = server.token(NODE).await;
    entry(&server, PLANNER, vec![], false).await;
    let mut config = agent_config(dir.path(), server.addr(), Some(token));
    tweak(&mut config);
    let agent = lanyard_agent::build(config).await.unwrap();
    let socket = dir.path().join("agent.sock");
    let s = Setup {
        server: Some(server),
        agent,
        socket,
        dir,
    };
    wait_entries(&s, 1).await;
    if ep {
        make_enforcement_point(&s).await;
    }
    s
}

pub async fn entry(server: &TestServer, id: &str, extra: Vec<String>, ep: bool) -> types::Entry {
    entry_via(server.admin(), id, extra, ep).await.unwrap()
}

/// [`entry`] through any admin client (a server process's).
pub async fn entry_via(
    mut admin: lanyard_proto::admin::admin_client::AdminClient<tonic::transport::Channel>,
    id: &str,
    extra: Vec<String>,
    ep: bool,
) -> Result<types::Entry, tonic::Status> {
    let mut selectors = vec![format!("unix:uid:{}", own_uid())];
    selectors.extend(extra);
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: id.into(),
                parent_id: NODE.into(),
                selectors,
                x509_ttl_seconds: 120,
                enforcement_point: ep,
                task_limits: Some(types::TaskLimits {
                    allowed_task_types: vec!["report.generate".into()],
                    allowed_tools: vec!["crm.read".into(), "email.send".into()],
                    max_task_ttl_seconds: 600,
                    max_sensitivity: String::new(),
                    allowed_credentials: vec![],
                }),
                ..Default::default()
            }),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn wait_entries(s: &Setup, n: usize) {
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.synced && snap.entries.iter().count() >= n),
    )
    .await
    .unwrap()
    .unwrap();
}

/// This test process becomes an enforcement point (its binary's path tells
/// it from the holder process, which has the same uid).
pub async fn make_enforcement_point(s: &Setup) {
    let exe = std::env::current_exe().unwrap();
    entry(
        s.server(),
        TOOLS,
        vec![format!("unix:path:{}", exe.display())],
        true,
    )
    .await;
    wait_entries(s, 2).await;
}

pub async fn set_policy(s: &Setup, text: &str) {
    let v = s
        .server()
        .admin()
        .set_policy(SetPolicyRequest {
            text: text.into(),
            shadow: false,
            source_name: "policy.cedar".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.policy_version == v.version),
    )
    .await
    .unwrap()
    .unwrap();
}

/// Asks the agent to decide a call for the peer's `credential`.
pub async fn authorize(
    socket: &Path,
    credential: Credential,
    tool: &str,
    context: &str,
) -> Result<AuthorizeToolCallResponse, tonic::Status> {
    let ch = lanyard_uds::unix_channel(socket).unwrap();
    TaskIdentityClient::new(ch)
        .authorize_tool_call(header(AuthorizeToolCallRequest {
            credential: Some(credential),
            tool: tool.into(),
            resource: "account/42".into(),
            context_json: context.into(),
            audience: String::new(),
            ..Default::default()
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// An AuthorizeToolCall request for `tool` on `account/42` with no context.
pub fn authorize_request(credential: Credential, tool: &str) -> AuthorizeToolCallRequest {
    AuthorizeToolCallRequest {
        credential: Some(credential),
        tool: tool.into(),
        resource: "account/42".into(),
        context_json: "{}".into(),
        ..Default::default()
    }
}

pub fn x509(chain: &[Vec<u8>]) -> Credential {
    Credential::X509Chain(X509Chain {
        certs: chain.to_vec(),
    })
}

pub fn jwt(token: &str) -> Credential {
    Credential::JwtSvid(token.to_owned())
}

/// A second workload process holding a task (`task_holder hold`).
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    pub task_id: String,
    pub chain: Vec<Vec<u8>>,
    pub jwt: String,
}

impl Holder {
    pub fn start(socket: &Path, tools: &[&str]) -> Self {
        Self::start_env(socket, tools, &[])
    }

    /// [`Holder::start`] with extra environment (`HOLD_ON_BEHALF_OF`,
    /// `HOLD_INTENT`).
    pub fn start_env(socket: &Path, tools: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(HOLDER)
            .env("HOLD_SPIFFE_ID", PLANNER)
            .envs(env.iter().copied())
            .arg("hold")
            .arg(socket)
            .arg("report.generate")
            .args(tools)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut h = Self {
            child,
            stdin,
            lines,
            task_id: String::new(),
            chain: vec![],
            jwt: String::new(),
        };
        let task = h.next_line();
        h.task_id = task
            .strip_prefix("task ")
            .unwrap_or_else(|| panic!("holder: {task}"))
            .to_owned();
        let chain = h.next_line();
        h.chain = chain
            .strip_prefix("chain ")
            .unwrap()
            .split(',')
            .map(|c| {
                (0..c.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
        h.jwt = h.next_line().strip_prefix("jwt ").unwrap().to_owned();
        h
    }

    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from the holder process")
    }

    /// Waits for a line starting with `prefix`, skipping others.
    pub fn wait_line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line starting with {prefix:?} from the holder"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// The holder's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The holder's own FetchX509SVID answer now.
    pub fn fetch(&mut self) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "fetch").unwrap();
        stdin.flush().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).expect("a fetch answer");
            if line.starts_with("svids") || line.starts_with("error") {
                return line;
            }
        }
    }
}

impl Holder {
    /// A child the holder starts (fork and exec) fetches: its answer.
    pub fn child_fetch(&mut self) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "child").unwrap();
        stdin.flush().unwrap();
        self.wait_line("child ")
            .strip_prefix("child ")
            .unwrap()
            .to_owned()
    }

    /// A grandchild the holder double-forks (re-parented before it
    /// connects) fetches: its answer.
    pub fn grandchild_fetch(&mut self, dir: &Path) -> String {
        let file = dir.join(format!("grandchild-{}", self.pid()));
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "grandchild {}", file.display()).unwrap();
        stdin.flush().unwrap();
        self.wait_line("grandchild started");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                return text.trim().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer from the grandchild"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A fresh `task_holder fetch` process (the program started again).
pub fn fresh_fetch(socket: &Path) -> String {
    let out = Command::new(HOLDER)
        .arg("fetch")
        .arg(socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Releases every quarantine and waits until the agent has let go too.
pub async fn release_all(s: &Setup) {
    let mut admin = s.server().admin();
    let list = admin
        .list_quarantines(lanyard_proto::admin::ListQuarantinesRequest { all: false })
        .await
        .unwrap()
        .into_inner()
        .quarantines;
    for q in list {
        admin
            .release_quarantine(lanyard_proto::admin::QuarantineRequest { id: q.id })
            .await
            .unwrap();
    }
    let mut state = s.agent.state.clone();
    tokio::time::timeout(WAIT, state.wait_for(|snap| snap.quarantines.is_empty()))
        .await
        .unwrap()
        .unwrap();
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer that follows the agent's FetchX509Bundles stream into live trust
/// (authorities and CRLs), as a tool server would.
pub struct Peer {
    pub trust: Arc<LiveTrust>,
    /// Every CRL set received, newest last.
    pub crls: Arc<std::sync::Mutex<Vec<Vec<Vec<u8>>>>>,
}

pub async fn follow_bundles(socket: &Path) -> Peer {
    let td = TrustDomain::new(TD).unwrap();
    let trust = LiveTrust::new(TrustState::new(td, vec![]));
    let crls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ch = lanyard_uds::unix_channel(socket).unwrap();
    let mut stream = SpiffeWorkloadApiClient::new(ch)
        .fetch_x509_bundles(header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let apply = {
        let trust = trust.clone();
        let crls = crls.clone();
        move |m: lanyard_proto::workload::X509BundlesResponse| {
            let b = m
                .bundles
                .get(&format!("spiffe://{TD}"))
                .cloned()
                .unwrap_or_default();
            let authorities = lanyard_core::x509::der_chain_split(&b).unwrap();
            let errors =
                trust.update_from_workload_api(authorities, &m.crl, std::time::SystemTime::now());
            assert!(
                errors.is_empty(),
                "CRLs from the agent must verify: {errors:?}"
            );
            crls.lock().unwrap().push(m.crl);
        }
    };
    apply(first);
    tokio::spawn(async move {
        while let Ok(Some(m)) = stream.message().await {
            apply(m);
        }
    });
    Peer { trust, crls }
}

/// A TLS tool server on the peer validator: it accepts, completes the
/// handshake and answers one byte.
pub async fn tool_server(
    trust: Arc<LiveTrust>,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
) -> std::net::SocketAddr {
    let svid = SvidResolver::new(lanyard_core::tls::certified_key(&chain, &key).unwrap());
    let cfg = server_config(trust, svid, Requirements::default());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.write_all(b"k").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects with `chain`/`key` as the client certificate; Ok when the
/// server accepted it (its byte arrives).
pub async fn handshake(
    addr: std::net::SocketAddr,
    trust: Arc<LiveTrust>,
    chain: &[Vec<u8>],
    key: &[u8],
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let ck = lanyard_core::tls::certified_key(chain, key).map_err(|e| e.to_string())?;
    let cfg = client_config(trust, None, SvidResolver::new(ck), Requirements::default());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("tool.example").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok(())
}
