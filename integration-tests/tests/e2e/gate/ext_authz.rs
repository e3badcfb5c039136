//! The Envoy external-authorization service, driven by a gRPC client
//! generated from Envoy's own protos (Python's `xds-protos`).

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{CRM_SECRET, WAIT, gate, stack};
use lanyard_integration_tests::python;

fn config(sock: &std::path::Path, uids: &str) -> String {
    format!(
        r#"
ext_authz_socket = "{}"
ext_authz_uids = [{uids}]

[[upstream]]
name = "crm"
kind = "mcp"
path = "/mcp/crm"
url = "http://127.0.0.1:9/mcp"
[upstream.tools]
read_contact = "crm.read"
delete_contact = "crm.delete"
[upstream.credential]
provider = "crm-key"
"#,
        sock.display()
    )
}

fn call(name: &str, id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": {"id": "42"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_checks_are_allowed_and_denied_with_the_credential_injected() {
    let s = stack().await;
    // A directory others can reach: only the uid check keeps them out.
    let public = s.dir.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let sock = public.join("ext_authz.sock");
    let g = gate(&s, "gate-envoy", &config(&sock, "4242"));
    lanyard_integration_tests::eventually("the ext_authz socket", WAIT, || async {
        sock.exists().then_some(())
    })
    .await;
    let cases = json!([
        {"name": "allowed", "path": "/mcp/crm", "body": call("read_contact", 1),
         "headers": {"content-type": "application/json", "authorization": "Bearer caller"}},
        {"name": "not-granted", "path": "/mcp/crm", "body": call("delete_contact", 2)},
        {"name": "mismatch", "path": "/mcp/crm", "body": call("delete_contact", 3),
         "headers": {"mcp-method": "tools/call", "mcp-name": "read_contact"}},
        {"name": "partial", "path": "/mcp/crm", "body": call("read_contact", 4), "partial": true},
        {"name": "no-body", "path": "/mcp/crm", "body": ""},
        {"name": "no-certificate", "path": "/mcp/crm", "body": call("read_contact", 5), "certificate": false},
        {"name": "lifecycle", "path": "/mcp/crm", "body": {"jsonrpc": "2.0", "id": 6, "method": "ping"}},
    ]);
    let out = tokio::task::spawn_blocking({
        let py = s.py.clone();
        let socket = s.socket.clone();
        let sock = sock.clone();
        move || {
            Command::new(py)
                .arg(python::repo_root().join("examples/python/ext_authz_check.py"))
                .arg("--agent-socket")
                .arg(format!("unix://{}", socket.display()))
                .arg("--authz-socket")
                .arg(&sock)
                .args(["--tool", "crm.read", "--destination", "127.0.0.1"])
                .args(["--cases", &cases.to_string()])
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "ext_authz_check.py failed: {}",
        g.log()
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let case = |n: &str| {
        lines
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {lines:?}"))
    };

    let ok = case("allowed");
    assert_eq!(ok["code"], 0, "{ok}");
    assert_eq!(
        ok["set"]["authorization"],
        format!("Bearer {CRM_SECRET}"),
        "{ok}"
    );
    assert_eq!(ok["remove"], json!(["authorization"]));

    let denied = case("not-granted");
    assert_eq!(denied["code"], 7, "{denied}");
    assert_eq!(denied["http_status"], 403);
    assert!(
        denied["body"].as_str().unwrap().contains("was not granted"),
        "{denied}"
    );
    for (n, status, words) in [
        ("mismatch", 400, "Mcp-Name"),
        ("partial", 400, "cut short"),
        ("no-body", 400, "with_request_body"),
        ("no-certificate", 401, "present a task"),
    ] {
        let c = case(n);
        assert_eq!(c["code"], 7, "{c}");
        assert_eq!(c["http_status"], status, "{c}");
        assert!(c["body"].as_str().unwrap().contains(words), "{c}");
    }
    assert_eq!(case("lifecycle")["code"], 0);

    // Another uid, on a socket it can reach, is refused by the gateway.
    let probe = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(10)
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    data = s.recv(100)
except OSError:
    data = b""
print("answered" if data else "closed")
"#;
    let out = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        Command::new("python3")
            .args(["-c", probe])
            .arg(&sock)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "closed",
        "uid 65534 was served: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        g.log().contains("a peer of another uid refused"),
        "{}",
        g.log()
    );
}
