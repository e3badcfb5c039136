//! Approvals across servers sharing one database: a call held on the
//! agent's server is approved through another and released at once (the
//! change feed wakes the holding server); the approval is used once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The declared approver of every server in the fleet.
pub(super) const APPROVER: &str = "user:ops@example.com";

pub(super) async fn a_call_held_through_one_server_is_approved_through_another(
    f: &Fleet,
    agent: &lanyard_agent::Bound,
    home: usize,
) {
    use lanyard_proto::admin::{AnswerApprovalRequest, ListApprovalsRequest, SetPolicyRequest};
    use lanyard_proto::task::authorize_tool_call_request::Credential;
    use lanyard_proto::task::task_identity_client::TaskIdentityClient;
    use lanyard_proto::task::{AuthorizeToolCallRequest, BeginTaskRequest, X509Chain};
    let (other, third) = ((home + 1) % 3, (home + 2) % 3);
    let id = "spiffe://example.org/approvals";
    let mut entry = entry_req(id);
    if let Some(e) = entry.entry.as_mut() {
        e.task_limits = Some(types::TaskLimits {
            allowed_task_types: vec!["*".into()],
            allowed_tools: vec!["*".into()],
            max_task_ttl_seconds: 600,
            ..Default::default()
        });
    }
    let workload = f
        .admin(other)
        .create_entry(entry)
        .await
        .unwrap()
        .into_inner();
    // This process is also the enforcement point (its own binary's path).
    let exe = std::env::current_exe().unwrap();
    let tool = f
        .admin(other)
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: "spiffe://example.org/approvals-tool".into(),
                parent_id: NODE.into(),
                selectors: vec![
                    format!("unix:uid:{}", own_uid()),
                    format!("unix:path:{}", exe.display()),
                ],
                enforcement_point: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    f.admin(third)
        .set_policy(SetPolicyRequest {
            text: r#"@id("all") permit (principal, action, resource);
                @id("held") @approval("any-operator")
                permit (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"fleet.send")
                when { context.at_call };"#
                .into(),
            shadow: false,
            source_name: "fleet.cedar".into(),
        })
        .await
        .unwrap();
    let chan = || lanyard_uds::unix_channel(&agent.socket).unwrap();
    let task = eventually(
        "a task under the new entry",
        Duration::from_secs(10),
        || async {
            TaskIdentityClient::new(chan())
                .begin_task(header(BeginTaskRequest {
                    spiffe_id: id.into(),
                    task_type: "fleet.check".into(),
                    tools: vec!["fleet.send".into()],
                    ttl_seconds: 120,
                    ..Default::default()
                }))
                .await
                .ok()
        },
    )
    .await
    .into_inner();
    let chain = lanyard_core::x509::der_chain_split(&task.x509_svid.unwrap().x509_svid).unwrap();
    let ask = move |n: u32, wait_ms: u32| {
        let chain = chain.clone();
        let socket = agent.socket.clone();
        async move {
            TaskIdentityClient::new(lanyard_uds::unix_channel(&socket).unwrap())
                .authorize_tool_call(header(AuthorizeToolCallRequest {
                    credential: Some(Credential::X509Chain(X509Chain { certs: chain })),
                    tool: "fleet.send".into(),
                    context_json: format!(r#"{{"n": {n}}}"#),
                    wait_ms,
                    ..Default::default()
                }))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // The agent holds the policy once a call is pending.
    eventually(
        "the policy on the agent",
        Duration::from_secs(20),
        || async { ask(0, 0).await.ok().filter(|r| r.pending) },
    )
    .await;
    let held = tokio::spawn(ask(1, 20_000));
    let pending = eventually(
        "the request, seen through another server",
        Duration::from_secs(10),
        || async {
            f.admin(other)
                .list_approvals(ListApprovalsRequest { all: false })
                .await
                .ok()?
                .into_inner()
                .approvals
                .into_iter()
                .find(|a| a.arguments_json == r#"{"n": 1}"#)
        },
    )
    .await;
    let sent = Instant::now();
    f.admin(third)
        .answer_approval(AnswerApprovalRequest {
            id: pending.id.clone(),
            approve: true,
            approver: APPROVER.into(),
            reason: "through the third server".into(),
        })
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(15), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.allow, "{r:?}");
    eprintln!(
        "approval through another server -> held call allowed: {:?}",
        sent.elapsed()
    );
    // Used once, across every server.
    let again = ask(1, 0).await.unwrap();
    assert!(
        again.pending && again.approval_id != pending.id,
        "{again:?}"
    );
    let seen = f
        .admin(other)
        .get_approval(lanyard_proto::admin::ApprovalRequest { id: pending.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.state, "used");
    // The later steps count this process's SVIDs: the two entries go.
    for e in [workload, tool] {
        f.admin(other)
            .delete_entry(lanyard_proto::admin::DeleteEntryRequest { id: e.id })
            .await
            .unwrap();
    }
}
