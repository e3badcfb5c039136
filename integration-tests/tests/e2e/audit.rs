//! The audit log end to end: every kind of record written by the real
//! flow that causes it (agents, admin calls, tasks, decisions on the node
//! agent shipped through its durable queue), the export verified with the
//! public key, and the offline `audit verify` of the real binary refusing
//! an edited, deleted, reordered or inserted line with its sequence number.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::enforce_support;

mod approvals;

use std::collections::{BTreeSet, HashMap};

use enforce_support::*;
use lanyard_core::audit::Kind;
use lanyard_integration_tests::{NODE, agent_config, eventually, verified_audit};
use lanyard_proto::admin::{
    AddCredentialRequest, CredentialProviderRequest, RotateCredentialRequest,
};
use lanyard_proto::admin::{
    AddQuarantineRequest, AgentRequest, AuthorityRequest, DeleteEntryRequest,
    ListAuthoritiesRequest, QuarantineRequest, RevokeSvidRequest, TaskRequest, UpdateEntryRequest,
};
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallResponse, BeginTaskRequest, DelegateTaskRequest};
use lanyard_proto::workload::JwtsvidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use serde_json::Value;

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn begin_request(tools: &[&str]) -> BeginTaskRequest {
    BeginTaskRequest {
        spiffe_id: PLANNER.into(),
        task_type: "report.generate".into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        ttl_seconds: 120,
        intent: "quarterly report".into(),
        on_behalf_of: "user:alice@example.com".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_recorded_by_the_flow_that_causes_it() {
    let s = setup_configured(
        true,
        |c| {
            c.approval.approvers = vec![lanyard_server::config::approvers::Approver {
                name: "user:ops@example.com".into(),
                groups: vec![],
                webhook: None,
            }];
        },
        |_| {},
    )
    .await;
    let other = tempfile::tempdir().unwrap();
    a_refused_attestation_entry_changes_and_a_jwt_svid(&s, other.path()).await;
    let (holder, mine) = tasks_begun_refused_delegated_and_ended(&s).await;
    a_credential_issued_refused_and_ended_with_its_task(&s).await;
    let (allowed, refused_call) = one_call_allowed_and_one_denied(&s, &holder).await;
    approvals::asked_answered_used_and_lapsed(&s).await;
    let holder2 = a_revocation_a_quarantine_released_and_a_task_revoked(&s, &holder).await;
    let holder3 = reports_a_gap_and_an_entry_wide_quarantine_confirmed(&s).await;
    an_authority_rotated_tainted_and_revoked(&s).await;
    a_credential_provider_added_rotated_and_deleted(&s).await;
    agents_ship_decisions_then_are_banned_and_evicted(&s, other.path()).await;

    let recs = verified_audit(s.server().admin()).await;
    let kinds: BTreeSet<&str> = recs.iter().map(kind).collect();
    let missing: Vec<&str> = Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .filter(|k| !kinds.contains(k))
        .collect();
    assert!(missing.is_empty(), "kinds never recorded: {missing:?}");
    credential_records_name_the_secret_by_digest_only(&recs);
    records_say_who_and_why(&recs, &holder, &holder2, &mine, &allowed, &refused_call);
    drop((holder, holder2, holder3));
    s.agent.shutdown().await;
}

/// A refused attestation (an agent with a made-up token); an entry
/// updated, another created and deleted; a JWT-SVID.
async fn a_refused_attestation_entry_changes_and_a_jwt_svid(s: &Setup, other: &std::path::Path) {
    let refused = lanyard_agent::build(agent_config(
        other,
        s.server().addr(),
        Some("not-a-token".into()),
    ))
    .await;
    assert!(refused.is_err());
    let mut e = entry(
        s.server(),
        "spiffe://example.org/agent/temp",
        vec!["unix:gid:4242".into()],
        false,
    )
    .await;
    e.hint = "changed".into();
    s.server()
        .admin()
        .update_entry(UpdateEntryRequest {
            entry: Some(e.clone()),
        })
        .await
        .unwrap();
    s.server()
        .admin()
        .delete_entry(DeleteEntryRequest { id: e.id.clone() })
        .await
        .unwrap();

    // A JWT-SVID.
    let mut wl = SpiffeWorkloadApiClient::new(lanyard_uds::unix_channel(&s.socket).unwrap());
    wl.fetch_jwtsvid(header(JwtsvidRequest {
        audience: vec!["crm".into()],
        spiffe_id: PLANNER.into(),
    }))
    .await
    .unwrap();
}

/// A holder process begins a task; this process begins one, is refused
/// one, delegates from its own, and ends it. Returns the holder and this
/// process's task ID.
async fn tasks_begun_refused_delegated_and_ended(s: &Setup) -> (Holder, String) {
    let holder = Holder::start(&s.socket, &["crm.read"]);
    let mut tasks = TaskIdentityClient::new(lanyard_uds::unix_channel(&s.socket).unwrap());
    let denied = tasks
        .begin_task(header(begin_request(&["payments.transfer"])))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let mine = tasks
        .begin_task(header(begin_request(&["crm.read", "email.send"])))
        .await
        .unwrap()
        .into_inner();
    tasks
        .delegate_task(header(DelegateTaskRequest {
            task_id: mine.task_id.clone(),
            to_spiffe_id: TOOLS.into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 30,
        }))
        .await
        .unwrap();
    tasks
        .end_task(header(lanyard_proto::task::EndTaskRequest {
            task_id: mine.task_id.clone(),
        }))
        .await
        .unwrap();
    (holder, mine.task_id)
}

/// A task of this process is handed a transaction token, refused an
/// unknown provider, and ended: the lease ends with it.
async fn a_credential_issued_refused_and_ended_with_its_task(s: &Setup) {
    use lanyard_proto::broker::GetCredentialRequest;
    use lanyard_proto::broker::credential_broker_client::CredentialBrokerClient;
    const ID: &str = "spiffe://example.org/agent/credentials";
    let mut admin = s.server().admin();
    admin
        .add_credential(AddCredentialRequest {
            name: "audit-txn".into(),
            kind: "txn-token".into(),
            audience: "spiffe://example.org".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_entry(lanyard_proto::admin::CreateEntryRequest {
            entry: Some(lanyard_proto::types::Entry {
                spiffe_id: ID.into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", lanyard_integration_tests::own_uid())],
                task_limits: Some(lanyard_proto::types::TaskLimits {
                    allowed_task_types: vec!["*".into()],
                    allowed_tools: vec!["*".into()],
                    max_task_ttl_seconds: 600,
                    allowed_credentials: vec!["audit-txn".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut tasks = TaskIdentityClient::new(lanyard_uds::unix_channel(&s.socket).unwrap());
    let task = eventually("a task under the new entry", WAIT, || {
        let mut tasks = tasks.clone();
        async move {
            tasks
                .begin_task(header(BeginTaskRequest {
                    spiffe_id: ID.into(),
                    ..begin_request(&["crm.read"])
                }))
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    let mut broker = CredentialBrokerClient::new(lanyard_uds::unix_channel(&s.socket).unwrap());
    let ask = |name: &str| {
        header(GetCredentialRequest {
            name: name.into(),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
    };
    let first = broker
        .get_credential(ask("audit-txn"))
        .await
        .unwrap()
        .into_inner();
    // Asked again: the agent serves its copy, and records that on the node.
    let again = broker
        .get_credential(ask("audit-txn"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.lease_id, first.lease_id);
    let e = broker
        .get_credential(ask("audit-missing"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    tasks
        .end_task(header(lanyard_proto::task::EndTaskRequest {
            task_id: task.task_id.clone(),
        }))
        .await
        .unwrap();
    eventually(
        "the lease's end, and the copy served on the node",
        WAIT,
        || async {
            let recs = verified_audit(s.server().admin()).await;
            let ended = recs.iter().any(|r| {
                kind(r) == "credential.lease_ended" && r["task"]["id"] == task.task_id.as_str()
            });
            let served = recs.iter().any(|r| {
                kind(r) == "credential.served"
                    && r["details"]["lease_id"] == first.lease_id.as_str()
                    && r["subject"]["spiffe_id"] == ID
                    && r["origin"]["agent"] == NODE
            });
            (ended && served).then_some(())
        },
    )
    .await;
}

/// The policy, and decisions at the enforcement point: one allowed, one
/// denied.
async fn one_call_allowed_and_one_denied(
    s: &Setup,
    holder: &Holder,
) -> (AuthorizeToolCallResponse, AuthorizeToolCallResponse) {
    set_policy(s, "@id(\"all\") permit(principal, action, resource);").await;
    let allowed = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(allowed.allow, "{allowed:?}");
    let refused_call = authorize(&s.socket, x509(&holder.chain), "email.send", "")
        .await
        .unwrap();
    assert!(!refused_call.allow);
    crate::audit_calls::a_call_and_its_outcome_recorded_once(s, holder).await;
    (allowed, refused_call)
}

/// A revocation, a quarantine and its release, a task revoked.
async fn a_revocation_a_quarantine_released_and_a_task_revoked(
    s: &Setup,
    holder: &Holder,
) -> Holder {
    s.server()
        .admin()
        .revoke_svid(RevokeSvidRequest {
            serial: "0abc".into(),
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let q = s
        .server()
        .admin()
        .add_quarantine(AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "audit test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    s.server()
        .admin()
        .release_quarantine(QuarantineRequest { id: q.id.clone() })
        .await
        .unwrap();
    // The quarantine held the workload (this uid's planner processes):
    // the next one begins once the agent has the release.
    let mut state = s.agent.state.clone();
    tokio::time::timeout(WAIT, state.wait_for(|snap| snap.quarantines.is_empty()))
        .await
        .unwrap()
        .unwrap();
    let holder2 = Holder::start(&s.socket, &["crm.read"]);
    s.server()
        .admin()
        .revoke_task(TaskRequest {
            task_id: holder2.task_id.clone(),
        })
        .await
        .unwrap();
    holder2
}

/// A report the server does not believe (a task that does not exist), a
/// shipment that skips queue numbers, and a believed entry-wide
/// `@quarantine` from this one node, pending until an operator confirms it.
async fn reports_a_gap_and_an_entry_wide_quarantine_confirmed(s: &Setup) -> Holder {
    let mut node = lanyard_integration_tests::node_client_from(
        &s.dir.path().join("agent-data"),
        s.server().addr(),
    );
    node.report_enforcement(lanyard_proto::server::ReportEnforcementRequest {
        denials: vec![lanyard_proto::server::Denial {
            task_id: "ab".repeat(16),
            spiffe_id: PLANNER.into(),
            tool: "crm.read".into(),
            enforcement_point: TOOLS.into(),
            quarantine: true,
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    // A shipment that skips queue numbers (5 after nothing): the gap is
    // an anomaly record in the chain.
    let mut shipped =
        lanyard_core::audit::Event::new(Kind::ToolDecision, "2026-12-03T00:00:00.000Z".into());
    shipped.correlation.decision_id = "shipped-after-a-gap".into();
    let event = serde_json::to_string(&shipped).unwrap();
    node.append_audit(lanyard_proto::server::AppendAuditRequest {
        epoch: "gappyepoch01".into(),
        records: vec![lanyard_proto::server::AuditItem {
            seq: 5,
            event_json: event,
        }],
    })
    .await
    .unwrap();
    set_policy(
        s,
        r#"@id("all") permit(principal, action, resource);
        @id("exfil") @quarantine("entry")
        forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
        when { context.at_call && context.call.contains("to=attacker") };"#,
    )
    .await;
    let holder3 = Holder::start(&s.socket, &["crm.read", "email.send"]);
    let exfil = authorize(
        &s.socket,
        x509(&holder3.chain),
        "email.send",
        r#"{"to": "attacker"}"#,
    )
    .await
    .unwrap();
    assert!(!exfil.allow);
    let pending = eventually("a pending quarantine", WAIT, || async {
        s.server()
            .admin()
            .list_quarantines(lanyard_proto::admin::ListQuarantinesRequest { all: false })
            .await
            .ok()?
            .into_inner()
            .quarantines
            .into_iter()
            .find(|q| q.pending)
    })
    .await;
    s.server()
        .admin()
        .confirm_quarantine(QuarantineRequest { id: pending.id })
        .await
        .unwrap();
    holder3
}

/// Authorities: prepare, activate, taint and revoke the old one.
async fn an_authority_rotated_tainted_and_revoked(s: &Setup) {
    let old = s.server().active_ca_id();
    s.server()
        .admin()
        .prepare_authorities(ListAuthoritiesRequest {})
        .await
        .unwrap();
    s.server()
        .admin()
        .activate_authorities(ListAuthoritiesRequest {})
        .await
        .unwrap();
    s.server()
        .admin()
        .taint_authority(AuthorityRequest { id: old.clone() })
        .await
        .unwrap();
    // The agent renews its own SVID at once (signed by the tainted CA);
    // only then may that CA leave the bundle.
    eventually("the agent to renew its SVID", WAIT, || async {
        verified_audit(s.server().admin())
            .await
            .iter()
            .any(|r| kind(r) == "agent.renewed")
            .then_some(())
    })
    .await;
    s.server()
        .admin()
        .revoke_authority(AuthorityRequest { id: old })
        .await
        .unwrap();
}

/// A secret credential provider declared, its value rotated, then removed.
async fn a_credential_provider_added_rotated_and_deleted(s: &Setup) {
    let mut admin = s.server().admin();
    admin
        .add_credential(AddCredentialRequest {
            name: "crm-api-key".into(),
            kind: "secret".into(),
            secret: SECRET_V1.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .rotate_credential(RotateCredentialRequest {
            name: "crm-api-key".into(),
            secret: SECRET_V2.into(),
        })
        .await
        .unwrap();
    admin
        .delete_credential(CredentialProviderRequest {
            name: "crm-api-key".into(),
        })
        .await
        .unwrap();
}

const SECRET_V1: &[u8] = b"sk-live-audit-first";
const SECRET_V2: &[u8] = b"sk-live-audit-second";

/// The credential records say who did what to which provider, name the
/// value by a digest that changes with it, and never hold the value.
fn credential_records_name_the_secret_by_digest_only(recs: &[Value]) {
    let creds: Vec<&Value> = recs
        .iter()
        .filter(|r| r["details"]["name"] == "crm-api-key")
        .collect();
    let kinds: Vec<&str> = creds.iter().map(|r| kind(r)).collect();
    assert_eq!(
        kinds,
        [
            "credential.added",
            "credential.rotated",
            "credential.deleted"
        ]
    );
    for r in &creds {
        assert_eq!(r["details"]["name"], "crm-api-key", "{r}");
        assert_eq!(r["details"]["kind"], "secret", "{r}");
        assert!(r["actor"].as_str().unwrap().starts_with("uid:"), "{r}");
        let text = r.to_string();
        assert!(
            !text.contains("sk-live"),
            "a secret in the audit log: {text}"
        );
        assert!(
            r["details"]["digest"]
                .as_str()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
    }
    assert_ne!(creds[0]["details"]["digest"], creds[1]["details"]["digest"]);
}

/// The agent ships its decisions; then it is evicted, and a second agent
/// banned.
async fn agents_ship_decisions_then_are_banned_and_evicted(s: &Setup, other: &std::path::Path) {
    eventually("the agent to ship its decisions", WAIT, || async {
        (verified_audit(s.server().admin())
            .await
            .iter()
            .filter(|r| kind(r) == "tool.decision")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let token2 = s.server().token("spiffe://example.org/node/n2").await;
    let agent2 = lanyard_agent::build(agent_config(other, s.server().addr(), Some(token2)))
        .await
        .unwrap();
    agent2.shutdown().await;
    s.server()
        .admin()
        .ban_agent(AgentRequest {
            spiffe_id: "spiffe://example.org/node/n2".into(),
        })
        .await
        .unwrap();
    s.server()
        .admin()
        .evict_agent(AgentRequest {
            spiffe_id: NODE.into(),
        })
        .await
        .unwrap();
}

/// Decisions carry what the enforcement point was told, and who shipped
/// them (set by the server from the agent's mTLS identity); issuance names
/// the serial and the agent; the admin's uid is the actor of admin
/// changes; the denied task says why.
fn records_say_who_and_why(
    recs: &[Value],
    holder: &Holder,
    holder2: &Holder,
    mine: &str,
    allowed: &AuthorizeToolCallResponse,
    refused_call: &AuthorizeToolCallResponse,
) {
    let by_decision: HashMap<&str, &Value> = recs
        .iter()
        .filter(|r| kind(r) == "tool.decision")
        .map(|r| (r["correlation"]["decision_id"].as_str().unwrap(), r))
        .collect();
    let a = by_decision[allowed.decision_id.as_str()];
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["task"]["id"], holder.task_id.as_str());
    assert_eq!(a["subject"]["spiffe_id"], PLANNER);
    assert_eq!(a["actor"], TOOLS);
    assert_eq!(a["tool"], "crm.read");
    assert_eq!(a["policy_ids"][0], "all");
    assert_eq!(a["origin"]["agent"], NODE);
    let d = by_decision[refused_call.decision_id.as_str()];
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["reason"], refused_call.reason.as_str());
    // Issuance names the serial and the agent; the admin's uid is the
    // actor of admin changes; the denied task says why.
    let issued = recs.iter().find(|r| kind(r) == "svid.issued").unwrap();
    assert_eq!(issued["actor"], NODE);
    assert!(!issued["correlation"]["serial"].as_str().unwrap().is_empty());
    let created = recs.iter().find(|r| kind(r) == "entry.created").unwrap();
    assert!(created["actor"].as_str().unwrap().starts_with("uid:"));
    let denied_rec = recs.iter().find(|r| kind(r) == "task.denied").unwrap();
    assert!(
        denied_rec["reason"]
            .as_str()
            .unwrap()
            .contains("payments.transfer"),
        "{denied_rec}"
    );
    let revoked = recs
        .iter()
        .find(|r| kind(r) == "task.revoked" && r["task"]["id"] == holder2.task_id.as_str())
        .unwrap();
    assert!(
        revoked["actor"].as_str().unwrap().starts_with("uid:"),
        "{revoked}"
    );
    let ended = recs
        .iter()
        .find(|r| kind(r) == "task.ended" && r["task"]["id"] == mine)
        .unwrap();
    assert_eq!(ended["actor"], NODE);
    let delegated = recs.iter().find(|r| kind(r) == "task.delegated").unwrap();
    assert_eq!(delegated["task"]["id"], mine);
    assert_eq!(delegated["subject"]["spiffe_id"], TOOLS);
}
