//! Approval webhooks end to end: signed, verified by a receiver written in
//! Python, retried until delivered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::approval::{APPROVAL_POLICY, ask};
use super::*;
use lanyard_server::config::approvers::{ApprovalSettings, Approver};

const ALICE: &str = "user:alice@example.com";

/// A new request is announced to the eligible approver's webhook and to
/// its group's: JSON, signed, verified by a receiver written in Python
/// (its own HMAC), and retried with backoff while the receiver fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_and_retried_until_delivered() {
    use lanyard_server::config::approvers::Webhook;
    let tmp = tempfile::tempdir().unwrap();
    let secret = "a-webhook-key-of-32-bytes-length";
    let secret_file = tmp.path().join("hook.key");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let port_file = tmp.path().join("hook.port");
    /// The receiver, killed (and reaped) however the test ends.
    struct Receiver(std::process::Child);
    impl Drop for Receiver {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut receiver = Receiver(
        Command::new("python3")
            .arg(
                lanyard_integration_tests::python::repo_root()
                    .join("integration-tests/python/webhook_receiver.py"),
            )
            .arg("--port-file")
            .arg(&port_file)
            .arg("--secret-file")
            .arg(&secret_file)
            .args(["--fail", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let port = eventually("the receiver's port", WAIT, || async {
        std::fs::read_to_string(&port_file).ok()
    })
    .await;
    let lines = {
        let out = receiver.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        rx
    };
    let hook = |path: &str| Webhook {
        url: format!("http://127.0.0.1:{port}{path}"),
        secret: secret.as_bytes().to_vec(),
    };
    let s = setup_configured(
        true,
        |c| {
            c.approval = ApprovalSettings {
                approvers: vec![Approver {
                    name: ALICE.into(),
                    groups: vec!["mail-approvers".into()],
                    webhook: Some(hook("/alice")),
                }],
                group_webhooks: vec![("mail-approvers".into(), hook("/group"))],
                ..ApprovalSettings::default()
            };
        },
        |_| {},
    )
    .await;
    set_policy(&s, APPROVAL_POLICY).await;
    let holder = Holder::start(&s.socket, &["email.send"]);
    let r = ask(&s, &holder, r#"{"to": "partner@outside.example"}"#, 0).await;
    assert!(r.pending);
    let mut got: Vec<serde_json::Value> = vec![];
    let deadline = Instant::now() + WAIT;
    while got.iter().filter(|l| l["status"] == 200).count() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("deliveries so far: {got:?}"));
        got.push(serde_json::from_str(&line).unwrap());
    }
    drop(receiver);
    for path in ["/alice", "/group"] {
        let mine: Vec<&serde_json::Value> = got.iter().filter(|l| l["path"] == path).collect();
        assert_eq!(mine.len(), 3, "two failures, then delivered: {got:?}");
        for l in &mine {
            assert_eq!(l["verified"], true, "{l}");
            assert_eq!(l["event"], "approval.requested");
            assert_eq!(l["approval_id"], r.approval_id.as_str());
            assert_eq!(l["delivery"], r.approval_id.as_str());
            assert_eq!(l["content_type"], "application/json");
            assert!(
                l["arguments"]
                    .as_str()
                    .unwrap()
                    .contains("partner@outside.example")
            );
        }
        assert_eq!(mine[2]["status"], 200);
    }
}
