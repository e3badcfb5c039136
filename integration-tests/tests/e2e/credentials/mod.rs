//! Task-bound credentials end to end: a real server (discovery served) and
//! agent, an OAuth authorization server in Python over HTTPS that verifies
//! the task's JWT-SVIDs from the discovery document alone (PyJWT), and the
//! broker on the agent's socket. Exchange, narrowed scopes, delegation
//! (`act`), revocation when the task ends, refusals (outside a task, an
//! entry that does not allow the provider, a policy, a quarantine), a
//! transaction token and a revealed secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod exchange;
mod release;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lanyard_integration_tests::{NODE, TestServer, eventually, own_uid, python, start_agent};
use lanyard_proto::admin::{AddCredentialRequest, CreateEntryRequest};
use lanyard_proto::broker::credential_broker_client::CredentialBrokerClient;
use lanyard_proto::broker::{GetCredentialRequest, GetCredentialResponse};
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{BeginTaskRequest, BeginTaskResponse};
use lanyard_proto::types;
use lanyard_server::config::oidc::{OidcServe, OidcSettings, OidcTransport};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const PLANNER: &str = "spiffe://example.org/agent/planner";
const WORKER: &str = "spiffe://example.org/agent/worker";
const AS_AUD: &str = "https://as.test";

fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python authorization server, killed when dropped.
struct AuthServer {
    child: Child,
    base: String,
    ca_pem: String,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The authorization server's certificate and key, written under `dir`
/// (the server must trust it from its start).
fn as_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("as.crt"), dir.join("as.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

impl AuthServer {
    fn start(dir: &Path, issuer: &str, token_ttl: u64) -> Self {
        let (cert_path, key_path) = (dir.join("as.crt"), dir.join("as.key"));
        let ca_pem = std::fs::read_to_string(&cert_path).unwrap();
        let port_file = dir.join("as.port");
        let py = python::python(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let child = Command::new(py)
            .arg(python::repo_root().join("examples/python/loopback_as.py"))
            .args(["--issuer", issuer, "--audience", AS_AUD])
            .args(["--scope", "repo:read", "--scope", "issues:write"])
            .args(["--token-ttl", &token_ttl.to_string()])
            .arg("--cert")
            .arg(&cert_path)
            .arg("--key")
            .arg(&key_path)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the authorization server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            base: format!("https://127.0.0.1:{port}"),
            ca_pem,
        }
    }

    fn client(&self) -> lanyard_fetch::Client {
        lanyard_fetch::Client::new(
            lanyard_fetch::Trust::Pem(self.ca_pem.clone().into_bytes()),
            WAIT,
            1 << 20,
        )
        .unwrap()
    }

    /// What the authorization server saw.
    async fn log(&self) -> Vec<Value> {
        let body = self
            .client()
            .get(&format!("{}/_log", self.base), None)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// The protected API's answer for `token`: (status, body).
    async fn whoami(&self, token: &str) -> (u16, Value) {
        match self
            .client()
            .get(&format!("{}/api/whoami", self.base), Some(token))
            .await
        {
            Ok(b) => (200, serde_json::from_slice(&b).unwrap()),
            Err(lanyard_fetch::FetchError::Status(_, s)) => (s, Value::Null),
            Err(e) => panic!("{e}"),
        }
    }
}

struct Setup {
    /// The server's JWT issuer (discovery served there).
    issuer: String,
    server: TestServer,
    agent: lanyard_agent::Bound,
    auth: AuthServer,
    _dir: tempfile::TempDir,
}

/// A server serving discovery, trusting the authorization server's
/// certificate, with the providers `github` (token exchange, with
/// revocation), `ci` (client credentials), `internal` (txn-token),
/// `api-key` (secret, revealed), `hidden` (secret, not revealed) and
/// `norevoke` (token exchange, no client auth, no revocation); an
/// entry for this uid allowing all but `ci`; an agent.
async fn setup(token_ttl: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let (ca_file, _, _) = as_certificate(dir.path());
    let oidc = OidcSettings {
        issuer: issuer.clone(),
        serve: Some(OidcServe {
            bind: format!("127.0.0.1:{port}").parse().unwrap(),
            transport: OidcTransport::PlainHttp,
        }),
    };
    let ca = ca_file.clone();
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", move |c| {
        c.oidc = oidc;
        c.credential_ca_file = Some(ca);
    })
    .await;
    let auth = AuthServer::start(dir.path(), &issuer, token_ttl);
    let mut admin = server.admin();
    let add = |name: &str, kind: &str| AddCredentialRequest {
        name: name.into(),
        kind: kind.into(),
        ..Default::default()
    };
    admin
        .add_credential(AddCredentialRequest {
            token_url: format!("{}/token", auth.base),
            audience: AS_AUD.into(),
            scopes: vec!["repo:read".into(), "issues:write".into()],
            revocation_url: format!("{}/revoke", auth.base),
            ..add("github", "oauth-exchange")
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            token_url: format!("{}/token", auth.base),
            audience: AS_AUD.into(),
            client_auth: "none".into(),
            ..add("norevoke", "oauth-exchange")
        })
        .await
        .unwrap();
    // An authorization server nobody runs, and scopes the real one refuses.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            token_url: format!("https://{closed}/token"),
            audience: AS_AUD.into(),
            ..add("down", "oauth-exchange")
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            token_url: format!("{}/token", auth.base),
            audience: AS_AUD.into(),
            scopes: vec!["admin:org".into()],
            revocation_url: format!("{}/revoke", auth.base),
            ..add("wide", "oauth-exchange")
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            token_url: format!("{}/token", auth.base),
            audience: AS_AUD.into(),
            grant: "client-credentials".into(),
            revocation_url: format!("{}/revoke", auth.base),
            ..add("ci", "oauth-exchange")
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            audience: "spiffe://example.org".into(),
            ..add("internal", "txn-token")
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            secret: b"crm-key-123".to_vec(),
            reveal: true,
            ..add("api-key", "secret")
        })
        .await
        .unwrap();
    admin
        .add_credential(AddCredentialRequest {
            secret: b"never-to-a-workload".to_vec(),
            ..add("hidden", "secret")
        })
        .await
        .unwrap();
    for id in [PLANNER, WORKER] {
        admin
            .create_entry(CreateEntryRequest {
                entry: Some(types::Entry {
                    spiffe_id: id.into(),
                    parent_id: NODE.into(),
                    selectors: vec![format!("unix:uid:{}", own_uid())],
                    x509_ttl_seconds: 60,
                    task_limits: Some(types::TaskLimits {
                        allowed_task_types: vec!["report.generate".into()],
                        allowed_tools: vec!["crm.read".into()],
                        max_task_ttl_seconds: 600,
                        max_sensitivity: "confidential".into(),
                        allowed_credentials: vec![
                            "github".into(),
                            "norevoke".into(),
                            "down".into(),
                            "wide".into(),
                            "internal".into(),
                            "api-key".into(),
                            "hidden".into(),
                        ],
                    }),
                    ..Default::default()
                }),
            })
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
        state.wait_for(|s| s.synced && s.entries.iter().count() > 0),
    )
    .await
    .unwrap()
    .unwrap();
    Setup {
        issuer,
        server,
        agent,
        auth,
        _dir: dir,
    }
}

