//! MCP through lanyard-gate with the official Python SDK on both sides.

use std::time::Duration;

use serde_json::{Value, json};

use super::{CRM_SECRET, Stack, WAIT, gate, python_server, run_agent, stack, upstream_log};

fn crm_config(port: u16) -> String {
    format!(
        r#"
[[upstream]]
name = "crm"
kind = "mcp"
path = "/mcp/crm"
url = "http://127.0.0.1:{port}/mcp"
[upstream.tools]
read_contact = "crm.read"
delete_contact = "crm.delete"
send_email = "email.send"
[upstream.credential]
provider = "crm-key"
"#
    )
}

fn agent_args(url: &str, steps: Value, mode: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["--url".into(), url.into(), "--mode".into(), mode.into()];
    for t in ["crm.read", "email.send"] {
        a.extend(["--tool".into(), t.into()]);
    }
    a.extend(["--destination".into(), "127.0.0.1".into()]);
    a.extend(["--steps".into(), steps.to_string()]);
    a
}

fn step<'a>(lines: &'a [Value], key: &str, name: Option<&str>) -> &'a Value {
    lines
        .iter()
        .find(|l| l.get(key).is_some() && name.is_none_or(|n| l[key] == n))
        .unwrap_or_else(|| panic!("no {key} {name:?} in {lines:?}"))
}

async fn setup() -> (Stack, super::Proc, u16, super::Gate) {
    let s = stack().await;
    let (tool, port) = python_server(&s, "mcp_tool_server.py", &[]);
    let g = gate(&s, "gate", &crm_config(port));
    (s, tool, port, g)
}

