//! Plain HTTP tools through lanyard-gate: routes decide, a static
//! upstream credential from a file is injected, a bearer JWT-SVID stands
//! in for mutual TLS, and destinations are enforced.

use serde_json::{Value, json};

use super::{GATE_ID, gate, gate_then, python_server, run_agent, stack, upstream_log};

fn files_config(port: u16, key_file: &std::path::Path) -> String {
    format!(
        r#"
[[upstream]]
name = "files"
kind = "http"
path = "/files"
url = "http://127.0.0.1:{port}/api/"
[upstream.credential]
file = "{}"
header = "x-api-key"
[[upstream.route]]
method = "GET"
path = "/docs/{{id}}"
tool = "files.read"
resource = "doc/{{id}}"
[[upstream.route]]
method = "POST"
path = "/docs"
tool = "files.write"
"#,
        key_file.display()
    )
}

fn args(steps: Value, destination: &str) -> Vec<String> {
    vec![
        "--url".into(),
        "unused".into(),
        "--tool".into(),
        "files.read".into(),
        "--destination".into(),
        destination.into(),
        "--jwt-audience".into(),
        GATE_ID.into(),
        "--steps".into(),
        steps.to_string(),
    ]
}

fn answer(lines: &[Value], i: usize) -> &Value {
    lines
        .iter()
        .filter(|l| l.get("http").is_some() || l.get("error").is_some())
        .nth(i)
        .unwrap_or_else(|| panic!("no answer {i} in {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_decide_and_the_static_credential_is_injected() {
    let s = stack().await;
    let (_tool, port) = python_server(&s, "mcp_tool_server.py", &[]);
    let key = s.dir.path().join("files.key");
    std::fs::write(&key, "files-key-456\n").unwrap();
    let g = gate(&s, "gate-http", &files_config(port, &key));
    let base = format!("https://{}/files", g.addr);
    let steps = json!([
        {"http": {"method": "GET", "url": format!("{base}/docs/17?x=1"),
                  "headers": {"x-api-key": "forged", "authorization": "Bearer forged"}}},
        {"http": {"method": "POST", "url": format!("{base}/docs"), "json": {"title": "t"}}},
        {"http": {"method": "DELETE", "url": format!("{base}/docs/17")}},
        {"http": {"method": "GET", "url": format!("{base}/docs/18")}, "as": "jwt"},
    ]);
    let lines = run_agent(&s, args(steps, "127.0.0.1"), |_| {}).await;
    let all = serde_json::to_string(&lines).unwrap();
    assert!(
        !all.contains("files-key-456"),
        "the caller saw the key: {all}"
    );

    let read = answer(&lines, 0);
    assert_eq!(read["status"], 200, "{read}");
    let body: Value = serde_json::from_str(read["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["path"], "/api/docs/17");
    assert_eq!(body["query"], "x=1");

    let write = answer(&lines, 1);
    assert_eq!(write["status"], 403, "{write}");
    assert!(
        write["body"]
            .as_str()
            .unwrap()
            .contains("files.write was not granted"),
        "{write}"
    );

    let unrouted = answer(&lines, 2);
    assert_eq!(unrouted["status"], 403, "{unrouted}");
    assert!(
        unrouted["body"].as_str().unwrap().contains("no route"),
        "{unrouted}"
    );

    let by_jwt = answer(&lines, 3);
    assert_eq!(
        by_jwt["status"], 200,
        "a bearer JWT-SVID was refused: {by_jwt}"
    );

    // Only the allowed calls reached the API, each with the key from the
    // file, never the caller's forged values.
    let log = upstream_log(port).await;
    let api: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/api/"))
        .collect();
    assert_eq!(api.len(), 2, "{log:?}");
    for r in api {
        assert_eq!(r["x_api_key"], "files-key-456", "{r}");
        assert_eq!(r["authorization"], Value::Null, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outside_the_tasks_destinations_is_refused() {
    let s = stack().await;
    let (_tool, port) = python_server(&s, "mcp_tool_server.py", &[]);
    let key = s.dir.path().join("files.key");
    std::fs::write(&key, "files-key-456").unwrap();
    let g = gate(&s, "gate-dest", &files_config(port, &key));
    let url = format!("https://{}/files/docs/1", g.addr);
    let steps = json!([{"http": {"method": "GET", "url": url}}]);
    let lines = run_agent(&s, args(steps, "crm.example.com"), |_| {}).await;
    let a = answer(&lines, 0);
    assert_eq!(a["status"], 403, "{a}");
    assert!(
        a["body"].as_str().unwrap().contains("not among task"),
        "{a}"
    );
    let log = upstream_log(port).await;
    assert!(
        log.iter()
            .all(|r| !r["path"].as_str().unwrap().starts_with("/api/")),
        "{log:?}"
    );
}

/// A reload asked for while the gateway is still starting (its identity
/// fetched, not yet listening) reloads once it is up: it never kills it,
/// which is what SIGHUP does to a process that does not handle it yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_does_not_kill_the_gateway() {
    let s = stack().await;
    let key = s.dir.path().join("files.key");
    std::fs::write(&key, "files-key-456").unwrap();
    let mut g = gate_then(&s, "gate-early-hup", &files_config(1, &key), |log, pid| {
        let deadline = std::time::Instant::now() + super::WAIT;
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("gateway identity from the node agent")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway never got its identity"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    });
    g.wait_log("configuration reloaded", super::WAIT).await;
    assert!(
        g._proc.0.try_wait().unwrap().is_none(),
        "the gateway exited: {}",
        g.log()
    );
}

/// SIGHUP reloads the upstreams: a new route serves at once; a broken file
/// is refused and the configuration in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_new_routes_and_a_broken_file_changes_nothing() {
    let s = stack().await;
    let (_tool, port) = python_server(&s, "mcp_tool_server.py", &[]);
    let key = s.dir.path().join("files.key");
    std::fs::write(&key, "files-key-456").unwrap();
    let g = gate(&s, "gate-reload", &files_config(port, &key));
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &g._proc.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let url = format!("https://{}/files/docs/1", g.addr);
    let del = json!([{"http": {"method": "DELETE", "url": url}}]);

    let text = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(
        &g.config,
        format!("{text}\n[[upstream.route]]\nmethod = \"DELETE\"\npath = \"/docs/{{id}}\"\ntool = \"files.read\"\n"),
    )
    .unwrap();
    hup();
    g.wait_log("configuration reloaded", super::WAIT).await;
    let lines = run_agent(&s, args(del.clone(), "127.0.0.1"), |_| {}).await;
    assert_eq!(answer(&lines, 0)["status"], 200, "{lines:?}");

    std::fs::write(&g.config, "this is = not [ toml").unwrap();
    hup();
    g.wait_log("reload refused", super::WAIT).await;
    let lines = run_agent(&s, args(del, "127.0.0.1"), |_| {}).await;
    assert_eq!(answer(&lines, 0)["status"], 200, "{lines:?}");
}

/// Bad input and a bad upstream get clear answers: a body over the cap is
/// 413 before any decision, an upstream that never answers is 504 after
/// its timeout, and the gateway goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_hanging_upstreams_get_clear_answers() {
    let s = stack().await;
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let g = gate(
        &s,
        "gate-bad",
        &format!(
            r#"max_body = 1024

[[upstream]]
name = "slow"
kind = "http"
path = "/slow"
url = "http://127.0.0.1:{port}/"
timeout = "1s"
[[upstream.route]]
method = "*"
path = "/*"
tool = "files.read"
"#
        ),
    );
    let base = format!("https://{}/slow", g.addr);
    let big = "x".repeat(4096);
    let steps = json!([
        {"http": {"method": "POST", "url": format!("{base}/upload"), "json": {"data": big}}},
        {"http": {"method": "GET", "url": format!("{base}/thing")}},
        {"http": {"method": "POST", "url": format!("{base}/upload"), "json": {"data": "small"}}},
    ]);
    let lines = run_agent(&s, args(steps, "127.0.0.1"), |_| {}).await;
    let too_big = answer(&lines, 0);
    assert_eq!(too_big["status"], 413, "{too_big}");
    assert!(
        too_big["body"].as_str().unwrap().contains("max_body"),
        "{too_big}"
    );
    let hung = answer(&lines, 1);
    assert_eq!(hung["status"], 504, "{hung}");
    assert!(
        hung["body"]
            .as_str()
            .unwrap()
            .contains("did not answer within"),
        "{hung}"
    );
    // Still serving: the small one is decided and goes upstream (and
    // times out there too).
    assert_eq!(answer(&lines, 2)["status"], 504);
    drop(silent);
}
