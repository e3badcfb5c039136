//! Policy at the tool: an empty set, the server's sensitivity levels, attributes the tool cannot know.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// An empty policy set means the same on the server and at the tool: it
/// permits nothing (no new task, no call of a running one); `policy clear`
/// unloads it, and the grant and the entry's ceilings decide alone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_policy_set_permits_nothing_on_both_sides_and_clear_unloads_it() {
    let s = setup(true).await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    let allowed = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(allowed.allow, "{allowed:?}");
    let begin = || async {
        let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
        TaskIdentityClient::new(ch)
            .begin_task(header(BeginTaskRequest {
                spiffe_id: PLANNER.into(),
                task_type: "report.generate".into(),
                tools: vec!["crm.read".into()],
                ttl_seconds: 300,
                ..Default::default()
            }))
            .await
    };

    set_policy(&s, "").await;
    let denied = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(!denied.allow, "the running task is refused too: {denied:?}");
    assert!(denied.reason.contains("no policy permits"), "{denied:?}");
    let err = begin().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    let cleared = s
        .server()
        .admin()
        .clear_policy(lanyard_proto::admin::ClearPolicyRequest { shadow: false })
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.version > 0);
    let mut state = s.agent.state.clone();
    tokio::time::timeout(WAIT, state.wait_for(|snap| snap.policy_version == 0))
        .await
        .unwrap()
        .unwrap();
    let allowed = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(allowed.allow, "{allowed:?}");
    begin().await.unwrap();
    let none = s
        .server()
        .admin()
        .get_policy(lanyard_proto::admin::GetPolicyRequest {
            version: 0,
            shadow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::NotFound);
}

/// With sensitivity levels of its own in the server's configuration, a
/// `UseTool` policy on `sensitivity_rank` decides at the tool as it did at
/// BeginTask: the node agent ranks with the server's levels, not the
/// defaults (which do not know "mid" and would deny).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_decision_point_ranks_sensitivity_with_the_servers_levels() {
    let levels = vec!["low".to_owned(), "mid".to_owned(), "high".to_owned()];
    let s = setup_configured(
        true,
        |c| {
            c.sensitivity_levels =
                lanyard_core::task::SensitivityLevels::new(levels.clone()).unwrap();
        },
        |_| {},
    )
    .await;
    set_policy(
        &s,
        r#"
        @id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource)
            when { context.sensitivity_rank <= 1 };
        @id("mid-or-below") permit (principal, action == Lanyard::Action::"UseTool", resource)
            when { context.sensitivity_rank <= 1 };
        "#,
    )
    .await;
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.levels.as_slice() == levels.as_slice()),
    )
    .await
    .unwrap()
    .unwrap();
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let begun = TaskIdentityClient::new(ch)
        .begin_task(header(BeginTaskRequest {
            spiffe_id: PLANNER.into(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            data_sensitivity: "mid".into(),
            ttl_seconds: 300,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let chain = lanyard_core::x509::der_chain_split(&begun.x509_svid.unwrap().x509_svid).unwrap();
    let d = authorize(&s.socket, x509(&chain), "crm.read", "")
        .await
        .unwrap();
    assert!(
        d.allow,
        "granted at BeginTask, so allowed at the tool: {d:?}"
    );
    assert_eq!(d.policy_ids, ["mid-or-below"]);
}

/// A policy that reads what the decision point cannot know for an X.509
/// caller (its executable digest: only a task JWT carries it) denies the
/// call, naming the policy and the attribute, instead of comparing with a
/// blank and letting the forbid miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_on_an_attribute_the_tool_cannot_know_denies() {
    let s = setup(true).await;
    let holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    set_policy(
        &s,
        &format!(
            r#"{ALLOW_ALL}
            @id("bad-build") @reason("a known bad build")
            forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"crm.read")
            when {{ principal.exe_sha256 == "00" }};"#
        ),
    )
    .await;
    let d = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(!d.allow, "{d:?}");
    assert_eq!(d.policy_ids, ["bad-build"]);
    assert!(d.reason.contains("principal.exe_sha256"), "{d:?}");
    // A tool no such policy covers is decided as before.
    let d = authorize(&s.socket, x509(&holder.chain), "email.send", "")
        .await
        .unwrap();
    assert!(d.allow, "{d:?}");
}
