//! The approval records of the audit test: one call approved and used,
//! one denied, one expired, one ended with its task.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// Calls held for approval: one approved and used, one denied, one
/// expired, one ended with its task. Only the one meant to expire has a
/// short lifetime: on a loaded machine a 1 s request can lapse before
/// the test answers it.
pub(super) async fn asked_answered_used_and_lapsed(s: &Setup) {
    use lanyard_proto::admin::{AnswerApprovalRequest, ApprovalRequest};
    use lanyard_proto::task::AuthorizeToolCallRequest;
    set_policy(
        s,
        r#"@id("all") permit(principal, action, resource);
        @id("held") @approval("any-operator") @approval_ttl("5m")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read")
        when { context.at_call && context.call.contains("held=true") && !context.call.contains("n=3") };
        @id("lapses") @approval("any-operator") @approval_ttl("1s")
        permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read")
        when { context.at_call && context.call.contains("held=true") && context.call.contains("n=3") };"#,
    )
    .await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    let ask = |n: u32| {
        let socket = s.socket.clone();
        let chain = holder.chain.clone();
        async move {
            let ch = lanyard_uds::unix_channel(&socket).unwrap();
            TaskIdentityClient::new(ch)
                .authorize_tool_call(header(AuthorizeToolCallRequest {
                    credential: Some(x509(&chain)),
                    tool: "crm.read".into(),
                    context_json: format!(r#"{{"held": true, "n": {n}}}"#),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let answer = |id: String, approve: bool| async move {
        s.server()
            .admin()
            .answer_approval(AnswerApprovalRequest {
                id,
                approve,
                approver: "user:ops@example.com".into(),
                reason: "audit test".into(),
            })
            .await
            .unwrap();
    };
    let state = |id: String| async move {
        s.server()
            .admin()
            .get_approval(ApprovalRequest { id })
            .await
            .unwrap()
            .into_inner()
            .state
    };
    let approved = ask(1).await;
    assert!(approved.pending, "{approved:?}");
    answer(approved.approval_id.clone(), true).await;
    assert!(ask(1).await.allow);
    let denied = ask(2).await;
    answer(denied.approval_id.clone(), false).await;
    let expired = ask(3).await;
    eventually("an expired request", WAIT, || async {
        (state(expired.approval_id.clone()).await == "expired").then_some(())
    })
    .await;
    let ended = ask(4).await;
    assert!(ended.pending, "{ended:?}");
    s.server()
        .admin()
        .revoke_task(TaskRequest {
            task_id: holder.task_id.clone(),
        })
        .await
        .unwrap();
    eventually("a request ended with its task", WAIT, || async {
        (state(ended.approval_id.clone()).await == "ended").then_some(())
    })
    .await;
    set_policy(s, "@id(\"all\") permit(principal, action, resource);").await;
}