/// An allowed call returns the tool's answer; a tool outside the task and
/// a call a policy forbids come back as tool errors carrying the reason
/// (the policy's own words and its ID); an unmapped tool is denied;
/// `tools/list` shows only what the task may call; the tool server gets
/// the CRM's credential on every request and the agent never sees it; a
/// request whose headers disagree with its body is refused. In both the
/// handshake revision and 2026-07-28.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_decided_filtered_and_credentialed() {
    let (s, _tool, port, g) = setup().await;
    let url = format!("https://{}/mcp/crm", g.addr);
    let steps = json!([
        {"list": true},
        {"call": "read_contact", "args": {"id": "42"}},
        {"call": "delete_contact", "args": {"id": "42"}},
        {"call": "send_email", "args": {"to": "eve@outside.example", "body": "hi"}},
        {"call": "debug_dump"},
        {"raw": {
            "headers": {"mcp-method": "tools/call", "mcp-name": "read_contact"},
            "body": {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                     "params": {"name": "delete_contact", "arguments": {"id": "7"}}}}},
        {"raw": {"body": [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]}},
    ]);
    let lines = run_agent(&s, agent_args(&url, steps, "legacy"), |_| {}).await;
    let all = serde_json::to_string(&lines).unwrap();
    assert!(
        !all.contains(CRM_SECRET),
        "the agent saw the CRM's credential: {all}"
    );
    assert_eq!(
        step(&lines, "tools", None)["tools"],
        json!(["read_contact", "send_email"])
    );

    let read = step(&lines, "call", Some("read_contact"));
    assert_eq!(read["is_error"], false, "{read}");
    assert!(
        read["text"].as_str().unwrap().contains("ACME Corp"),
        "{read}"
    );

    let delete = step(&lines, "call", Some("delete_contact"));
    assert_eq!(delete["is_error"], true, "{delete}");
    assert!(
        delete["text"].as_str().unwrap().contains("was not granted"),
        "{delete}"
    );

    let mail = step(&lines, "call", Some("send_email"));
    assert_eq!(mail["is_error"], true, "{mail}");
    assert!(
        mail["text"]
            .as_str()
            .unwrap()
            .contains("no email outside example.com"),
        "{mail}"
    );
    assert_eq!(mail["meta"]["policy_ids"], json!(["no-mail-out"]), "{mail}");

    let dump = step(&lines, "call", Some("debug_dump"));
    assert_eq!(dump["is_error"], true, "{dump}");
    assert!(
        dump["text"].as_str().unwrap().contains("not mapped"),
        "{dump}"
    );

    let raws: Vec<&Value> = lines.iter().filter(|l| l.get("raw").is_some()).collect();
    assert_eq!(raws[0]["raw"], 400, "{:?}", raws[0]);
    assert!(
        raws[0]["body"].as_str().unwrap().contains("-32020"),
        "{:?}",
        raws[0]
    );
    assert_eq!(raws[1]["raw"], 400, "{:?}", raws[1]);
    assert!(
        raws[1]["body"].as_str().unwrap().contains("-32600"),
        "{:?}",
        raws[1]
    );

    // The handshake-free revision: discovery, then requests with their
    // routing headers.
    let steps = json!([{"list": true}, {"call": "read_contact", "args": {"id": "7"}}]);
    let lines = run_agent(&s, agent_args(&url, steps, "auto"), |_| {}).await;
    assert_eq!(
        step(&lines, "tools", None)["tools"],
        json!(["read_contact", "send_email"]),
        "{lines:?}"
    );
    let read = step(&lines, "call", Some("read_contact"));
    assert!(read["text"].as_str().unwrap().contains("Globex"), "{read}");

    // The tool server saw the CRM's credential on every request, and
    // never the delete nor the forged header/body pair.
    let log = upstream_log(port).await;
    assert!(!log.is_empty());
    for r in &log {
        assert_eq!(r["authorization"], format!("Bearer {CRM_SECRET}"), "{r}");
    }
    assert!(
        log.iter().any(|r| r["mcp_method"] == "tools/call"),
        "{log:?}"
    );

    // One tool.call record per decided call, with its outcome, in the
    // server's verified audit log.
    let records = lanyard_integration_tests::eventually("tool.call records", WAIT, || async {
        let audit = lanyard_integration_tests::verified_audit(s.server.admin()).await;
        let calls: Vec<Value> = audit
            .into_iter()
            .filter(|e| e["kind"] == "tool.call")
            .collect();
        (calls.len() >= 4).then_some(calls)
    })
    .await;
    let allowed = records
        .iter()
        .find(|r| r["decision"] == "allow" && r["tool"] == "crm.read")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(allowed["details"]["upstream"], "crm");
    assert_eq!(allowed["details"]["status"], 200);
    assert!(
        allowed["details"]["bytes_out"].as_u64().unwrap() > 0,
        "{allowed}"
    );
    let denied = records
        .iter()
        .find(|r| r["decision"] == "deny" && r["tool"] == "email.send")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(denied["details"]["status"], 0);
    assert_eq!(denied["policy_ids"], json!(["no-mail-out"]));
    let ids: Vec<&Value> = records
        .iter()
        .map(|r| &r["correlation"]["decision_id"])
        .collect();
    let unique: std::collections::HashSet<String> = ids.iter().map(|v| v.to_string()).collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a call recorded twice: {records:?}"
    );
}

