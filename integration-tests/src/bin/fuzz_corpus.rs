//! Writes the fuzz targets' seed corpora from real traffic and real
//! artifacts: a real server and agent in a temp dir, the bytes real clients
//! (the `spiffe` crate over tonic, Python's grpcio) send on the agent's
//! socket (recorded by a proxy in front of it), and the CSRs, SVIDs, CRLs,
//! JWTs, bundles, task claims, entries, audit lines and kubelet pod lists
//! they exchange.
//!
//!   cargo run -p lanyard-integration-tests --bin fuzz_corpus -- fuzz/corpus
//!
//! Seeds are named by what they came from; running it again adds the same
//! files (contents differ: keys and times are fresh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_integration_tests::{NODE, TestServer, endpoint, eventually, own_uid, python};
use lanyard_proto::task::BeginTaskRequest;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::types;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn seed(out: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    println!("{target}/{name}: {} bytes", bytes.len());
}

/// What one client connection sent so far.
type Sent = Arc<Mutex<Vec<u8>>>;

/// A proxy on `front` to the agent's socket `back` that records what each
/// client connection sends (as it goes: long-lived streams stay open).
fn record(front: PathBuf, back: PathBuf) -> Arc<Mutex<Vec<Sent>>> {
    let seen: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::UnixListener::bind(&front).unwrap();
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let back = back.clone();
            let sent: Sent = Arc::default();
            keep.lock().unwrap().push(sent.clone());
            tokio::spawn(async move {
                let Ok(mut agent) = tokio::net::UnixStream::connect(&back).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut ar, mut aw) = agent.split();
                let up = async {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || aw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = aw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut ar, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    seen
}

/// The h2_authority target prepends the preface and takes a first byte as
/// the read size.
fn h2_seed(sent: &[u8]) -> Vec<u8> {
    let body = sent.strip_prefix(PREFACE).unwrap_or(sent);
    let mut v = vec![5u8];
    v.extend_from_slice(body);
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let mut admin = server.admin();
    admin
        .create_entry(lanyard_proto::admin::CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: "spiffe://example.org/agent/planner".into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", own_uid())],
                x509_ttl_seconds: 60,
                task_limits: Some(types::TaskLimits {
                    allowed_task_types: vec!["report.generate".into()],
                    allowed_tools: vec!["crm.read".into(), "email.send".into()],
                    max_task_ttl_seconds: 600,
                    max_sensitivity: "confidential".into(),
                    allowed_credentials: vec![],
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let agent = lanyard_integration_tests::start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    let front = dir.path().join("recorded.sock");
    let sent = record(front.clone(), agent.socket.clone());

    // The spiffe crate (tonic) through the recorder.
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&front))
        .await
        .unwrap();
    let ctx = eventually("an X.509 context", WAIT, || {
        let c = client.clone();
        async move { c.fetch_x509_context().await.ok() }
    })
    .await;
    let jwt = client
        .fetch_jwt_svid(["tools.example.org"], None)
        .await
        .unwrap();
    let _ = client.fetch_jwt_bundles().await;

    // Python's grpcio (the C-core) through the recorder.
    let py = python::python(&std::env::temp_dir().join("lanyard-corpus"));
    let script = python::repo_root().join("examples/python/workload_check.py");
    let status = std::process::Command::new(&py)
        .arg(&script)
        .arg("--socket")
        .arg(format!("unix://{}", front.display()))
        .args(["--audience", "tools.example.org"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the python client failed");

    // The raw HTTP/2 requests of the interop tests: the :authority forms
    // clients send on a unix socket (grpc-java's raw path, C-core's
    // percent-encoded one, none at all).
    let raw_path = front.display().to_string();
    for authority in [
        Some(raw_path.as_bytes().to_vec()),
        Some(raw_path.replace('/', "%2F").into_bytes()),
        None,
    ] {
        let _ = lanyard_integration_tests::h2raw::call(
            &front,
            authority.as_deref(),
            "/SpiffeWorkloadAPI/FetchX509SVID",
            &[("workload.spiffe.io", "true")],
            &[],
            1,
        )
        .await;
    }

    // A task, for its claims.
    let ch = lanyard_uds::unix_channel(&front).unwrap();
    let mut req = tonic::Request::new(BeginTaskRequest {
        task_type: "report.generate".into(),
        tools: vec!["crm.read".into()],
        ttl_seconds: 120,
        data_sensitivity: "internal".into(),
        on_behalf_of: "user:alice@example.com".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let begun = TaskIdentityClient::new(ch)
        .begin_task(req)
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // What the clients sent.
    let conns: Vec<Vec<u8>> = sent
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.lock().unwrap().clone())
        .collect();
    for (i, bytes) in conns
        .iter()
        .enumerate()
        .filter(|(_, b)| b.starts_with(PREFACE))
    {
        seed(
            &out,
            "h2_authority",
            &format!("client-{i}"),
            &h2_seed(bytes),
        );
    }

    // What they were given.
    let svid = ctx.default_svid().unwrap();
    let mut chain = Vec::new();
    for c in svid.cert_chain() {
        chain.extend_from_slice(&u16::try_from(c.as_bytes().len()).unwrap().to_be_bytes());
        chain.extend_from_slice(c.as_bytes());
    }
    seed(&out, "x509_svid", "agent-svid-chain", &chain);
    let task_chain =
        lanyard_core::x509::der_chain_split(&begun.x509_svid.unwrap().x509_svid).unwrap();
    if let Ok(Some(claims)) = lanyard_core::TaskClaims::from_x509(&task_chain[0]) {
        seed(&out, "task_claims", "task-svid-claims", &claims.to_der());
    }
    seed(
        &out,
        "jwt_svid",
        "agent-jwt",
        format!("{}\ntools.example.org", jwt.token()).as_bytes(),
    );
    let key = lanyard_core::x509::SvidKey::generate().unwrap();
    let id = lanyard_core::SpiffeId::new("spiffe://example.org/agent/planner").unwrap();
    seed(&out, "csr", "agent-csr", &key.csr(&id).unwrap());
    let list = admin
        .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    if let Some(crl) = list.crls.first() {
        seed(&out, "crl", "server-crl", crl);
    }
    let bundle = admin
        .get_bundle(lanyard_proto::admin::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let json = lanyard_core::jwt::spiffe_bundle_json(
        &bundle.x509_authorities,
        &bundle
            .jwt_authorities
            .iter()
            .cloned()
            .map(lanyard_core::jwt::JwtAuthority::from)
            .collect::<Vec<_>>(),
        bundle.sequence,
        300,
    );
    if let Ok(json) = json {
        seed(&out, "bundle_json", "server-bundle", json.as_bytes());
    }
    for (i, e) in server.entries().await.iter().enumerate() {
        seed(
            &out,
            "proto_entry",
            &format!("entry-{i}"),
            &e.encode_to_vec(),
        );
        for (j, s) in e.selectors.iter().enumerate() {
            seed(&out, "selector", &format!("entry-{i}-{j}"), s.as_bytes());
        }
        seed(
            &out,
            "spiffe_id",
            &format!("entry-{i}"),
            e.spiffe_id.as_bytes(),
        );
    }
    let audit_dir = dir.path().join("data").join("audit");
    let mut lines = String::new();
    for f in std::fs::read_dir(&audit_dir).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("seg-") {
            lines.push_str(&std::fs::read_to_string(f.path()).unwrap());
        }
    }
    let head: String = lines.lines().take(40).collect::<Vec<_>>().join("\n");
    seed(&out, "audit_log", "server-segment", head.as_bytes());
    let pods = std::fs::read(python::repo_root().join("core/testdata/kubelet-pods.json")).unwrap();
    seed(&out, "k8s_inputs", "kubelet-pods.json", &pods);
    agent.shutdown().await;
    server.stop().await;
}
