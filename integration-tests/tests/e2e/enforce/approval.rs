//! Calls a person approves (`@approval`): pending, approved once through
//! the real `approval` command, asked again for other arguments, denied,
//! ended by expiry, task end and quarantine, answered only by the declared
//! approver it names, held open for the answer, and denied when the node
//! cannot ask a server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use lanyard_proto::admin::{
    AddQuarantineRequest, AnswerApprovalRequest, ApprovalRequest, ListApprovalsRequest, TaskRequest,
};
use lanyard_proto::task::AuthorizeToolCallRequest;
use lanyard_server::config::approvers::{ApprovalSettings, Approver};

const SERVER_CLI: &str = env!("CARGO_BIN_EXE_server_proc");
const ALICE: &str = "user:alice@example.com";
const BOB: &str = "user:bob@example.com";

pub(super) const APPROVAL_POLICY: &str = r#"
    @id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
    @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
    @id("mail-out") @approval("group:mail-approvers")
    permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
    when { context.at_call };
"#;

async fn approval_setup(policy: &str) -> Setup {
    let s = setup_configured(
        true,
        |c| {
            c.approval = ApprovalSettings {
                approvers: vec![
                    Approver {
                        name: ALICE.into(),
                        groups: vec!["mail-approvers".into()],
                        webhook: None,
                    },
                    Approver {
                        name: BOB.into(),
                        groups: vec![],
                        webhook: None,
                    },
                ],
                ..ApprovalSettings::default()
            };
        },
        |_| {},
    )
    .await;
    set_policy(&s, policy).await;
    s
}