fn broker(socket: &Path) -> CredentialBrokerClient<tonic::transport::Channel> {
    CredentialBrokerClient::new(lanyard_uds::unix_channel(socket).unwrap())
}

async fn get(
    socket: &Path,
    name: &str,
    scopes: &[&str],
    task_id: &str,
) -> Result<GetCredentialResponse, tonic::Status> {
    broker(socket)
        .get_credential(header(GetCredentialRequest {
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            task_id: task_id.into(),
            ..Default::default()
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn tasks(socket: &Path) -> TaskIdentityClient<tonic::transport::Channel> {
    TaskIdentityClient::new(lanyard_uds::unix_channel(socket).unwrap())
}

fn task_request() -> BeginTaskRequest {
    BeginTaskRequest {
        spiffe_id: PLANNER.into(),
        task_type: "report.generate".into(),
        tools: vec!["crm.read".into()],
        ttl_seconds: 300,
        on_behalf_of: "user:alice@example.com".into(),
        data_sensitivity: "internal".into(),
        ..Default::default()
    }
}

async fn begin(socket: &Path, req: BeginTaskRequest) -> BeginTaskResponse {
    tasks(socket)
        .begin_task(header(req))
        .await
        .unwrap()
        .into_inner()
}

/// Waits for the authorization server to log an event matching `pred`.
async fn logged(auth: &AuthServer, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(what, WAIT, || async {
        auth.log().await.into_iter().find(|e| pred(e))
    })
    .await
}
