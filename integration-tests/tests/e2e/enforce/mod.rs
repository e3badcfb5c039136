//! Runtime enforcement end to end: a real server and agent, a second real
//! workload process holding a task, this test process as the enforcement
//! point (a tool server), AuthorizeToolCall, CRLs through the Workload API,
//! rustls handshakes on the peer validator, quarantine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::enforce_support;
mod approval;
mod approval_webhooks;
mod policy;
mod quarantine;
mod reports;
mod revocation;
mod revocation_bound;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enforce_support::*;
use lanyard_core::SpiffeId;
use lanyard_core::x509::{SvidKey, SvidParams, X509Authority};
use lanyard_integration_tests::{TD, eventually};
use lanyard_proto::task::BeginTaskRequest;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

const ALLOW_ALL: &str = r#"
    @id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
    @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
"#;

/// A chain from a CA of the same trust domain that is not in the bundle.
fn foreign_chain(td: &str, id: &str) -> Vec<Vec<u8>> {
    let td = lanyard_core::TrustDomain::new(td).unwrap();
    let now = std::time::SystemTime::now();
    let ca = X509Authority::generate_root(&td, now, Duration::from_secs(3600)).unwrap();
    let key = SvidKey::generate().unwrap();
    let id = SpiffeId::new(id).unwrap();
    let p = SvidParams {
        spiffe_id: id.clone(),
        dns_names: vec![],
        ttl: Duration::from_secs(60),
        extensions: vec![],
    };
    vec![
        ca.sign_x509_svid(&key.csr(&id).unwrap(), &p, now)
            .unwrap()
            .cert_der,
    ]
}

async fn authorize_aud(
    s: &Setup,
    credential: lanyard_proto::task::authorize_tool_call_request::Credential,
    tool: &str,
) -> Result<lanyard_proto::task::AuthorizeToolCallResponse, tonic::Status> {
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    TaskIdentityClient::new(ch)
        .authorize_tool_call(header(lanyard_proto::task::AuthorizeToolCallRequest {
            credential: Some(credential),
            tool: tool.into(),
            audience: "tools".into(),
            ..Default::default()
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// Polls `check` until it is true; returns how long that took from `from`.
async fn within(what: &str, from: Instant, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let deadline = from + WAIT;
    loop {
        if check().await {
            return from.elapsed();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The most a revocation may take to reach a peer in these tests. The
/// target is well under a second (the benchmark measures p99); the margin
/// is for a loaded 2-core CI machine.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

async fn quarantines(s: &Setup, all: bool) -> Vec<lanyard_proto::types::Quarantine> {
    s.server()
        .admin()
        .list_quarantines(lanyard_proto::admin::ListQuarantinesRequest { all })
        .await
        .unwrap()
        .into_inner()
        .quarantines
}

/// The holder's stream ends with "quarantined", its next fetch is refused,
/// and enforcement points refuse its task.
async fn assert_quarantined(s: &Setup, holder: &mut Holder) {
    let line = holder.wait_line("stream error");
    assert!(
        line.contains("PermissionDenied") && line.contains("quarantined"),
        "{line}"
    );
    let fetched = holder.fetch();
    assert!(
        fetched.contains("PermissionDenied") && fetched.contains("quarantined"),
        "{fetched}"
    );
    let d = authorize(&s.socket, x509(&holder.chain), "crm.read", "").await;
    match d {
        Ok(r) => assert!(!r.allow && r.reason.contains("quarantined"), "{r:?}"),
        Err(e) => assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}"),
    }
}

async fn revoked_ids(s: &Setup) -> Vec<String> {
    s.server()
        .admin()
        .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .revocations
        .into_iter()
        .map(|r| format!("{}:{}", r.kind, r.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tool_calls_are_decided_on_the_node_by_claims_and_cedar() {
    let s = setup(false).await;
    let holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    // Not an enforcement point yet: refused, whatever the credential.
    let e = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("enforcement point"), "{}", e.message());
    make_enforcement_point(&s).await;

    // Claims: a granted tool is allowed, with X.509 and with the JWT.
    let ok = authorize(&s.socket, x509(&holder.chain), "crm.read", "{}")
        .await
        .unwrap();
    assert!(ok.allow, "{ok:?}");
    assert_eq!(ok.task_id, holder.task_id);
    assert_eq!(ok.principal, PLANNER);
    assert_eq!(ok.decision_id.len(), 32);
    let ok = authorize_aud(&s, jwt(&holder.jwt), "email.send")
        .await
        .unwrap();
    assert!(ok.allow, "{ok:?}");
    // A tool the task was not granted.
    let no = authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
        .await
        .unwrap();
    assert!(!no.allow);
    assert!(no.reason.contains("not granted"), "{}", no.reason);

    // Cedar with the call's context.
    set_policy(
        &s,
        &format!(
            r#"{ALLOW_ALL}
            @id("no-evil-mail") @reason("mail to evil.example is not allowed")
            forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
            when {{ context.at_call && context.call.contains("to=evil.example") }};"#
        ),
    )
    .await;
    let no = authorize(
        &s.socket,
        x509(&holder.chain),
        "email.send",
        r#"{"to": "evil.example"}"#,
    )
    .await
    .unwrap();
    assert!(!no.allow);
    assert_eq!(no.policy_ids, vec!["no-evil-mail"]);
    assert!(
        no.reason.contains("evil.example is not allowed"),
        "{}",
        no.reason
    );
    let ok = authorize(
        &s.socket,
        x509(&holder.chain),
        "email.send",
        r#"{"to": "bob@example.com"}"#,
    )
    .await
    .unwrap();
    assert!(ok.allow, "{ok:?}");
    assert_eq!(ok.policy_ids, vec!["tools"]);

    // Hostile input: clear statuses, and the agent keeps serving.
    let code = |r: Result<_, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(authorize(&s.socket, x509(&[b"garbage".to_vec()]), "crm.read", "").await),
        tonic::Code::InvalidArgument
    );
    let huge = format!(r#"{{"x": "{}"}}"#, "a".repeat(1 << 20));
    assert_eq!(
        code(authorize(&s.socket, x509(&holder.chain), "crm.read", &huge).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(authorize(&s.socket, x509(&foreign_chain(TD, PLANNER)), "crm.read", "").await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            authorize(
                &s.socket,
                x509(&foreign_chain("other.org", "spiffe://other.org/w")),
                "crm.read",
                ""
            )
            .await
        ),
        tonic::Code::PermissionDenied
    );
    let mut tampered = holder.chain.clone();
    let last = tampered[0].len() - 2;
    tampered[0][last] ^= 0x5a;
    let t = authorize(&s.socket, x509(&tampered), "crm.read", "")
        .await
        .unwrap_err();
    assert!(
        matches!(
            t.code(),
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
        ),
        "{t:?}"
    );
    assert_eq!(
        code(authorize(&s.socket, jwt("not.a.jwt"), "crm.read", "").await),
        tonic::Code::PermissionDenied
    );
    let still = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
        .await
        .unwrap();
    assert!(still.allow);
}
