//! Task-scoped identities end to end: a real server and agent, the `spiffe`
//! crate as the workload's client, a second real process of the same uid,
//! Cedar policies through the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod decisions;
mod lifecycle;

use std::process::{Command, Stdio};
use std::time::Duration;

use lanyard_core::task::{TaskRecord, TaskState};
use lanyard_core::{TaskClaims, TaskId};
use lanyard_integration_tests::{NODE, TD, TestServer, endpoint, eventually, own_uid, start_agent};
use lanyard_proto::admin::{
    CreateEntryRequest, ListTasksRequest, SetPolicyRequest, TaskRequest, TestPolicyRequest,
};
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{
    BeginTaskRequest, BeginTaskResponse, DelegateTaskRequest, EndTaskRequest,
    ListTasksRequest as OwnTasks,
};
use lanyard_proto::types;
use spiffe::X509Source;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(15);

const HOLDER: &str = env!("CARGO_BIN_EXE_task_holder");

const PLANNER: &str = "spiffe://example.org/agent/planner";

const WORKER: &str = "spiffe://example.org/agent/worker";

fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

fn tasks_client(socket: &std::path::Path) -> TaskIdentityClient<Channel> {
    TaskIdentityClient::new(lanyard_uds::unix_channel(socket).unwrap())
}

async fn begin(
    socket: &std::path::Path,
    req: BeginTaskRequest,
) -> Result<BeginTaskResponse, tonic::Status> {
    tasks_client(socket)
        .begin_task(header(req))
        .await
        .map(|r| r.into_inner())
}

fn request(task_type: &str, tools: &[&str]) -> BeginTaskRequest {
    BeginTaskRequest {
        task_type: task_type.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        ttl_seconds: 120,
        intent: "quarterly report".into(),
        on_behalf_of: "user:alice@example.com".into(),
        data_sensitivity: "confidential".into(),
        destinations: vec!["crm.example.com".into()],
        ..Default::default()
    }
}

/// An entry for this process's uid with task ceilings.
async fn task_entry(server: &TestServer, spiffe_id: &str, require_task: bool) -> types::Entry {
    server
        .admin()
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: spiffe_id.into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", own_uid())],
                x509_ttl_seconds: 60,
                require_task,
                task_limits: Some(types::TaskLimits {
                    allowed_task_types: vec!["report.generate".into(), "triage".into()],
                    allowed_tools: vec![
                        "crm.read".into(),
                        "email.send".into(),
                        "shell.exec".into(),
                    ],
                    max_task_ttl_seconds: 600,
                    max_sensitivity: "confidential".into(),
                    allowed_credentials: vec![],
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

struct Setup {
    server: TestServer,
    agent: lanyard_agent::Bound,
    _dir: tempfile::TempDir,
}

async fn setup(require_task: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    task_entry(&server, PLANNER, require_task).await;
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    // Synced: the entry is known to the agent.
    let mut state = agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.synced && s.entries.iter().count() > 0),
    )
    .await
    .unwrap()
    .unwrap();
    Setup {
        server,
        agent,
        _dir: dir,
    }
}

async fn server_task(server: &TestServer, id: &str) -> TaskRecord {
    let info = server
        .admin()
        .get_task(TaskRequest { task_id: id.into() })
        .await
        .unwrap()
        .into_inner();
    TaskRecord::try_from(info).unwrap()
}

async fn task_count(server: &TestServer) -> usize {
    server
        .admin()
        .list_tasks(ListTasksRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len()
}

/// The task claims extension decoded with x509-parser's generic DER parser
/// (independent of `lanyard_core`'s decoder): (task ID, type, tools,
/// sensitivity, grant digest, on_behalf_of).
fn decode_with_x509_parser(cert: &[u8]) -> (String, String, Vec<String>, String, Vec<u8>, String) {
    use x509_parser::der_parser::ber::BerObjectContent;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == lanyard_core::task::task_claims_oid_der().as_slice())
        .expect("task claims extension");
    assert!(!ext.critical, "must be non-critical");
    let (_, obj) = x509_parser::der_parser::parse_der(ext.value).unwrap();
    let items = obj.as_sequence().unwrap();
    let s = |i: usize| match &items[i].content {
        BerObjectContent::UTF8String(s) => s.to_string(),
        other => panic!("item {i}: {other:?}"),
    };
    assert_eq!(items[0].as_u32().unwrap(), 1);
    let tools = items[3]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let digest = items[5].as_slice().unwrap().to_vec();
    let obo = items
        .iter()
        .find(|o| o.header.raw_tag() == Some(&[0x80]))
        .map(|o| String::from_utf8(o.as_slice().unwrap().to_vec()).unwrap())
        .unwrap_or_default();
    (s(1), s(2), tools, s(4), digest, obo)
}
