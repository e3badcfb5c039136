//! The real `lanyard-server` binary: `run` plus every admin command, in text
//! and JSON, and the errors users see.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lanyard-server");

pub(crate) struct Server {
    child: Child,
}

impl Server {
    /// Stops the server as a service manager does (SIGTERM) and waits for
    /// it: what it wrote is on disk when this returns.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(dir: &Path) -> Server {
    let child = Command::new(BIN)
        .args([
            "run",
            "--trust-domain",
            "example.org",
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("admin.sock").exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child }
}

pub(crate) fn admin(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .output()
        .expect("run admin command")
}

pub(crate) fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn fails(o: &Output) -> String {
    assert!(!o.status.success(), "command should fail");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    err
}

#[test]
fn admin_commands_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let _server = start(dir.path());
    let d = dir.path();

    let token = ok(&admin(
        d,
        &[
            "token",
            "generate",
            "--agent-id",
            "spiffe://example.org/node/n1",
            "--ttl",
            "5m",
        ],
    ));
    assert_eq!(token.trim().len(), 32);
    let js = ok(&admin(d, &["token", "generate", "--output", "json"]));
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert!(
        v["agent_id"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://example.org/lanyard/agent/join_token/")
    );

    let created = ok(&admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/agent/planner",
            "--parent-id",
            "spiffe://example.org/node/n1",
            "--selector",
            "unix:uid:1000",
            "--x509-ttl",
            "60s",
            "--allow-tool",
            "search",
            "--output",
            "json",
        ],
    ));
    let e: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = e["id"].as_str().unwrap().to_owned();
    assert_eq!(e["x509_ttl_seconds"], 60);
    assert_eq!(e["allowed_tools"][0], "search");

    let shown = ok(&admin(d, &["entry", "show", &id]));
    assert!(shown.contains("spiffe://example.org/agent/planner"));
    assert!(shown.contains("unix:uid:1000"));

    let updated = ok(&admin(
        d,
        &[
            "entry",
            "update",
            &id,
            "--x509-ttl",
            "2m",
            "--output",
            "json",
        ],
    ));
    let u: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(u["x509_ttl_seconds"], 120);
    assert_eq!(u["revision"], 1);

    let list: serde_json::Value =
        serde_json::from_str(&ok(&admin(d, &["entry", "list", "--output", "json"]))).unwrap();
    assert_eq!(list["entries"].as_array().unwrap().len(), 1);

    // Duplicates are refused.
    let err = fails(&admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/agent/planner",
            "--parent-id",
            "spiffe://example.org/node/n1",
            "--selector",
            "unix:uid:1000",
        ],
    ));
    assert!(err.contains("already exists"), "{err}");

    let pem = ok(&admin(d, &["bundle", "show", "--format", "pem"]));
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let jwks: serde_json::Value =
        serde_json::from_str(&ok(&admin(d, &["bundle", "show", "--format", "jwks"]))).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .any(|k| k["use"] == "x509-svid" && k.get("kid").is_none() && k["x5c"].is_array())
    );
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string())
    );
    // The WIT-SVID key, published with its own use and a kid of its own.
    let kids = |u: &str| -> Vec<String> {
        keys.iter()
            .filter(|k| k["use"] == u)
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let (jwt_kids, wit_kids) = (kids("jwt-svid"), kids("wit-svid"));
    assert_eq!(wit_kids.len(), 1, "{jwks}");
    assert!(!jwt_kids.contains(&wit_kids[0]), "{jwks}");
    assert!(jwks["spiffe_sequence"].as_u64().unwrap() >= 1);
    // Authorities: show, prepare, activate, taint and revoke the old one.
    let show: serde_json::Value =
        serde_json::from_str(&ok(&admin(d, &["ca", "show", "--output", "json"]))).unwrap();
    let old_x509 = show["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "x509" && a["state"] == "active")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = fails(&admin(d, &["ca", "taint", &old_x509]));
    assert!(err.contains("is active"), "{err}");
    let err = fails(&admin(d, &["ca", "activate"]));
    assert!(err.contains("ca prepare"), "{err}");
    let active_wit = |show: &serde_json::Value| -> Vec<String> {
        show["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "wit" && a["state"] == "active")
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(active_wit(&show), wit_kids);
    assert!(ok(&admin(d, &["ca", "prepare"])).contains("prepared"));
    assert!(ok(&admin(d, &["ca", "activate"])).contains("old"));
    // The WIT key rotates with the others.
    let show: serde_json::Value =
        serde_json::from_str(&ok(&admin(d, &["ca", "show", "--output", "json"]))).unwrap();
    let rotated = active_wit(&show);
    assert_eq!(rotated.len(), 1, "{show}");
    assert_ne!(rotated, wit_kids);
    let err = fails(&admin(d, &["ca", "revoke", &old_x509]));
    assert!(err.contains("tainted before"), "{err}");
    assert!(ok(&admin(d, &["ca", "taint", &old_x509])).contains("(tainted)"));
    let after = ok(&admin(d, &["ca", "revoke", &old_x509]));
    assert!(!after.contains(&old_x509));
    let err = fails(&admin(d, &["ca", "taint", "nope"]));
    assert!(err.contains("no authority"), "{err}");

    let agents = ok(&admin(d, &["agent", "list"]));
    assert!(agents.contains("No agents"));

    assert!(ok(&admin(d, &["entry", "delete", &id])).contains(&id));
    let err = fails(&admin(d, &["entry", "show", &id]));
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn bad_input_gets_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No server yet.
    let err = fails(&admin(d, &["entry", "list"]));
    assert!(err.contains("is lanyard-server running"), "{err}");

    let _server = start(d);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "http://x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "unix:uid:1",
            ],
            "must start with \"spiffe://\"",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "nocolon",
            ],
            "type:value",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
            ],
            "--selector is required",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://other.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "unix:uid:1",
            ],
            "not in trust domain",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "unix:uid:1",
                "--x509-ttl",
                "1s",
            ],
            "TTL must be between",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "unix:uid:1",
                "--x509-ttl",
                "soon",
            ],
            "invalid duration",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "uid:1000",
            ],
            "unknown selector type \"uid\"",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "foo:bar",
            ],
            "the types are unix, systemd, k8s and k8s_psat",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "unix:uid:abc",
            ],
            "uid and gid are decimal numbers",
        ),
        (
            &[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                "spiffe://example.org/n",
                "--selector",
                "unix:uid:1",
                "--max-sensitivity",
                "secret",
            ],
            "unknown data sensitivity \"secret\" (known: public < internal < confidential < restricted)",
        ),
        (
            &["token", "generate", "--agent-id", "spiffe://other.org/n"],
            "not in trust domain",
        ),
        (
            &["agent", "evict", "spiffe://example.org/nobody"],
            "not found",
        ),
    ];
    for (args, want) in cases {
        let err = fails(&admin(d, args));
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `policy test` answers with its exit status (0 allowed, 1 denied, 2 no
/// answer), and `entry update` can turn `--require-task` and
/// `--enforcement-point` off again.
#[test]
fn policy_test_exits_by_decision_and_update_turns_flags_off() {
    let dir = tempfile::tempdir().unwrap();
    let _server = start(dir.path());
    let d = dir.path();
    let id = "spiffe://example.org/agent/planner";
    let created = ok(&admin(
        d,
        &[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            "spiffe://example.org/node/n1",
            "--selector",
            "unix:uid:1000",
            "--require-task",
            "--enforcement-point",
            "--allow-task-type",
            "report.generate",
            "--allow-tool",
            "crm.read",
            "--allow-tool",
            "shell.exec",
            "--output",
            "json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(v["require_task"], true);
    assert_eq!(v["enforcement_point"], true);
    let entry_id = v["id"].as_str().unwrap().to_owned();
    let show = |o: &Output| -> serde_json::Value { serde_json::from_str(&ok(o)).unwrap() };
    // Off again; an update that does not name them keeps them.
    let v = show(&admin(
        d,
        &[
            "entry",
            "update",
            &entry_id,
            "--require-task=false",
            "--output",
            "json",
        ],
    ));
    assert_eq!(v["require_task"], false);
    assert_eq!(v["enforcement_point"], true);
    let v = show(&admin(
        d,
        &[
            "entry",
            "update",
            &entry_id,
            "--max-task-ttl",
            "10m",
            "--output",
            "json",
        ],
    ));
    assert_eq!(v["max_task_ttl_seconds"], 600);
    let v = show(&admin(
        d,
        &[
            "entry", "update", &entry_id, "--hint", "h", "--output", "json",
        ],
    ));
    assert_eq!(v["enforcement_point"], true);
    assert_eq!(v["max_task_ttl_seconds"], 600);
    let v = show(&admin(
        d,
        &[
            "entry",
            "update",
            &entry_id,
            "--enforcement-point=false",
            "--output",
            "json",
        ],
    ));
    assert_eq!(v["enforcement_point"], false);

    let policy = d.join("p.cedar");
    std::fs::write(
        &policy,
        r#"@id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
           @id("read") permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read");"#,
    )
    .unwrap();
    ok(&admin(d, &["policy", "set", policy.to_str().unwrap()]));
    let test = |tools: &[&str]| {
        let mut args = vec![
            "policy",
            "test",
            "--spiffe-id",
            id,
            "--task-type",
            "report.generate",
        ];
        for t in tools {
            args.extend(["--tool", t]);
        }
        admin(d, &args)
    };
    let allowed = test(&["crm.read"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", ok(&allowed));
    let denied = test(&["crm.read", "shell.exec"]);
    assert_eq!(denied.status.code(), Some(1));
    let out = String::from_utf8_lossy(&denied.stdout);
    assert!(out.contains("DENY  shell.exec"), "{out}");
    assert!(
        denied.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let unknown = admin(
        d,
        &[
            "policy",
            "test",
            "--spiffe-id",
            "spiffe://example.org/nobody",
            "--task-type",
            "x",
        ],
    );
    assert_eq!(unknown.status.code(), Some(2));
    fails(&unknown);
}
