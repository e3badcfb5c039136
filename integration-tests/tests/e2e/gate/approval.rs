//! Calls a person approves, through lanyard-gate: an MCP call held open
//! until approved and then passed on, the same call again answered
//! "pending, retry" as a tool error the official SDK shows the model, and
//! a plain HTTP call answered 503 with Retry-After.

use std::time::Duration;

use lanyard_proto::admin::{AnswerApprovalRequest, ListApprovalsRequest};
use lanyard_server::config::approvers::{ApprovalSettings, Approver};
use serde_json::{Value, json};

use super::{WAIT, gate, python_server, run_agent, stack_with, upstream_log};

const MORE_POLICY: &str = r#"
@id("mail-partner") @approval("any-operator")
permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
when { context.at_call && context.call.contains("to=partner@outside.example") };

@id("secret-docs") @approval("any-operator")
permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"files.read")
when { context.at_call && context.resource == "doc/secret" };
"#;

fn config(port: u16) -> String {
    format!(
        r#"
approval_wait = "3s"

[[upstream]]
name = "crm"
kind = "mcp"
path = "/mcp/crm"
url = "http://127.0.0.1:{port}/mcp"
[upstream.tools]
send_email = "email.send"
[upstream.credential]
provider = "crm-key"

[[upstream]]
name = "files"
kind = "http"
path = "/files"
url = "http://127.0.0.1:{port}/api/"
[[upstream.route]]
method = "GET"
path = "/docs/{{id}}"
tool = "files.read"
resource = "doc/{{id}}"
"#
    )
}

fn args(url: &str, tool: &str, steps: &Value) -> Vec<String> {
    [
        "--url",
        url,
        "--tool",
        tool,
        "--destination",
        "127.0.0.1",
        "--steps",
        &steps.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_goes_through_once_approved_and_again_is_pending() {
    let s = stack_with(
        |c| {
            c.approval = ApprovalSettings {
                approvers: vec![Approver {
                    name: "user:ops@example.com".into(),
                    groups: vec![],
                    webhook: None,
                }],
                ..ApprovalSettings::default()
            };
        },
        MORE_POLICY,
    )
    .await;
    let (_tool, port) = python_server(&s, "mcp_tool_server.py", &[]);
    let g = gate(&s, "gate-approval", &config(port));

    // An operator answers the first request that appears, once.
    let admin = s.server.admin();
    let approver = tokio::spawn(async move {
        let mut admin = admin;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            let pending = admin
                .list_approvals(ListApprovalsRequest { all: false })
                .await
                .unwrap()
                .into_inner()
                .approvals;
            if let Some(a) = pending.first() {
                admin
                    .answer_approval(AnswerApprovalRequest {
                        id: a.id.clone(),
                        approve: true,
                        approver: "user:ops@example.com".into(),
                        reason: "partner mail ok".into(),
                    })
                    .await
                    .unwrap();
                return a.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no request to approve");
    });
    let mail = json!({"to": "partner@outside.example", "body": "q3 numbers"});
    let steps = json!([
        {"call": "send_email", "args": mail},
        {"call": "send_email", "args": mail},
    ]);
    let url = format!("https://{}/mcp/crm", g.addr);
    // This revision sends Mcp-Method, which the tool server logs.
    let mut a = args(&url, "email.send", &steps);
    a.extend(["--mode".into(), "2026-07-28".into()]);
    let lines = run_agent(&s, a, |_| {}).await;
    let approved = approver.await.unwrap();
    assert_eq!(approved.tool, "email.send");
    assert!(approved.arguments_json.contains("partner@outside.example"));
    assert_eq!(approved.intent, "answer a customer about their account");

    let calls: Vec<&Value> = lines.iter().filter(|l| l.get("call").is_some()).collect();
    assert_eq!(calls.len(), 2, "{lines:?}");
    assert_eq!(
        calls[0]["is_error"], false,
        "the held call was not released: {lines:?}"
    );
    assert_eq!(calls[1]["is_error"], true, "{lines:?}");
    let text = calls[1]["text"].as_str().unwrap();
    assert!(text.starts_with("Pending"), "{text}");
    assert!(text.contains("Retry the same call"), "{text}");
    assert!(
        !text.contains(&approved.id),
        "a used approval answered again: {text}"
    );
    // Exactly one send reached the tool.
    let log = upstream_log(port).await;
    let sent = log
        .into_iter()
        .filter(|r| r["mcp_method"] == "tools/call")
        .count();
    assert_eq!(sent, 1, "one approval, one call");

    // A plain HTTP call held for approval: 503 with the approval in the body.
    let http = json!([{"http": {"method": "GET", "url": format!("https://{}/files/docs/secret", g.addr)}}]);
    let lines = run_agent(&s, args("unused", "files.read", &http), |_| {}).await;
    let answer = lines
        .iter()
        .find(|l| l.get("status").is_some())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(answer["status"], 503, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"], "approval pending", "{body}");
    assert!(!body["approval_id"].as_str().unwrap().is_empty(), "{body}");
}
