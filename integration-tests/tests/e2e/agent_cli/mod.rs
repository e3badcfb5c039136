//! The real `lanyard-agent` binary against a server running in this test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, CreateJoinTokenRequest};
use lanyard_proto::types::Entry;
use lanyard_uds::unix_channel;

mod front_door;
mod tool_check;

/// The agent's command line, as a process.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_agent_proc");
/// The agent's SPIFFE ID in these tests.
pub(crate) const NODE: &str = "spiffe://example.org/node/n1";

/// An agent process, killed when dropped.
pub(crate) struct Agent(pub(crate) Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uid() -> u32 {
    lanyard_uds::own_uid().unwrap()
}

async fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server running in this test, with a join token for [`NODE`] and its
/// trust bundle written to `bundle.pem` in the test's directory.
struct Cluster {
    server: lanyard_server::Bound,
    admin: AdminClient<tonic::transport::Channel>,
    token: String,
}

async fn cluster(d: &Path) -> Cluster {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = lanyard_server::Config::for_dir("example.org", d).unwrap();
    let server = lanyard_server::build(cfg).await.unwrap();
    let mut admin = AdminClient::new(unix_channel(&server.admin_socket).unwrap());
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            agent_id: NODE.into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let bundle = lanyard_core::x509::der_to_pem("CERTIFICATE", &server.ca.snapshot().authorities);
    std::fs::write(d.join("bundle.pem"), bundle).unwrap();
    Cluster {
        server,
        admin,
        token,
    }
}

impl Cluster {
    /// `lanyard-agent run` against this server, trusting `bundle` and
    /// serving `agent.sock` in `d`.
    fn agent(&self, d: &Path, bundle: &str) -> Command {
        let mut c = Command::new(BIN);
        c.args(["run", "--trust-domain", "example.org", "--server"])
            .arg(self.server.server_addr.to_string())
            .args(["--join-token", &self.token, "--trust-bundle"])
            .arg(d.join(bundle))
            .arg("--socket")
            .arg(d.join("agent.sock"))
            .arg("--data-dir")
            .arg(d.join("agent-data"));
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fetch_write_watch_and_healthcheck() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = cluster(d).await;
    let mut admin = c.admin.clone();
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: "spiffe://example.org/cli".into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", uid())],
                hint: "cli-hint".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let socket = d.join("agent.sock");
    let _agent = Agent(
        c.agent(d, "bundle.pem")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket).await;

    let out_dir = d.join("out");
    let o = tokio::task::spawn_blocking({
        let socket = socket.clone();
        let out_dir = out_dir.clone();
        move || {
            Command::new(BIN)
                .args(["api", "fetch", "x509", "--timeout", "20s", "--write"])
                .arg(&out_dir)
                .env(
                    "SPIFFE_ENDPOINT_SOCKET",
                    format!("unix://{}", socket.display()),
                )
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("SPIFFE ID:\t\tspiffe://example.org/cli"),
        "{stdout}"
    );
    assert!(stdout.contains("Hint:\t\t\tcli-hint"), "{stdout}");
    for f in ["svid.0.pem", "svid.0.key", "bundle.0.pem"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out_dir.join("svid.0.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let chain =
        lanyard_core::x509::pem_to_der_certs(&std::fs::read(out_dir.join("svid.0.pem")).unwrap())
            .unwrap();
    let ca =
        lanyard_core::x509::pem_to_der_certs(&std::fs::read(out_dir.join("bundle.0.pem")).unwrap())
            .unwrap();
    let id = lanyard_core::x509::validate_x509_svid(
        &chain,
        &lanyard_core::TrustDomain::new("example.org").unwrap(),
        &ca,
        lanyard_core::x509::PeerUsage::Server,
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/cli");

    let json = Command::new(BIN)
        .args(["api", "fetch", "x509", "--output", "json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["svids"][0]["spiffe_id"], "spiffe://example.org/cli");

    let h = Command::new(BIN)
        .args(["healthcheck", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(h.status.success());

    // `api watch` prints the first update at once.
    let mut watch = Command::new(BIN)
        .args(["api", "watch", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(stdout);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(line.starts_with("Received 1 svid(s)"), "{line}");

    c.server.shutdown().await;
}

#[test]
fn client_commands_explain_a_missing_socket() {
    let o = Command::new(BIN)
        .args(["api", "fetch", "x509", "--socket", "/nonexistent/api.sock"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is lanyard-agent running"), "{err}");
    let o = Command::new(BIN)
        .args(["run", "--trust-domain", "example.org", "--socket"])
        .arg("/nonexistent-dir-for-test/a.sock")
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("lanyard-cli-{}", std::process::id())))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--join-token"), "{err}");
}
