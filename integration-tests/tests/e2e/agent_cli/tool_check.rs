//! `tool check`: a tool-call decision from the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// `tool check` decides a call as an enforcement point would: refused
/// (exit 2, saying why) until its caller is one, then exit 0 for an
/// allowed call and 1 for a denied one, with the reason and the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_check_answers_with_its_exit_status() {
    use lanyard_proto::task::BeginTaskRequest;
    use lanyard_proto::task::task_identity_client::TaskIdentityClient;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = cluster(d).await;
    let mut admin = c.admin.clone();
    // The workload: this test process (its uid).
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: "spiffe://example.org/agent/planner".into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", uid())],
                task_limits: Some(lanyard_proto::types::TaskLimits {
                    allowed_task_types: vec!["report.generate".into()],
                    allowed_tools: vec!["crm.read".into(), "email.send".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .set_policy(lanyard_proto::admin::SetPolicyRequest {
            text: r#"@id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
                @id("read-only") permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read");
                @id("not-13") @reason("account 13 is off limits")
                forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read")
                when { context.at_call && context.call.contains("account=13") };"#
                .into(),
            shadow: false,
            source_name: "p.cedar".into(),
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
    // A task of this process, and its X.509-SVID as a PEM file.
    let begun = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = TaskIdentityClient::new(unix_channel(&socket).unwrap())
                .begin_task(lanyard_agent::cli::with_header(BeginTaskRequest {
                    task_type: "report.generate".into(),
                    tools: vec!["crm.read".into()],
                    ttl_seconds: 300,
                    ..Default::default()
                }))
                .await;
            match r {
                Ok(r) => break r.into_inner(),
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let chain = lanyard_core::x509::der_chain_split(&begun.x509_svid.unwrap().x509_svid).unwrap();
    let pem = lanyard_core::x509::der_to_pem("CERTIFICATE", &chain);
    std::fs::write(d.join("svid.pem"), pem).unwrap();
    let check = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(["tool", "check", "--socket"])
            .arg(&socket)
            .arg("--svid")
            .arg(d.join("svid.pem"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Not an enforcement point yet: no decision, and why.
    let (code, _, stderr) = check(&["--tool", "crm.read"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not an enforcement point"), "{stderr}");
    assert!(stderr.contains("--enforcement-point"), "{stderr}");
    // The command's own program, run by this uid, becomes one.
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: "spiffe://example.org/tool/cli".into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", uid()), format!("unix:path:{BIN}")],
                enforcement_point: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, stdout, stderr) = loop {
        let r = check(&["--tool", "crm.read", "--resource", "account/42"]);
        if r.0 != Some(2) || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ALLOW"), "{stdout}");
    assert!(stdout.contains("[read-only]"), "{stdout}");
    assert!(stdout.contains(&begun.task_id), "{stdout}");
    // Forbidden by a policy for this call's arguments: denied, naming it.
    let (code, stdout, stderr) = check(&[
        "--tool",
        "crm.read",
        "--context",
        r#"{"account": "13"}"#,
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["allow"], false);
    assert_eq!(v["policy_ids"][0], "not-13");
    assert!(v["reason"].as_str().unwrap().contains("off limits"), "{v}");
    assert!(stderr.is_empty(), "{stderr}");
    // A tool the task was not granted: denied.
    let (code, stdout, _) = check(&["--tool", "email.send"]);
    assert_eq!(code, Some(1));
    assert!(stdout.starts_with("DENY"), "{stdout}");
    // Bad input: no decision.
    let (code, _, stderr) = check(&["--tool", "crm.read", "--context", "[1]"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("JSON object"), "{stderr}");
    c.server.shutdown().await;
}