/// `task revoke` cuts the agent's live session: the gateway closes the
/// connection as soon as the revocation reaches it, and the next call
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_task_loses_its_live_session() {
    let (s, _tool, _port, g) = setup().await;
    let url = format!("https://{}/mcp/crm", g.addr);
    let go = s.dir.path().join("go");
    let steps = json!([
        {"call": "read_contact", "args": {"id": "42"}},
        {"wait": go.display().to_string()},
        {"call": "read_contact", "args": {"id": "42"}},
    ]);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let runner = {
        let mut args = agent_args(&url, steps, "legacy");
        // Whatever the SDK does with a cut connection, the session ends.
        args.extend([
            "--timeout".into(),
            "10".into(),
            "--deadline".into(),
            "40".into(),
        ]);
        let lines = run_agent(&s, args, move |l| {
            if let Some(t) = l.get("task_id").and_then(Value::as_str) {
                let _ = tx.send(t.to_owned());
            }
        });
        tokio::spawn(lines)
    };
    let task_id = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT).unwrap())
        .await
        .unwrap();
    // The first call went through.
    g.wait_log("tool call decided", WAIT).await;
    s.server
        .admin()
        .revoke_task(lanyard_proto::admin::TaskRequest {
            task_id: task_id.clone(),
        })
        .await
        .unwrap();
    // The connection is closed, or an answer still streaming is cut (which
    // ends its connection too): either way the gateway says so.
    g.wait_log("caller revoked:", WAIT).await;
    std::fs::write(&go, b"").unwrap();
    let lines = tokio::time::timeout(WAIT * 2, runner)
        .await
        .unwrap()
        .unwrap();
    let last = lines
        .iter()
        .rev()
        .find(|l| {
            l.get("call").is_some() || l.get("error").is_some() || l.get("session_error").is_some()
        })
        .unwrap();
    let refused = last.get("error").is_some()
        || last.get("session_error").is_some()
        || last["is_error"] == true;
    assert!(refused, "the call after revocation went through: {lines:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Repeated forbidden calls quarantine the caller: after the fourth
/// denial in a minute even the allowed tool is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_forbidden_calls_quarantine_the_caller() {
    let (s, _tool, _port, g) = setup().await;
    let url = format!("https://{}/mcp/crm", g.addr);
    let forbidden = json!({"call": "send_email", "args": {"to": "eve@outside.example"}});
    let steps = json!([
        {"call": "read_contact", "args": {"id": "42"}},
        forbidden, forbidden, forbidden, forbidden,
        {"call": "read_contact", "args": {"id": "42"}},
    ]);
    let lines = run_agent(&s, agent_args(&url, steps, "legacy"), |_| {}).await;
    let reads: Vec<&Value> = lines
        .iter()
        .filter(|l| l["call"] == "read_contact")
        .collect();
    assert_eq!(reads[0]["is_error"], false, "{lines:?}");
    let last = lines.last().unwrap();
    let refused = last.get("error").is_some()
        || last.get("session_error").is_some()
        || last.get("end_task").is_some()
        || reads.get(1).is_none_or(|r| r["is_error"] == true);
    assert!(refused, "a quarantined caller still called: {lines:?}");
    let q = s
        .server
        .admin()
        .list_quarantines(lanyard_proto::admin::ListQuarantinesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!q.quarantines.is_empty(), "no quarantine recorded");
}

/// An MCP session belongs to the task that opened it: another task that
/// presents its `Mcp-Session-Id` is refused (403), and a session the
/// gateway never bound is unknown (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_be_used_by_another_task() {
    let (s, _tool, port, g) = setup().await;
    let url = format!("https://{}/mcp/crm", g.addr);
    let go = s.dir.path().join("go-session");
    let steps = json!([{"list": true}, {"wait": go.display().to_string()}]);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let lines = run_agent(&s, agent_args(&url, steps, "legacy"), move |l| {
            if l.get("waiting").is_some() {
                let _ = tx.send(());
            }
        });
        tokio::spawn(lines)
    };
    tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT).unwrap())
        .await
        .unwrap();
    let session = upstream_log(port)
        .await
        .iter()
        .find_map(|r| r["session"].as_str().map(str::to_owned))
        .expect("the first task's session");
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}});
    let steps = json!([
        {"raw": {"headers": {"mcp-session-id": session}, "body": list}},
        {"raw": {"headers": {"mcp-session-id": "never-bound"}, "body": list}},
    ]);
    let lines = run_agent(&s, agent_args(&url, steps, "legacy"), |_| {}).await;
    let raws: Vec<&Value> = lines.iter().filter(|l| l.get("raw").is_some()).collect();
    assert_eq!(raws[0]["raw"], 403, "{lines:?}");
    assert!(
        raws[0]["body"].as_str().unwrap().contains("another task"),
        "{lines:?}"
    );
    assert_eq!(raws[1]["raw"], 404, "{lines:?}");
    std::fs::write(&go, b"").unwrap();
    tokio::time::timeout(WAIT * 3, holder)
        .await
        .unwrap()
        .unwrap();
}
