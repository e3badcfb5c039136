//! Deciding a task: ceilings and Cedar, delegation, bad requests, callers that do not match in full.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

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
    assert_eq!(out["granted_tools"][0], "crm.read");
    assert_eq!(out["default_spiffe_id"], PLANNER);
    assert_eq!(out["default_task_id"], id);
    assert_eq!(out["tool_reply"], "ok");
    assert_eq!(out["tool_server"]["peer_spiffe_id"], PLANNER);
    assert_eq!(out["tool_server"]["peer_task_id"], id);
    assert_eq!(out["jwt_claims"]["txn"], id);
    assert_eq!(out["jwt_claims"]["scope"], "report.generate");
    assert_eq!(out["jwt_claims"]["tctx"]["tools"][0], "crm.read");
    assert_eq!(out["ended"], true);
    eventually("the server to record the end", WAIT, || {
        let server = &s.server;
        async move { (server_task(server, id).await.state == TaskState::Ended).then_some(()) }
    })
    .await;
    s.agent.shutdown().await;
    s.server.stop().await;
}