/// AuthorizeToolCall for `email.send` with these arguments.
pub(super) async fn ask(
    s: &Setup,
    holder: &Holder,
    args: &str,
    wait_ms: u32,
) -> lanyard_proto::task::AuthorizeToolCallResponse {
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    TaskIdentityClient::new(ch)
        .authorize_tool_call(header(AuthorizeToolCallRequest {
            credential: Some(x509(&holder.chain)),
            tool: "email.send".into(),
            resource: "outbox".into(),
            context_json: args.into(),
            wait_ms,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
}

/// `lanyard-server approval ARGS...` on the server's admin socket: exit
/// status, stdout and stderr.
fn cli(s: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SERVER_CLI)
        .arg("approval")
        .args(args)
        .arg("--admin-socket")
        .arg(&s.server().bound.admin_socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn state(s: &Setup, id: &str) -> String {
    s.server()
        .admin()
        .get_approval(ApprovalRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .state
}

/// Waits until request `id` is in state `want`.
async fn wait_state(s: &Setup, id: &str, want: &str) {
    eventually(&format!("approval {id} {want}"), WAIT, || async {
        (state(s, id).await == want).then_some(())
    })
    .await;
}

/// The pending requests.
async fn pending(s: &Setup) -> Vec<lanyard_proto::types::Approval> {
    s.server()
        .admin()
        .list_approvals(ListApprovalsRequest { all: false })
        .await
        .unwrap()
        .into_inner()
        .approvals
}

async fn answer(
    s: &Setup,
    id: &str,
    approve: bool,
    who: &str,
) -> Result<lanyard_proto::types::Approval, tonic::Status> {
    s.server()
        .admin()
        .answer_approval(AnswerApprovalRequest {
            id: id.into(),
            approve,
            approver: who.into(),
            reason: "checked".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A held call is pending; approved through the CLI, the same call is
/// allowed exactly once; other arguments ask again; a denial is the
/// caller's answer; only a declared approver the request names may answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_call_is_allowed_once_and_only_for_its_arguments() {
    let s = approval_setup(APPROVAL_POLICY).await;
    let holder = Holder::start_env(
        &s.socket,
        &["crm.read", "email.send"],
        &[("HOLD_INTENT", "send the <b>weekly</b> report")],
    );
    let args = r#"{"to": "cfo@outside.example", "amount": 12.5}"#;
    let first = ask(&s, &holder, args, 0).await;
    assert!(!first.allow && first.pending, "{first:?}");
    assert!(!first.approval_id.is_empty());
    assert!(
        first.reason.contains("mail-out asks group:mail-approvers"),
        "{first:?}"
    );
    // A tool without an @approval permit is not held.
    let plain = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(plain.allow && !plain.pending, "{plain:?}");
    // Asking again (same arguments, members in another order) finds the
    // same request: nobody is paged twice.
    let again = ask(
        &s,
        &holder,
        r#"{"amount": 12.50, "to": "cfo@outside.example"}"#,
        0,
    )
    .await;
    assert!(again.pending);
    assert_eq!(again.approval_id, first.approval_id);

    let (code, out, _) = cli(&s, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&first.approval_id), "{out}");
    assert!(out.contains("send the <b>weekly</b> report"), "{out}");
    assert!(out.contains("cfo@outside.example"), "{out}");

    // Nobody undeclared, not the workload, not an approver outside the
    // group the policy names.
    for who in ["user:mallory@example.com", PLANNER, BOB] {
        let (code, _, err) = cli(&s, &["approve", &first.approval_id, "--as", who]);
        assert_ne!(code, 0, "{who} approved");
        assert!(
            err.contains("not a declared approver") || err.contains("may not answer"),
            "{who}: {err}"
        );
    }
    assert_eq!(state(&s, &first.approval_id).await, "pending");

    let (code, out, err) = cli(
        &s,
        &[
            "approve",
            &first.approval_id,
            "--as",
            ALICE,
            "--reason",
            "expected",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("approved"), "{out}");
    let (code, _, err) = cli(&s, &["deny", &first.approval_id, "--as", ALICE]);
    assert_ne!(code, 0);
    assert!(err.contains("not pending"), "{err}");

    let allowed = ask(&s, &holder, args, 0).await;
    assert!(allowed.allow && !allowed.pending, "{allowed:?}");
    assert!(
        allowed
            .reason
            .contains("approved by user:alice@example.com"),
        "{allowed:?}"
    );
    assert_eq!(state(&s, &first.approval_id).await, "used");
    // Single use: the same call again is a new request.
    let next = ask(&s, &holder, args, 0).await;
    assert!(next.pending, "{next:?}");
    assert_ne!(next.approval_id, first.approval_id);
    // Other arguments: another request.
    let other = ask(
        &s,
        &holder,
        r#"{"to": "cfo@outside.example", "amount": 13}"#,
        0,
    )
    .await;
    assert!(other.pending);
    assert_ne!(other.approval_id, next.approval_id);

    answer(&s, &other.approval_id, false, ALICE).await.unwrap();
    let denied = ask(
        &s,
        &holder,
        r#"{"to": "cfo@outside.example", "amount": 13}"#,
        0,
    )
    .await;
    assert!(!denied.allow && !denied.pending, "{denied:?}");
    assert!(
        denied
            .reason
            .contains("denied by user:alice@example.com: checked"),
        "{denied:?}"
    );
    // A request for one call does not answer another, even when named.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let named = TaskIdentityClient::new(ch)
        .authorize_tool_call(header(AuthorizeToolCallRequest {
            credential: Some(x509(&holder.chain)),
            tool: "email.send".into(),
            resource: "outbox".into(),
            context_json: r#"{"to": "someone@else.example"}"#.into(),
            approval_id: first.approval_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!named.allow && !named.pending, "{named:?}");
    assert!(named.reason.contains("asked for another call"), "{named:?}");

    // Every step is in the audit chain.
    let kinds = audit_kinds(&s).await;
    for k in [
        "approval.requested",
        "approval.approved",
        "approval.used",
        "approval.denied",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let (code, out, _) = cli(&s, &["list", "--all", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"state\":\"used\""), "{out}");
}

async fn audit_kinds(s: &Setup) -> Vec<String> {
    let mut stream = s
        .server()
        .admin()
        .read_audit(lanyard_proto::admin::ReadAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut kinds = vec![];
    while let Some(line) = tokio_stream::StreamExt::next(&mut stream).await {
        let line = line.unwrap().line;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(k) = v.get("kind").and_then(|k| k.as_str())
        {
            kinds.push(k.to_owned());
        }
    }
    kinds
}

/// A caller that waits is held until the answer, then allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_call_is_released_when_approved() {
    let s = approval_setup(APPROVAL_POLICY).await;
    let holder = Holder::start(&s.socket, &["email.send"]);
    let args = r#"{"to": "board@outside.example"}"#;
    let held = {
        let socket = s.socket.clone();
        let chain = holder.chain.clone();
        tokio::spawn(async move {
            let ch = lanyard_uds::unix_channel(&socket).unwrap();
            TaskIdentityClient::new(ch)
                .authorize_tool_call(header(AuthorizeToolCallRequest {
                    credential: Some(x509(&chain)),
                    tool: "email.send".into(),
                    resource: "outbox".into(),
                    context_json: args.into(),
                    wait_ms: 30_000,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
        })
    };
    let id = eventually("the held request", WAIT, || async {
        pending(&s).await.into_iter().next().map(|a| a.id)
    })
    .await;
    assert!(!held.is_finished(), "the call did not wait");
    answer(&s, &id, true, ALICE).await.unwrap();
    let r = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert!(r.allow, "{r:?}");
    assert_eq!(r.approval_id, id);
    assert_eq!(state(&s, &id).await, "used");
}

/// Expiry, the task's end and a quarantine each end a pending request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_task_end_and_quarantine_end_pending_requests() {
    let s = approval_setup(
        r#"
        @id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
        @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("quick") @approval("any-operator") @approval_ttl("2s")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
        when { context.at_call && context.call.contains("quick=true") };
        @id("slow") @approval("any-operator")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
        when { context.at_call && context.call.contains("quick=false") };
        "#,
    )
    .await;
    let holder = Holder::start(&s.socket, &["email.send"]);
    let quick = ask(&s, &holder, r#"{"quick": true}"#, 0).await;
    assert!(quick.pending);
    let left = quick.approval_expires_at
        - i64::try_from(lanyard_core::clock::unix_secs(std::time::SystemTime::now())).unwrap();
    // At most the 2 s of its policy (not the 5 min default); a loaded
    // machine may answer late enough that it has already lapsed.
    assert!(left <= 3, "expires in {left}s");
    wait_state(&s, &quick.approval_id, "expired").await;
    let late = answer(&s, &quick.approval_id, true, ALICE)
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");

    // The task revoked: its request ends.
    let slow = ask(&s, &holder, r#"{"quick": false}"#, 0).await;
    assert!(slow.pending);
    s.server()
        .admin()
        .revoke_task(TaskRequest {
            task_id: holder.task_id.clone(),
        })
        .await
        .unwrap();
    wait_state(&s, &slow.approval_id, "ended").await;
    let rec = s
        .server()
        .admin()
        .get_approval(ApprovalRequest {
            id: slow.approval_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rec.reason.contains("revoked"), "{rec:?}");
    drop(holder);

    // A quarantine of the task: its request ends.
    let other = Holder::start(&s.socket, &["email.send"]);
    let held = ask(&s, &other, r#"{"quick": false}"#, 0).await;
    assert!(held.pending, "{held:?}");
    s.server()
        .admin()
        .add_quarantine(AddQuarantineRequest {
            task_id: other.task_id.clone(),
            reason: "looks wrong".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(&s, &held.approval_id, "ended").await;
    let err = answer(&s, &held.approval_id, true, ALICE)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}

/// `@approval("requester")`: only the person the task acts for, and only
/// when that person is a declared approver (otherwise a denial, not a
/// request nobody may answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_requester_approves_a_requester_approval() {
    let s = approval_setup(
        r#"
        @id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
        @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("on-behalf") @approval("requester")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send");
        "#,
    )
    .await;
    let for_bob = Holder::start_env(&s.socket, &["email.send"], &[("HOLD_ON_BEHALF_OF", BOB)]);
    let r = ask(&s, &for_bob, r#"{"to": "x"}"#, 0).await;
    assert!(r.pending, "{r:?}");
    let err = answer(&s, &r.approval_id, true, ALICE).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("eligible: user:bob@example.com"),
        "{err:?}"
    );
    answer(&s, &r.approval_id, true, BOB).await.unwrap();
    assert!(ask(&s, &for_bob, r#"{"to": "x"}"#, 0).await.allow);

    let for_carol = Holder::start_env(
        &s.socket,
        &["email.send"],
        &[("HOLD_ON_BEHALF_OF", "user:carol@example.com")],
    );
    let r = ask(&s, &for_carol, r#"{"to": "x"}"#, 0).await;
    assert!(!r.allow && !r.pending, "{r:?}");
    assert!(r.reason.contains("not a declared approver"), "{r:?}");
}

/// A node that cannot reach a server denies a call that needs approval,
/// never allows it; a call that needs none is still decided locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_server_a_call_that_needs_approval_is_denied() {
    let mut s = approval_setup(APPROVAL_POLICY).await;
    let holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    s.server.take().unwrap().stop().await;
    let r = ask(&s, &holder, r#"{"to": "x"}"#, 0).await;
    assert!(!r.allow && !r.pending, "{r:?}");
    assert!(r.reason.contains("cannot be asked"), "{r:?}");
    let plain = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(plain.allow, "{plain:?}");
}

/// `@approval` on BeginTask: the task waits for the person it acts for,
/// begins once approved (once), and a changed request asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_held_for_approval_begins_once_approved() {
    let s = approval_setup(
        r#"
        @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
        @id("reports") @approval("requester")
        permit (principal, action == Lanyard::Action::"BeginTask", resource == Lanyard::TaskType::"report.generate");
        "#,
    )
    .await;
    let begin = |tools: &'static [&'static str]| {
        let socket = s.socket.clone();
        async move {
            let ch = lanyard_uds::unix_channel(&socket).unwrap();
            TaskIdentityClient::new(ch)
                .begin_task(header(BeginTaskRequest {
                    spiffe_id: PLANNER.into(),
                    task_type: "report.generate".into(),
                    tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                    ttl_seconds: 300,
                    on_behalf_of: ALICE.into(),
                    intent: "the Q3 board report".into(),
                    ..Default::default()
                }))
                .await
        }
    };
    let err = begin(&["crm.read"]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().starts_with("approval pending"), "{err:?}");
    let listed = pending(&s).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let a = &listed[0];
    assert!(err.message().contains(&a.id), "{err:?}");
    assert_eq!(
        (a.action.as_str(), a.tool.as_str(), a.intent.as_str()),
        ("BeginTask", "report.generate", "the Q3 board report")
    );
    assert_eq!(a.eligible, vec![ALICE]);
    assert!(a.task_id.is_empty());
    // Asking again does not open a second request.
    begin(&["crm.read"]).await.unwrap_err();
    assert_eq!(pending(&s).await.len(), 1);
    let refused = answer(&s, &a.id, true, BOB).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    answer(&s, &a.id, true, ALICE).await.unwrap();
    let task = begin(&["crm.read"]).await.unwrap().into_inner();
    assert!(!task.task_id.is_empty());
    assert_eq!(state(&s, &a.id).await, "used");
    // Once: the same request again waits for a new approval.
    let again = begin(&["crm.read"]).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert!(!again.message().contains(&a.id), "{again:?}");
    // Another request (other tools) is another approval; denied, it is
    // the caller's answer.
    begin(&["crm.read", "email.send"]).await.unwrap_err();
    let other = pending(&s)
        .await
        .into_iter()
        .find(|x| x.arguments_json.contains("email.send"))
        .unwrap();
    answer(&s, &other.id, false, ALICE).await.unwrap();
    let denied = begin(&["crm.read", "email.send"]).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("denied by user:alice@example.com"),
        "{denied:?}"
    );
}
