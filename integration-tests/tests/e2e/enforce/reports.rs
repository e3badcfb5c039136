//! Denial reports from nodes: what the server believes, and counting a
//! workload's denials across its tasks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// Denial reports are a node's claim: a node with no enforcement point of
/// its own, a report naming a task that does not exist or a SPIFFE ID that
/// is not the task's, or a denial the server's own decision does not
/// reproduce, quarantine nothing and revoke nothing; each refusal is
/// audited. A believed entry-wide `@quarantine` from one node waits for an
/// operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_a_node_cannot_back_up_quarantine_nothing_and_one_nodes_entry_wide_waits() {
    use lanyard_integration_tests::{agent_config, node_client_from};
    use lanyard_proto::server::{Denial, ReportEnforcementRequest};
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    let addr = s.server().addr();
    // A second node, with no enforcement point.
    let other = tempfile::tempdir().unwrap();
    let token = s.server().token("spiffe://example.org/node/n2").await;
    let n2 = lanyard_agent::build(agent_config(other.path(), addr, Some(token)))
        .await
        .unwrap();
    let n2_node = node_client_from(&other.path().join("agent-data"), addr);
    let n1_node = node_client_from(&s.dir.path().join("agent-data"), addr);
    let forged = |task_id: &str, spiffe_id: &str, tool: &str| Denial {
        task_id: task_id.into(),
        spiffe_id: spiffe_id.into(),
        tool: tool.into(),
        reason: "forged".into(),
        quarantine: true,
        decision_id: "d".into(),
        enforcement_point: TOOLS.into(),
        quarantine_entry: true,
        resource: String::new(),
        context_json: String::new(),
    };
    let reports = [
        // A node that is not the enforcement point's parent.
        (
            n2_node.clone(),
            forged(&holder.task_id, PLANNER, "email.send"),
        ),
        // A task that does not exist.
        (
            n1_node.clone(),
            forged(&"ab".repeat(16), PLANNER, "email.send"),
        ),
        // A SPIFFE ID that is not the task's.
        (
            n1_node.clone(),
            forged(&holder.task_id, TOOLS, "email.send"),
        ),
        // A granted tool with no policy loaded: the server allows it.
        (
            n1_node.clone(),
            forged(&holder.task_id, PLANNER, "crm.read"),
        ),
    ];
    for (mut node, d) in reports.clone() {
        node.report_enforcement(ReportEnforcementRequest {
            denials: vec![d.clone(), d.clone(), d.clone(), d.clone(), d],
        })
        .await
        .unwrap();
    }
    assert!(quarantines(&s, true).await.is_empty());
    assert!(
        revoked_ids(&s).await.is_empty(),
        "{:?}",
        revoked_ids(&s).await
    );
    assert!(holder.fetch().starts_with("svids"));
    let refused = eventually("the refusals in the audit log", WAIT, || async {
        let n = lanyard_integration_tests::verified_audit(s.server().admin())
            .await
            .iter()
            .filter(|r| r["kind"] == "enforcement.report_refused")
            .count();
        (n >= 4 * 5).then_some(n)
    })
    .await;
    eprintln!("{refused} refused reports audited");

    // A real denial under an entry-wide @quarantine, seen by this node's
    // enforcement point only: the instance now, the entry on confirmation.
    set_policy(
        &s,
        &format!(
            r#"{ALLOW_ALL}
            @id("exfiltration") @reason("mail to an attacker") @quarantine("entry")
            forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
            when {{ context.at_call && context.call.contains("to=attacker.example") }};"#
        ),
    )
    .await;
    let r = authorize(
        &s.socket,
        x509(&holder.chain),
        "email.send",
        r#"{"to": "attacker.example"}"#,
    )
    .await
    .unwrap();
    assert!(!r.allow);
    let pending = eventually("a pending entry-wide quarantine", WAIT, || async {
        quarantines(&s, false)
            .await
            .into_iter()
            .find(|q| q.scope == "entry")
    })
    .await;
    assert!(pending.pending, "{pending:?}");
    assert_eq!(pending.spiffe_id, PLANNER);
    let all = quarantines(&s, false).await;
    assert!(
        all.iter().any(|q| q.scope == "instance" && !q.pending),
        "{all:?}"
    );
    let spiffe_revoked = format!("spiffe_id:{PLANNER}");
    assert!(!revoked_ids(&s).await.contains(&spiffe_revoked));
    let confirmed = s
        .server()
        .admin()
        .confirm_quarantine(lanyard_proto::admin::QuarantineRequest {
            id: pending.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!confirmed.pending);
    eventually("the entry's SVIDs revoked", WAIT, || async {
        revoked_ids(&s)
            .await
            .contains(&spiffe_revoked)
            .then_some(())
    })
    .await;
    n2.shutdown().await;
}

/// Denials are counted per workload across its tasks: probing three
/// forbidden tools, ending the task and beginning another does not reset
/// the count; the fourth denial, in the new task, quarantines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denials_count_across_a_workloads_tasks() {
    let s = setup(true).await;
    let begin = || async {
        let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
        let r = TaskIdentityClient::new(ch)
            .begin_task(header(BeginTaskRequest {
                spiffe_id: PLANNER.into(),
                task_type: "report.generate".into(),
                tools: vec!["crm.read".into()],
                ttl_seconds: 300,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let chain = lanyard_core::x509::der_chain_split(&r.x509_svid.unwrap().x509_svid).unwrap();
        (r.task_id, chain)
    };
    let (first, chain) = begin().await;
    for _ in 0..3 {
        let d = authorize(&s.socket, x509(&chain), "payments.transfer", "")
            .await
            .unwrap();
        assert!(!d.allow);
    }
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    TaskIdentityClient::new(ch)
        .end_task(header(lanyard_proto::task::EndTaskRequest {
            task_id: first,
        }))
        .await
        .unwrap();
    let (second, chain) = begin().await;
    let d = authorize(&s.socket, x509(&chain), "payments.transfer", "")
        .await
        .unwrap();
    assert!(!d.allow);
    let q = eventually("a quarantine for the second task", WAIT, || async {
        quarantines(&s, false)
            .await
            .into_iter()
            .find(|q| q.task_id == second)
    })
    .await;
    assert_eq!(q.source, "denials");
    assert_eq!(q.spiffe_id, PLANNER);
}
