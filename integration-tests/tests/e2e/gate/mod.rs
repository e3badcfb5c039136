//! lanyard-gate end to end: a real server and node agent, the gateway as
//! its own process (an enforcement-point entry naming its program), a tool
//! server and an AI agent both written with the official Python MCP SDK
//! (the agent with its task X.509-SVID for mutual TLS), and plain HTTP
//! tools.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod approval;
mod ext_authz;
mod http;
mod mcp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lanyard_integration_tests::{NODE, TestServer, own_uid, python, start_agent};
use lanyard_proto::admin::{AddCredentialRequest, CreateEntryRequest, SetPolicyRequest};
use lanyard_proto::types;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const GATE_BIN: &str = env!("CARGO_BIN_EXE_gate_proc");
pub const GATE_ID: &str = "spiffe://example.org/gate";
pub const AGENT_ID: &str = "spiffe://example.org/agent/assistant";
/// The CRM's own credential: only the gateway may hold it.
pub const CRM_SECRET: &str = "crm-secret-123";

const POLICY: &str = r#"
@id("begin")
permit (principal, action == Lanyard::Action::"BeginTask", resource);

@id("tools")
permit (principal, action == Lanyard::Action::"UseTool", resource);

@id("credentials")
permit (principal, action == Lanyard::Action::"GetCredential", resource);

@id("no-mail-out")
@reason("no email outside example.com")
forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
when { context.at_call && context.call.contains("to=eve@outside.example") };
"#;

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Gate {
    pub _proc: Proc,
    pub addr: String,
    pub stderr: PathBuf,
    pub config: PathBuf,
}

impl Gate {
    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the gateway's log holds `needle`; on timeout, fails
    /// with the log's end, so a failure says what the gateway did.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.log().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                let log = self.log();
                let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
                panic!(
                    "timed out after {timeout:?} waiting for {needle:?} in the gateway's log; its last lines, newest first:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub struct Stack {
    pub server: TestServer,
    pub _agent: lanyard_agent::Bound,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub py: PathBuf,
}

fn real_path(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

fn limits(tools: &[&str], credentials: &[&str]) -> Option<types::TaskLimits> {
    Some(types::TaskLimits {
        allowed_task_types: vec!["crm.assist".into()],
        allowed_tools: tools.iter().map(|s| (*s).to_owned()).collect(),
        max_task_ttl_seconds: 600,
        max_sensitivity: String::new(),
        allowed_credentials: credentials.iter().map(|s| (*s).to_owned()).collect(),
    })
}

/// A server (policy set, the `crm-key` secret), an agent, and two
/// entries: the gateway's (its program, an enforcement point that may hold
/// `crm-key`) and the Python AI agent's (its interpreter).
pub async fn stack() -> Stack {
    stack_with(|_| {}, "").await
}

/// [`stack`] with the server's configuration adjusted and more policies.
pub async fn stack_with(
    tweak: impl FnOnce(&mut lanyard_server::Config),
    more_policy: &str,
) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", tweak).await;
    let py = python::python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let mut admin = server.admin();
    admin
        .set_policy(SetPolicyRequest {
            text: format!("{POLICY}\n{more_policy}"),
            shadow: false,
            source_name: "gate.cedar".into(),
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            name: "crm-key".into(),
            kind: "secret".into(),
            secret: CRM_SECRET.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let uid = format!("unix:uid:{}", own_uid());
    let entry = |id: &str, path: String, ep: bool, limits| types::Entry {
        spiffe_id: id.into(),
        parent_id: NODE.into(),
        selectors: vec![uid.clone(), format!("unix:path:{path}")],
        x509_ttl_seconds: 120,
        enforcement_point: ep,
        task_limits: limits,
        ..Default::default()
    };
    for e in [
        entry(
            GATE_ID,
            real_path(Path::new(GATE_BIN)),
            true,
            limits(&[], &["crm-key"]),
        ),
        entry(
            AGENT_ID,
            real_path(&py),
            false,
            limits(
                &["crm.read", "crm.delete", "email.send", "files.read"],
                &["crm-key"],
            ),
        ),
    ] {
        admin
            .create_entry(CreateEntryRequest { entry: Some(e) })
            .await
            .unwrap();
    }
    let token = server.token(NODE).await;
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    let mut state = agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.synced && s.entries.iter().count() >= 2 && s.policy_version > 0),
    )
    .await
    .unwrap()
    .unwrap();
    let socket = dir.path().join("agent.sock");
    Stack {
        server,
        _agent: agent,
        socket,
        dir,
        py,
    }
}

/// Starts a Python script of `examples/python` with a port file; returns
/// the process and its port.
pub fn python_server(s: &Stack, script: &str, args: &[&str]) -> (Proc, u16) {
    let port_file = s.dir.path().join(format!("{script}.port"));
    let child = Command::new(&s.py)
        .arg(python::repo_root().join("examples/python").join(script))
        .arg("--port-file")
        .arg(&port_file)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            return (proc, p.trim().parse().unwrap());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{script} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the gateway on `config` (TOML; `agent_socket` and `listen` are
/// added here).
pub fn gate(s: &Stack, name: &str, config: &str) -> Gate {
    gate_then(s, name, config, |_, _| {})
}

/// [`gate`], calling `starting` with the gateway's log file and pid as soon
/// as it has spawned, before it listens.
pub fn gate_then(s: &Stack, name: &str, config: &str, starting: impl FnOnce(&Path, u32)) -> Gate {
    let path = s.dir.path().join(format!("{name}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nagent_socket = \"unix://{}\"\ntrust_domain = \"example.org\"\n{config}",
        s.socket.display()
    );
    std::fs::write(&path, text).unwrap();
    let stderr = s.dir.path().join(format!("{name}.log"));
    let child = Command::new(GATE_BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let out = proc.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    starting(&stderr, proc.0.id());
    let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
        panic!(
            "the gateway did not start: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    });
    let addr = line
        .strip_prefix("lanyard-gate listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Gate {
        _proc: proc,
        addr,
        stderr,
        config: path,
    }
}

/// Runs `examples/python/mcp_agent.py` with `args`; calls `on_line` for
/// each JSON line as it comes (e.g. to act on `waiting`); returns them all.
pub fn run_agent(
    s: &Stack,
    args: Vec<String>,
    mut on_line: impl FnMut(&Value) + Send + 'static,
) -> impl std::future::Future<Output = Vec<Value>> + Send + 'static {
    let py = s.py.clone();
    let socket = s.socket.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(py)
            .arg(python::repo_root().join("examples/python/mcp_agent.py"))
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", socket.display()),
            )
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        // A client that never ends fails the test instead of hanging it.
        let pid = child.id();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(WAIT * 6);
            if !finished.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        });
        let mut lines = vec![];
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not JSON from the agent: {line}"));
            on_line(&v);
            lines.push(v);
        }
        let status = child.wait().unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            status.success(),
            "mcp_agent.py failed ({status}): {lines:?}"
        );
        lines
    });
    async move { job.await.unwrap() }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The records the tool server saw (`/_log`).
pub async fn upstream_log(port: u16) -> Vec<Value> {
    let (status, body) = http_get(port, "/_log").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}
