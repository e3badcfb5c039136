//! A task's life: its SVID, require-task entries, how it ends, its bindings across an agent restart, the per-process bound.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

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
