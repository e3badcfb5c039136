//! Task-scoped identities end to end: a real server and agent, the `spiffe`
//! crate as the workload's client, a second real process of the same uid,
//! Cedar policies through the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_svid_becomes_the_default_svid_and_carries_exactly_the_grant() {
    let s = setup(false).await;
    let source = X509Source::builder()
        .endpoint(endpoint(&s.agent.socket))
        .build()
        .await
        .unwrap();
    let standing = source.svid().unwrap();
    assert_eq!(standing.spiffe_id().to_string(), PLANNER);
    assert_eq!(standing.hint(), None);

    let resp = begin(
        &s.agent.socket,
        request("report.generate", &["crm.read", "email.send"]),
    )
    .await
    .unwrap();
    assert_eq!(resp.granted_tools, vec!["crm.read", "email.send"]);
    assert!(resp.denied.is_empty());
    let x = resp.x509_svid.as_ref().unwrap();
    assert_eq!(x.hint, format!("task:{}", resp.task_id));

    // The spiffe crate's default SVID becomes the task SVID.
    let svid = eventually("the task SVID as default", WAIT, || {
        let src = source.clone();
        let want = format!("task:{}", resp.task_id);
        async move { src.svid().ok().filter(|s| s.hint() == Some(want.as_str())) }
    })
    .await;
    assert_eq!(svid.spiffe_id().to_string(), PLANNER);
    let leaf = svid.cert_chain()[0].as_bytes().to_vec();
    let record = server_task(&s.server, &resp.task_id).await;
    let (id, ty, tools, level, digest, obo) = decode_with_x509_parser(&leaf);
    assert_eq!(id, resp.task_id);
    assert_eq!(ty, "report.generate");
    assert_eq!(tools, vec!["crm.read", "email.send"]);
    assert_eq!(level, "confidential");
    assert_eq!(obo, "user:alice@example.com");
    assert_eq!(digest, record.grant.digest().to_vec());
    let claims = TaskClaims::from_x509(&leaf).unwrap().unwrap();
    assert_eq!(claims, record.grant.claims());
    // NotAfter never past the task.
    let info = lanyard_core::x509::CertInfo::parse(&leaf).unwrap();
    assert!(info.not_after <= lanyard_core::clock::from_unix_secs(record.grant.not_after));
    // The standing SVID is still served after the task ones.
    let ctx = source.x509_context().unwrap();
    assert_eq!(ctx.svids().len(), 2);

    // JWT-SVIDs of a process inside a task are task JWTs.
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&s.agent.socket))
        .await
        .unwrap();
    let jwt = client.fetch_jwt_svid(["crm"], None).await.unwrap();
    assert_eq!(jwt.hint(), Some(format!("task:{}", resp.task_id).as_str()));
    // The agent validates it (signature, audience, expiry) ...
    client.validate_jwt_token("crm", jwt.token()).await.unwrap();
    // ... and its payload carries the task claims.
    let payload = jwt.token().split('.').nth(1).unwrap();
    let claims_json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    let jwt_claims = TaskClaims::from_jwt_claims(&claims_json).unwrap().unwrap();
    assert_eq!(jwt_claims, record.grant.claims());
    assert_eq!(claims_json["tctx"]["destinations"][0], "crm.example.com");
    assert_eq!(claims_json["rctx"]["node"], NODE);
    assert!(claims_json.contains_key("jti"));

    // EndTask: the default SVID is the standing one again.
    tasks_client(&s.agent.socket)
        .end_task(header(EndTaskRequest {
            task_id: resp.task_id.clone(),
        }))
        .await
        .unwrap();
    eventually("the standing SVID as default again", WAIT, || {
        let src = source.clone();
        async move { src.svid().ok().filter(|s| s.hint().is_none()) }
    })
    .await;
    // The server records the end right after (reported in the background).
    eventually("the server to record the end", WAIT, || {
        let server = &s.server;
        let id = resp.task_id.clone();
        async move { (server_task(server, &id).await.state == TaskState::Ended).then_some(()) }
    })
    .await;
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_task_entry_gives_nothing_outside_a_task_and_another_process_sees_nothing() {
    let s = setup(true).await;
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&s.agent.socket))
        .await
        .unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err().to_string();
    assert!(err.contains("no identity issued"), "{err}");

    let resp = begin(&s.agent.socket, request("triage", &["crm.read"]))
        .await
        .unwrap();
    let svid = eventually("the task SVID", WAIT, || {
        let c = client.clone();
        async move { c.fetch_x509_svid().await.ok() }
    })
    .await;
    assert_eq!(svid.hint(), Some(format!("task:{}", resp.task_id).as_str()));

    // A second process of the same uid gets nothing of it.
    let out = Command::new(HOLDER)
        .args(["fetch"])
        .arg(&s.agent.socket)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with("error PermissionDenied no identity issued"),
        "{line}"
    );
    // Nor can it end or list it.
    let run = |args: &[&str]| {
        let out = Command::new(HOLDER)
            .arg(args[0])
            .arg(&s.agent.socket)
            .args(&args[1..])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run(&["end", &resp.task_id]), "error NotFound");
    assert_eq!(run(&["list"]), "tasks 0");
    // Still held by this process.
    let own = tasks_client(&s.agent.socket)
        .list_tasks(header(OwnTasks {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.tasks.len(), 1);
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exit_expiry_and_revoke_each_end_a_task() {
    let s = setup(false).await;
    // Process exit: a real child begins a task and exits.
    let mut child = Command::new(HOLDER)
        .arg("begin")
        .arg(&s.agent.socket)
        .args(["triage", "crm.read"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let child_task = line.trim().strip_prefix("task ").expect(&line).to_owned();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(
        line.starts_with(&format!("svids task:{child_task},")),
        "the holder's default SVID is its task SVID: {line}"
    );
    // This process (same uid) sees only its standing SVID.
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&s.agent.socket))
        .await
        .unwrap();
    let ctx = client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 1);
    assert_eq!(ctx.svids()[0].hint(), None);
    drop(child.stdin.take());
    child.wait().unwrap();
    let mut state = s.agent.state.clone();
    tokio::time::timeout(WAIT, state.wait_for(|snap| snap.tasks.is_empty()))
        .await
        .unwrap()
        .unwrap();
    let rec = eventually("the server to record the exit", WAIT, || {
        let server = &s.server;
        let id = child_task.clone();
        async move {
            let r = server_task(server, &id).await;
            (r.state == TaskState::Ended).then_some(r)
        }
    })
    .await;
    assert_eq!(rec.end_reason, "process exited");

    // Expiry: a 2 s task leaves the stream by itself.
    let mut short = request("triage", &["crm.read"]);
    short.ttl_seconds = 2;
    let resp = begin(&s.agent.socket, short).await.unwrap();
    let source = X509Source::builder()
        .endpoint(endpoint(&s.agent.socket))
        .build()
        .await
        .unwrap();
    let hint = format!("task:{}", resp.task_id);
    eventually("the short task first", WAIT, || {
        let src = source.clone();
        let h = hint.clone();
        async move { src.svid().ok().filter(|s| s.hint() == Some(h.as_str())) }
    })
    .await;
    eventually("the short task to expire", WAIT, || {
        let src = source.clone();
        async move { src.svid().ok().filter(|s| s.hint().is_none()) }
    })
    .await;

    // Revoke by an operator: pushed to the agent, gone from the stream.
    let resp = begin(&s.agent.socket, request("triage", &["crm.read"]))
        .await
        .unwrap();
    let hint = format!("task:{}", resp.task_id);
    eventually("the task first", WAIT, || {
        let src = source.clone();
        let h = hint.clone();
        async move { src.svid().ok().filter(|s| s.hint() == Some(h.as_str())) }
    })
    .await;
    let revoked = s
        .server
        .admin()
        .revoke_task(TaskRequest {
            task_id: resp.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, "revoked");
    eventually("the revoked task to leave the stream", WAIT, || {
        let src = source.clone();
        async move { src.svid().ok().filter(|s| s.hint().is_none()) }
    })
    .await;
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceilings_and_cedar_decide_with_reasons_and_reloads_reach_the_agent() {
    let s = setup(false).await;
    let sock = &s.agent.socket;
    // Ceilings alone (no policy set): a tool outside the entry is refused,
    // with allow_partial it is listed as denied.
    let err = begin(sock, request("report.generate", &["crm.read", "db.drop"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("db.drop"), "{}", err.message());
    let mut partial = request("report.generate", &["crm.read", "db.drop"]);
    partial.allow_partial = true;
    let r = begin(sock, partial).await.unwrap();
    assert_eq!(r.granted_tools, vec!["crm.read"]);
    assert_eq!(r.denied[0].tool, "db.drop");
    // Above the entry's maximum sensitivity.
    let mut secret = request("report.generate", &["crm.read"]);
    secret.data_sensitivity = "restricted".into();
    let err = begin(sock, secret).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("sensitivity"), "{}", err.message());

    // Cedar on top.
    let policy = r#"
        @id("reports")
        permit (principal == Lanyard::Workload::"spiffe://example.org/agent/planner",
                action == Lanyard::Action::"BeginTask", resource);
        @id("tools")
        permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("no-shell")
        @reason("shell access is never granted to agents")
        forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"shell.exec");
        @id("no-triage-for-bob")
        @reason("bob's tickets are handled by humans")
        forbid (principal, action == Lanyard::Action::"BeginTask", resource == Lanyard::TaskType::"triage")
        when { context.on_behalf_of == "user:bob@example.com" };
    "#;
    let mut admin = s.server.admin();
    let v = admin
        .set_policy(SetPolicyRequest {
            text: policy.into(),
            shadow: false,
            source_name: "policy.cedar".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.policy_count, 4);
    // Pushed to the agent.
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.policy_version == v.version),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(state.borrow().policy_text.contains("no-shell"));

    assert!(
        begin(sock, request("report.generate", &["crm.read"]))
            .await
            .is_ok()
    );
    let err = begin(
        sock,
        request("report.generate", &["crm.read", "shell.exec"]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("no-shell")
            && err
                .message()
                .contains("shell access is never granted to agents"),
        "{}",
        err.message()
    );
    let mut bob = request("triage", &["crm.read"]);
    bob.on_behalf_of = "user:bob@example.com".into();
    let err = begin(sock, bob).await.unwrap_err();
    assert!(
        err.message().contains("no-triage-for-bob") && err.message().contains("handled by humans"),
        "{}",
        err.message()
    );
    // A dry run says the same and creates nothing.
    let before = task_count(&s.server).await;
    let t = admin
        .test_policy(TestPolicyRequest {
            spiffe_id: PLANNER.into(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into(), "shell.exec".into()],
            data_sensitivity: "internal".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.task_allowed);
    assert!(t.tools[0].allowed && !t.tools[1].allowed);
    assert_eq!(t.tools[1].policy_ids, vec!["no-shell"]);
    assert_eq!(task_count(&s.server).await, before);

    // A malformed set is refused with its location; the old one stays.
    let err = admin
        .set_policy(SetPolicyRequest {
            text: "permit (principal, action, resource)\nwhen { context.nope };".into(),
            shadow: false,
            source_name: "bad.cedar".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("bad.cedar:2:"),
        "{}",
        err.message()
    );
    assert!(
        begin(sock, request("report.generate", &["crm.read"]))
            .await
            .is_ok()
    );
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_narrows_is_single_use_and_ending_the_parent_ends_the_child() {
    let s = setup(false).await;
    task_entry(&s.server, WORKER, false).await;
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.entries.iter().count() == 2),
    )
    .await
    .unwrap()
    .unwrap();
    let sock = &s.agent.socket;
    let mut parent_req = request("report.generate", &["crm.read", "email.send"]);
    parent_req.spiffe_id = PLANNER.into();
    let parent = begin(sock, parent_req).await.unwrap();
    let mut c = tasks_client(sock);
    let delegate = |tools: &[&str], to: &str, ttl: i64| DelegateTaskRequest {
        task_id: parent.task_id.clone(),
        to_spiffe_id: to.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        ttl_seconds: ttl,
    };
    // Tools outside the parent's grant, or a longer life, are refused.
    let err = c
        .delegate_task(header(delegate(&["shell.exec"], WORKER, 60)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = c
        .delegate_task(header(delegate(&["crm.read"], WORKER, 100_000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = c
        .delegate_task(header(delegate(&["crm.read"], "not a spiffe id", 60)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let token = c
        .delegate_task(header(delegate(&["crm.read"], WORKER, 60)))
        .await
        .unwrap()
        .into_inner()
        .delegation_token;
    let child_req = |tools: &[&str], token: &str| {
        let mut r = request("report.generate", tools);
        r.spiffe_id = WORKER.into();
        r.ttl_seconds = 60;
        r.parent_task_id = parent.task_id.clone();
        r.delegation_token = token.into();
        r
    };
    // An over-broad child is refused (and the token is spent).
    let err = begin(sock, child_req(&["crm.read", "email.send"], &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("outside the delegated grant"),
        "{}",
        err.message()
    );
    let err = begin(sock, child_req(&["crm.read"], &token))
        .await
        .unwrap_err();
    assert!(err.message().contains("already used"), "{}", err.message());

    let token = c
        .delegate_task(header(delegate(&["crm.read"], WORKER, 60)))
        .await
        .unwrap()
        .into_inner()
        .delegation_token;
    let child = begin(sock, child_req(&["crm.read"], &token)).await.unwrap();
    assert_eq!(child.granted_tools, vec!["crm.read"]);
    let leaf = lanyard_core::x509::der_chain_split(&child.x509_svid.unwrap().x509_svid).unwrap();
    let claims = TaskClaims::from_x509(&leaf[0]).unwrap().unwrap();
    assert_eq!(
        claims.parent_task_id,
        Some(TaskId::new(&parent.task_id).unwrap())
    );
    let record = server_task(&s.server, &child.task_id).await;
    assert_eq!(record.grant.chain[0].spiffe_id.as_str(), PLANNER);
    // The token cannot be used twice.
    let err = begin(sock, child_req(&["crm.read"], &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Ending the parent revokes the child everywhere.
    c.end_task(header(EndTaskRequest {
        task_id: parent.task_id.clone(),
    }))
    .await
    .unwrap();
    let child_id = child.task_id.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.tasks.iter().all(|t| t.id() != child_id)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        server_task(&s.server, &child.task_id).await.state,
        TaskState::Revoked
    );
    let own = c
        .list_tasks(header(OwnTasks {}))
        .await
        .unwrap()
        .into_inner();
    assert!(own.tasks.is_empty(), "{:?}", own.tasks);
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_requests_are_refused_and_create_nothing() {
    let s = setup(false).await;
    let sock = &s.agent.socket;
    let cases: Vec<(&str, BeginTaskRequest, tonic::Code)> = vec![
        (
            "unknown task type",
            request("deploy.prod", &[]),
            tonic::Code::PermissionDenied,
        ),
        (
            "malformed task type",
            request("../etc", &[]),
            tonic::Code::InvalidArgument,
        ),
        (
            "10,000 tools",
            BeginTaskRequest {
                tools: (0..10_000).map(|i| format!("t{i}")).collect(),
                ..request("triage", &[])
            },
            tonic::Code::InvalidArgument,
        ),
        (
            "ttl 0",
            BeginTaskRequest {
                ttl_seconds: 0,
                ..request("triage", &[])
            },
            tonic::Code::InvalidArgument,
        ),
        (
            "ttl above the ceiling",
            BeginTaskRequest {
                ttl_seconds: 3600,
                ..request("triage", &[])
            },
            tonic::Code::PermissionDenied,
        ),
        (
            "unknown sensitivity",
            BeginTaskRequest {
                data_sensitivity: "top-secret".into(),
                ..request("triage", &[])
            },
            tonic::Code::InvalidArgument,
        ),
        (
            "a SPIFFE ID that is not the caller's",
            BeginTaskRequest {
                spiffe_id: "spiffe://example.org/someone-else".into(),
                ..request("triage", &[])
            },
            tonic::Code::PermissionDenied,
        ),
        (
            "an unknown delegation token",
            BeginTaskRequest {
                parent_task_id: "00112233445566778899aabbccddeeff".into(),
                delegation_token: "forged".into(),
                ..request("triage", &[])
            },
            tonic::Code::PermissionDenied,
        ),
        (
            "a malformed parent task ID",
            BeginTaskRequest {
                parent_task_id: "nope".into(),
                delegation_token: "forged".into(),
                ..request("triage", &[])
            },
            tonic::Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in cases {
        let err = begin(sock, req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what}");
    }
    // Without the security header.
    let err = tasks_client(sock)
        .begin_task(request("triage", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(task_count(&s.server).await, 0, "nothing was created");
    // Still serving.
    assert!(begin(sock, request("triage", &["crm.read"])).await.is_ok());
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_bindings_survive_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    task_entry(&server, PLANNER, true).await;
    let agent = start_agent(dir.path(), server.addr(), Some(token.clone()))
        .await
        .unwrap();
    let mut state = agent.state.clone();
    tokio::time::timeout(WAIT, state.wait_for(|s| s.synced))
        .await
        .unwrap()
        .unwrap();
    let resp = begin(&agent.socket, request("triage", &["crm.read"]))
        .await
        .unwrap();
    let socket = agent.socket.clone();
    agent.shutdown().await;
    let agent = start_agent(dir.path(), server.addr(), None).await.unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&socket))
        .await
        .unwrap();
    let svid = eventually("the task SVID after the restart", WAIT, || {
        let c = client.clone();
        async move { c.fetch_x509_svid().await.ok() }
    })
    .await;
    assert_eq!(svid.hint(), Some(format!("task:{}", resp.task_id).as_str()));
    // Re-minted: a new certificate for the same task.
    let leaf = svid.cert_chain()[0].as_bytes();
    assert_eq!(
        TaskClaims::from_x509(leaf)
            .unwrap()
            .unwrap()
            .task_id
            .as_str(),
        resp.task_id
    );
    let _ = TD;
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_begins_a_task_and_uses_its_svid_for_mutual_tls() {
    use lanyard_integration_tests::python;
    let py = python::python(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    let s = setup(true).await;
    let script = python::repo_root().join("examples/python/task_agent.py");
    let socket = s.agent.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        let out = Command::new(&py)
            .arg(&script)
            .arg("--socket")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--type",
                "report.generate",
                "--tool",
                "crm.read",
                "--audience",
                "crm",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python task agent failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    })
    .await
    .unwrap();
    let id = out["task_id"].as_str().unwrap();
    let hint = format!("task:{id}");
    assert_eq!(out["granted_tools"][0], "crm.read");
    assert_eq!(out["begin_hint"], hint.as_str());
    assert_eq!(out["begin_jwt"], true);
    assert_eq!(out["default_hint"], hint.as_str());
    assert_eq!(out["default_spiffe_id"], PLANNER);
    assert_eq!(out["tool_reply"], "ok");
    assert_eq!(out["tool_server"]["peer_spiffe_id"], PLANNER);
    assert_eq!(out["tool_server"]["peer_has_task_claims"], true);
    assert_eq!(out["tool_server"]["peer_task_id_in_cert"], true);
    assert_eq!(out["jwt_claims"]["txn"], id);
    assert_eq!(out["jwt_claims"]["scope"], "report.generate");
    assert_eq!(out["jwt_claims"]["tctx"]["tools"][0], "crm.read");
    assert_eq!(out["tasks_after_end"], 0);
    eventually("the server to record the end", WAIT, || {
        let server = &s.server;
        async move { (server_task(server, id).await.state == TaskState::Ended).then_some(()) }
    })
    .await;
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_matching_the_entry_only_without_its_program_gets_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    // The entry names a program this test process is not.
    server
        .admin()
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: PLANNER.into(),
                parent_id: NODE.into(),
                selectors: vec![
                    format!("unix:uid:{}", own_uid()),
                    "unix:path:/opt/agents/planner".into(),
                ],
                require_task: true,
                task_limits: Some(types::TaskLimits {
                    allowed_task_types: vec!["*".into()],
                    allowed_tools: vec!["*".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
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
    // A runner may begin the task (it would exec into the program) ...
    let mut req = request("triage", &["crm.read"]);
    req.jwt_audiences = vec!["crm".into()];
    let resp = begin(&agent.socket, req).await.unwrap();
    assert!(!resp.task_id.is_empty());
    // ... but holds no credential of it while it is not that program.
    assert!(resp.x509_svid.is_none());
    assert!(resp.jwt_svid.is_none());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err().to_string();
    assert!(err.contains("no identity issued"), "{err}");
    assert!(client.fetch_jwt_svid(["crm"], None).await.is_err());
    // Nor can it hand the task's tools on: delegation takes the entry in
    // full, like its credentials.
    let err = tasks_client(&agent.socket)
        .delegate_task(header(DelegateTaskRequest {
            task_id: resp.task_id.clone(),
            to_spiffe_id: WORKER.into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 60,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("in full"), "{err:?}");
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_cannot_hold_unbounded_tasks() {
    let s = setup(false).await;
    for _ in 0..lanyard_agent::api::MAX_TASKS_PER_PROCESS {
        begin(&s.agent.socket, request("triage", &["crm.read"]))
            .await
            .unwrap();
    }
    let err = begin(&s.agent.socket, request("triage", &["crm.read"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    s.agent.shutdown().await;
    s.server.stop().await;
}
