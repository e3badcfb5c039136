//! The command line: `task run --credential NAME=VAR` hands the command a
//! credential in its environment, and `credential get` works from a
//! process the task's holder started (a script's helper), not from one
//! outside the task.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::agent_cli::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_run_hands_credentials_to_its_command_and_its_children() {
    let s = setup(3600).await;
    let socket = s.agent.socket.clone();
    let mut child = Command::new(BIN)
        .args(["task", "run", "--type", "report.generate", "--tool", "crm.read"])
        .args(["--sensitivity", "internal", "--spiffe-id", PLANNER])
        .args(["--on-behalf-of", "user:alice@example.com"])
        .args(["--credential", "api-key=CRM_KEY", "--"])
        .args(["sh", "-c"])
        .arg(format!(
            "echo \"$CRM_KEY\"; {BIN} credential get internal --scope reports:read --output json; {BIN} credential get internal --scope reports:read --output json; exec sleep 30"
        ))
        .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let finish = |mut child: std::process::Child| {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    if lines.len() < 3 {
        panic!("task run printed {lines:?}: {}", finish(child));
    }
    assert_eq!(lines[0], "crm-key-123");
    let txn: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(txn["type"], "txn_token");
    assert_eq!(txn["scopes"], serde_json::json!(["reports:read"]));
    let task_id = txn["task_id"].as_str().unwrap().to_owned();
    // Another helper process of the same task gets a lease of its own,
    // never the first one's copy.
    let again: Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(again["task_id"], txn["task_id"]);
    assert_ne!(again["lease_id"], txn["lease_id"]);

    // This process started `task run` but does not descend from it: while
    // the task lives, it is still not this process's task.
    let e = get(&s.agent.socket, "internal", &[], &task_id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = get(&s.agent.socket, "internal", &[], "").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let stderr = finish(child);
    assert!(
        stderr.contains("credential api-key in $CRM_KEY"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_agent_gets_a_token_uses_it_and_sees_it_die_with_its_task() {
    let s = setup(3600).await;
    let py = python::python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let socket = s.agent.socket.clone();
    let api = format!("{}/api/whoami", s.auth.base);
    let ca = s._dir.path().join("as.crt");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(python::repo_root().join("examples/python/credential_agent.py"))
            .arg("--socket")
            .arg(format!("unix://{}", socket.display()))
            .args(["--spiffe-id", PLANNER, "--tool", "crm.read"])
            .args(["--on-behalf-of", "user:alice@example.com"])
            .args(["--provider", "github", "--scope", "repo:read"])
            .args(["--api", &api])
            .arg("--api-ca")
            .arg(ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["credential"]["kind"], "bearer");
    assert!(v["credential"]["expires_at"].as_i64() <= v["credential"]["task_expires_at"].as_i64());
    assert_eq!(v["api_during_task"][0], 200);
    assert_eq!(v["api_during_task"][1]["sub"], PLANNER);
    assert_eq!(v["api_during_task"][1]["task"], v["task_id"]);
    assert_eq!(v["api_after_task"], 401, "{v}");
}
