//! Runtime enforcement end to end: a real server and agent, a second real
//! workload process holding a task, this test process as the enforcement
//! point (a tool server), AuthorizeToolCall, CRLs through the Workload API,
//! rustls handshakes on the peer validator, quarantine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod enforce_support;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_reaches_decisions_jwt_validation_crls_and_handshakes_within_a_second() {
    let s = setup(true).await;
    let peer = follow_bundles(&s.socket).await;
    // The CRL of every live CA is there from the start, signed by it.
    let first = peer.crls.lock().unwrap()[0].clone();
    assert_eq!(first.len(), 1);
    let bundle = s.server().bundle();
    let parsed = lanyard_core::x509::parse_crl(&first[0], &bundle).unwrap();
    assert_eq!(parsed.issuer_key_id, s.server().active_ca_id());
    assert!(parsed.serials.is_empty());
    assert!(x509_parser::parse_x509_crl(&first[0]).is_ok());

    // This process holds a task (it is also the workload); its task SVID
    // and key make a TLS client; the tool server uses its standing SVID.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let begun = TaskIdentityClient::new(ch)
        .begin_task(header(BeginTaskRequest {
            spiffe_id: PLANNER.into(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 300,
            jwt_audiences: vec!["tools".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let task_svid = begun.x509_svid.unwrap();
    let task_chain = lanyard_core::x509::der_chain_split(&task_svid.x509_svid).unwrap();
    let task_key = task_svid.x509_svid_key.clone();
    let task_jwt = begun.jwt_svid.unwrap().svid;
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let mut wl = SpiffeWorkloadApiClient::new(ch);
    let resp = wl
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    // The CRL is in FetchX509SVID too.
    assert_eq!(resp.crl, first);
    let standing = resp
        .svids
        .iter()
        .find(|v| v.spiffe_id == PLANNER && !v.hint.starts_with("task:"))
        .unwrap();
    let standing_chain = lanyard_core::x509::der_chain_split(&standing.x509_svid).unwrap();
    let standing_key = standing.x509_svid_key.clone();
    let server_svid = resp
        .svids
        .iter()
        .find(|v| v.spiffe_id == TOOLS && !v.hint.starts_with("task:"))
        .unwrap();
    let addr = tool_server(
        peer.trust.clone(),
        lanyard_core::x509::der_chain_split(&server_svid.x509_svid).unwrap(),
        server_svid.x509_svid_key.clone(),
    )
    .await;
    handshake(addr, peer.trust.clone(), &task_chain, &task_key)
        .await
        .unwrap();
    let wl2 = wl.clone();
    let validate = |token: String| {
        let mut wl = wl2.clone();
        async move {
            wl.validate_jwtsvid(header(ValidateJwtsvidRequest {
                audience: "tools".into(),
                svid: token,
            }))
            .await
        }
    };
    assert!(validate(task_jwt.clone()).await.is_ok());

    // task revoke: refused by AuthorizeToolCall, ValidateJWTSVID and the
    // handshake, each within the bound.
    let t0 = Instant::now();
    s.server()
        .admin()
        .revoke_task(lanyard_proto::admin::TaskRequest {
            task_id: begun.task_id.clone(),
        })
        .await
        .unwrap();
    let d_authz = within(
        "AuthorizeToolCall refuses the revoked task",
        t0,
        async || {
            authorize(&s.socket, x509(&task_chain), "crm.read", "")
                .await
                .is_err_and(|e| {
                    e.code() == tonic::Code::PermissionDenied && e.message().contains("revoked")
                })
        },
    )
    .await;
    let d_jwt = within(
        "ValidateJWTSVID refuses the revoked task's JWT",
        t0,
        async || validate(task_jwt.clone()).await.is_err(),
    )
    .await;
    let d_tls = within(
        "the handshake refuses the revoked task SVID",
        t0,
        async || {
            handshake(addr, peer.trust.clone(), &task_chain, &task_key)
                .await
                .is_err()
        },
    )
    .await;
    eprintln!("task revoke -> refused: authorize {d_authz:?}, jwt {d_jwt:?}, handshake {d_tls:?}");
    for d in [d_authz, d_jwt, d_tls] {
        assert!(d < REVOCATION_BOUND, "took {d:?}");
    }
    // The CRL now lists the task SVID's serial.
    let serial = lanyard_core::revocation::normalize_serial(
        &lanyard_core::x509::CertInfo::parse(&task_chain[0])
            .unwrap()
            .serial,
    );
    let newest = peer.crls.lock().unwrap().last().cloned().unwrap();
    let listed = lanyard_core::x509::parse_crl(&newest[0], &bundle).unwrap();
    assert!(listed.serials.contains(&serial), "{listed:?}");

    // svid revoke SERIAL of a standing SVID: the handshake refuses it and
    // the waiting bundle stream got a new CRL.
    handshake(addr, peer.trust.clone(), &standing_chain, &standing_key)
        .await
        .unwrap();
    let standing_serial = lanyard_core::x509::CertInfo::parse(&standing_chain[0])
        .unwrap()
        .serial;
    let t1 = Instant::now();
    s.server()
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            serial: standing_serial.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let d_serial = within("the handshake refuses the revoked serial", t1, async || {
        handshake(addr, peer.trust.clone(), &standing_chain, &standing_key)
            .await
            .is_err()
    })
    .await;
    assert!(d_serial < REVOCATION_BOUND, "took {d_serial:?}");
    // The agent signs a new standing SVID for the workload.
    let fresh = eventually("a new standing SVID", WAIT, || {
        let mut wl = wl.clone();
        let old = standing_chain[0].clone();
        async move {
            let r = wl
                .fetch_x509svid(header(X509svidRequest {}))
                .await
                .ok()?
                .into_inner()
                .message()
                .await
                .ok()??;
            let v = r
                .svids
                .into_iter()
                .find(|v| v.spiffe_id == PLANNER && !v.hint.starts_with("task:"))?;
            let c = lanyard_core::x509::der_chain_split(&v.x509_svid).ok()?;
            (c[0] != old).then_some((c, v.x509_svid_key))
        }
    })
    .await;
    handshake(addr, peer.trust.clone(), &fresh.0, &fresh.1)
        .await
        .unwrap();

    // svid revoke --jwt-id: ValidateJWTSVID refuses that token only.
    let token = wl
        .fetch_jwtsvid(header(JwtsvidRequest {
            audience: vec!["tools".into()],
            spiffe_id: PLANNER.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    validate(token.clone()).await.unwrap();
    let jti = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["jti"].as_str().unwrap().to_owned()
    };
    let t2 = Instant::now();
    s.server()
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            jwt_id: jti,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = within(
        "ValidateJWTSVID refuses the revoked JWT ID",
        t2,
        async || {
            validate(token.clone())
                .await
                .is_err_and(|e| e.message().contains("revoked"))
        },
    )
    .await;
    assert!(d < REVOCATION_BOUND, "took {d:?}");

    // The other direction: the tool server's own SVID revoked, the
    // client's verifier refuses the server.
    let server_chain = lanyard_core::x509::der_chain_split(&server_svid.x509_svid).unwrap();
    let server_serial = lanyard_core::x509::CertInfo::parse(&server_chain[0])
        .unwrap()
        .serial;
    let t3 = Instant::now();
    s.server()
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            serial: server_serial,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = within(
        "the client refuses the revoked server SVID",
        t3,
        async || {
            handshake(addr, peer.trust.clone(), &fresh.0, &fresh.1)
                .await
                .is_err_and(|e| e.contains("invalid peer certificate: Revoked"))
        },
    )
    .await;
    assert!(d < REVOCATION_BOUND, "took {d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_ending_at_once_push_the_crl_streams_a_few_times_not_once_each() {
    let s = setup(false).await;
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let tasks = TaskIdentityClient::new(ch);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = tasks
            .clone()
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
        ids.push(r.task_id);
    }
    let peer = follow_bundles(&s.socket).await;
    let before = peer.crls.lock().unwrap().len();
    let ends: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut t = tasks.clone();
            let id = id.clone();
            tokio::spawn(async move {
                t.end_task(header(lanyard_proto::task::EndTaskRequest { task_id: id }))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for e in ends {
        e.await.unwrap();
    }
    // Every ended task's SVID ends up in the CRL...
    eventually("all 20 serials in the CRL", WAIT, || async {
        let newest = peer.crls.lock().unwrap().last().cloned()?;
        let parsed = lanyard_core::x509::parse_crl(&newest[0], &s.server().bundle()).ok()?;
        (parsed.serials.len() >= 20).then_some(())
    })
    .await;
    // ...through a handful of pushes, not twenty.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushes = peer.crls.lock().unwrap().len() - before;
    eprintln!("CRL pushes for 20 tasks ending at once: {pushes}");
    assert!(
        pushes <= 5,
        "{pushes} CRL pushes for 20 tasks ending at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_are_pruned_once_what_they_revoke_has_expired() {
    let s = setup(false).await;
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let mut tasks = TaskIdentityClient::new(ch);
    let begun = tasks
        .begin_task(header(BeginTaskRequest {
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    tasks
        .end_task(header(lanyard_proto::task::EndTaskRequest {
            task_id: begun.task_id.clone(),
        }))
        .await
        .unwrap();
    let key = format!("task:{}", begun.task_id);
    let listed = |s: &Setup| {
        let mut admin = s.server().admin();
        async move {
            admin
                .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
                .await
                .unwrap()
                .into_inner()
                .revocations
                .iter()
                .map(|r| format!("{}:{}", r.kind, r.value))
                .collect::<Vec<_>>()
        }
    };
    eventually("the ended task's revocation", WAIT, || {
        let f = listed(&s);
        let key = key.clone();
        async move { f.await.contains(&key).then_some(()) }
    })
    .await;
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| {
            snap.revocations
                .get(lanyard_core::revocation::RevokedKind::Task, &begun.task_id)
                .is_some()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    // After the task's window: gone from the server and the agent.
    eventually("the revocation pruned on the server", WAIT, || {
        let f = listed(&s);
        let key = key.clone();
        async move { (!f.await.contains(&key)).then_some(()) }
    })
    .await;
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| {
            snap.revocations
                .get(lanyard_core::revocation::RevokedKind::Task, &begun.task_id)
                .is_none()
        }),
    )
    .await
    .unwrap()
    .unwrap();
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_denials_quarantine_the_holder_until_released() {
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    for _ in 0..3 {
        let r = authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
            .await
            .unwrap();
        assert!(!r.allow);
    }
    // Three denials are within the default trigger: still served.
    assert!(
        authorize(&s.socket, x509(&holder.chain), "crm.read", "")
            .await
            .unwrap()
            .allow
    );
    assert!(holder.fetch().starts_with("svids"));
    // The fourth is over it.
    authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
        .await
        .unwrap();
    assert_quarantined(&s, &mut holder).await;
    // The server owns the record (reported by this node).
    let q = eventually("the quarantine record", WAIT, || async {
        quarantines(&s, false).await.into_iter().next()
    })
    .await;
    assert_eq!(q.task_id, holder.task_id);
    assert_eq!(q.spiffe_id, PLANNER);
    assert_eq!(q.source, "denials");
    assert_eq!(q.reported_by, TOOLS);
    // The task is over on the server: revoked by the quarantine, or ended
    // by the holder's agent quarantining it first (whichever came first).
    let t = s
        .server()
        .admin()
        .get_task(lanyard_proto::admin::TaskRequest {
            task_id: holder.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.state == "revoked" || t.state == "ended", "{t:?}");
    assert!(t.end_reason.contains("quarantined"), "{t:?}");
    // This enforcement point itself is not affected.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    assert!(
        SpiffeWorkloadApiClient::new(ch)
            .fetch_jwtsvid(header(JwtsvidRequest {
                audience: vec!["x".into()],
                spiffe_id: TOOLS.into(),
            }))
            .await
            .is_ok()
    );
    // Release: the holder is served again, with a fresh SVID.
    s.server()
        .admin()
        .release_quarantine(lanyard_proto::admin::QuarantineRequest { id: q.id.clone() })
        .await
        .unwrap();
    eventually("the holder served again", WAIT, || {
        let r = holder.fetch();
        async move { r.starts_with("svids").then_some(()) }
    })
    .await;
    let all = quarantines(&s, true).await;
    assert!(
        all[0].released_at > 0 && all[0].released_by.starts_with("uid:"),
        "{all:?}"
    );
    assert!(quarantines(&s, false).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_policy_and_an_operator_quarantine_at_once() {
    let s = setup(true).await;
    set_policy(
        &s,
        &format!(
            r#"{ALLOW_ALL}
            @id("exfiltration") @reason("mail to an attacker") @quarantine
            forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
            when {{ context.at_call && context.call.contains("to=attacker.example") }};"#
        ),
    )
    .await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    let r = authorize(
        &s.socket,
        x509(&holder.chain),
        "email.send",
        r#"{"to": "attacker.example"}"#,
    )
    .await
    .unwrap();
    assert!(!r.allow);
    assert_eq!(r.policy_ids, vec!["exfiltration"]);
    assert_quarantined(&s, &mut holder).await;
    let q = eventually("the quarantine record", WAIT, || async {
        quarantines(&s, false).await.into_iter().next()
    })
    .await;
    assert_eq!(q.source, "policy");
    drop(holder);
    // The quarantine holds the workload (this uid's planner processes), so
    // the next holder begins once it is released.
    release_all(&s).await;

    // An operator quarantines a task's holder.
    let mut other = Holder::start(&s.socket, &["crm.read"]);
    other.wait_line("stream ok");
    assert!(
        authorize(&s.socket, x509(&other.chain), "crm.read", "")
            .await
            .unwrap()
            .allow
    );
    let q = s
        .server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: other.task_id.clone(),
            reason: "suspicious tool use".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.source, "operator");
    assert_quarantined(&s, &mut other).await;
    let fetched = other.fetch();
    assert!(fetched.contains("suspicious tool use"), "{fetched}");
    // Unknown task, empty request: clear errors.
    let e = s
        .server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// A quarantine holds the workload, not one PID: the quarantined holder's
/// child, its double-forked grandchild (re-parented before it connects)
/// and the program started again are all refused the quarantined
/// identity, as is a new task under it; a process of the same uid that
/// matches another entry keeps that one; release serves them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_holds_forks_grandchildren_and_restarts_of_the_workload() {
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    // Before: the holder's children are served.
    assert!(holder.child_fetch().starts_with("svids"));
    assert!(fresh_fetch(&s.socket).starts_with("svids"));
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "prompt injection".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_quarantined(&s, &mut holder).await;
    let refused = |answer: &str| {
        assert!(
            answer.contains("PermissionDenied") && answer.contains("quarantined"),
            "{answer}"
        )
    };
    refused(&holder.child_fetch());
    refused(&holder.grandchild_fetch(s.dir.path()));
    // The program started again (a new process of the same uid and binary).
    drop(holder);
    refused(&fresh_fetch(&s.socket));
    let mut again = Command::new(HOLDER)
        .env("HOLD_SPIFFE_ID", PLANNER)
        .args(["hold"])
        .arg(&s.socket)
        .args(["report.generate", "crm.read"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let begun = String::from_utf8_lossy(&std::mem::take(&mut again.stdout)).into_owned();
    refused(&begun);
    // This process (same uid, another program) keeps its tool identity and
    // is not served the quarantined one.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let mut api = SpiffeWorkloadApiClient::new(ch);
    let x = api
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = x.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec![TOOLS]);
    let e = api
        .fetch_jwtsvid(header(JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: PLANNER.into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("quarantined"), "{e:?}");
    // Released: served again.
    release_all(&s).await;
    eventually("a restarted program served again", WAIT, || async {
        fresh_fetch(&s.socket).starts_with("svids").then_some(())
    })
    .await;
}

/// A systemd system unit's cgroup made for a test (the tests run as root),
/// removed when dropped.
struct UnitCgroup(std::path::PathBuf);

impl UnitCgroup {
    fn make(name: &str) -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|d| d.join("cgroup.controllers").exists())
            .expect("a unified cgroup hierarchy");
        let dir = root.join("system.slice").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// `task_holder ARGS` started inside the unit.
    fn holder(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && shift && exec "$@""#)
            .arg(&self.0)
            .arg("--")
            .arg(HOLDER)
            .args(args);
        c
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// On a host where the workload runs as a systemd service, the quarantine
/// holds the unit: the program restarted in the unit is refused, while a
/// process of the same uid and program outside it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_holds_the_systemd_unit_of_the_workload() {
    let s = setup(true).await;
    let unit = UnitCgroup::make(&format!("lanyard-test-{}.service", std::process::id()));
    let socket = s.socket.to_str().unwrap();
    let mut child = unit
        .holder(&["hold", socket, "report.generate", "crm.read"])
        .env("HOLD_SPIFFE_ID", PLANNER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let task = lines.next().unwrap().unwrap();
    let task_id = task.strip_prefix("task ").expect(&task).to_owned();
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id,
            reason: "prompt injection".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.quarantines.iter().any(|q| !q.workloads.is_empty())),
    )
    .await
    .unwrap()
    .unwrap();
    let q = state.borrow().quarantines[0].clone();
    assert_eq!(
        q.workloads,
        vec![lanyard_agent::workload_scope::WorkloadScope::Unit(
            unit.0.file_name().unwrap().to_string_lossy().into_owned()
        )]
    );
    drop(child.stdin.take());
    child.wait().unwrap();
    // Restarted in the unit: refused.
    let out = unit.holder(&["fetch", socket]).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("PermissionDenied") && answer.contains("quarantined"),
        "{answer}"
    );
    // The same program and uid outside the unit: served.
    let answer = fresh_fetch(&s.socket);
    assert!(answer.starts_with("svids"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_holds_with_the_server_stopped_and_is_reported_when_it_is_back() {
    let mut s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    let addr = s.server().addr();
    s.server.take().unwrap().stop().await;
    // Denials with the server down: this node quarantines on its own.
    for _ in 0..4 {
        let r = authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
            .await
            .unwrap();
        assert!(!r.allow);
    }
    assert_quarantined(&s, &mut holder).await;
    // Back: the server receives the report and owns the record.
    s.server =
        Some(lanyard_integration_tests::TestServer::start(s.dir.path(), &addr.to_string()).await);
    let q = eventually(
        "the quarantine reported to the restarted server",
        WAIT,
        || async { quarantines(&s, false).await.into_iter().next() },
    )
    .await;
    assert_eq!(q.task_id, holder.task_id);
    assert_eq!(q.source, "denials");
    // Still refused under the server's record.
    let fetched = holder.fetch();
    assert!(fetched.contains("quarantined"), "{fetched}");
}

/// The process state letter from /proc/PID/stat (`T`: stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_freeze_stops_the_process() {
    let s = setup_with(true, |c| c.quarantine.freeze = true).await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    let pid = holder.pid();
    assert_ne!(proc_state(pid), Some('T'));
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "freeze it".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the quarantined process stopped", WAIT, || async {
        (proc_state(pid) == Some('T')).then_some(())
    })
    .await;
    // Not stopped without quarantine.freeze: see the other quarantine
    // tests, whose holders keep answering after being quarantined.
    let _ = resume(pid);
}

fn resume(pid: u32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg("-CONT")
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill -CONT failed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantined_process_stays_refused_across_an_agent_restart() {
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "stays quarantined".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_quarantined(&s, &mut holder).await;
    // Restart the agent (its data dir keeps the quarantined instance).
    let Setup {
        server,
        agent,
        socket,
        dir,
    } = s;
    let addr = server.as_ref().unwrap().addr();
    agent.shutdown().await;
    let agent = lanyard_agent::build(lanyard_integration_tests::agent_config(
        dir.path(),
        addr,
        None,
    ))
    .await
    .unwrap();
    let _s = Setup {
        server,
        agent,
        socket,
        dir,
    };
    let fetched = holder.fetch();
    assert!(fetched.contains("stays quarantined"), "{fetched}");
}

/// `svid revoke --spiffe-id` refuses every SVID of the ID signed before it,
/// each time it is asked: after the entry was deleted (a first revocation)
/// and re-created, a second revocation still reaches the new entry's task
/// SVID, and each one is an audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_spiffe_id_again_reaches_what_was_signed_since_and_is_audited() {
    let s = setup(true).await;
    let planner = s
        .server()
        .entries()
        .await
        .into_iter()
        .find(|e| e.spiffe_id == PLANNER)
        .unwrap();
    s.server()
        .admin()
        .delete_entry(lanyard_proto::admin::DeleteEntryRequest { id: planner.id })
        .await
        .unwrap();
    // Revocations by SPIFFE ID are kept to the second: what is signed from
    // the next second on is outside the first one.
    let deleted = lanyard_core::clock::unix_secs(std::time::SystemTime::now());
    eventually("the next second", WAIT, || async {
        (lanyard_core::clock::unix_secs(std::time::SystemTime::now()) > deleted).then_some(())
    })
    .await;
    entry(s.server(), PLANNER, vec![], false).await;
    wait_entries(&s, 2).await;
    let begun = eventually("a task under the re-created entry", WAIT, || async {
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
            .ok()
            .map(|r| r.into_inner())
    })
    .await;
    let chain = lanyard_core::x509::der_chain_split(&begun.x509_svid.unwrap().x509_svid).unwrap();
    let allowed = authorize(&s.socket, x509(&chain), "crm.read", "")
        .await
        .unwrap();
    assert!(allowed.allow, "{allowed:?}");

    for _ in 0..2 {
        s.server()
            .admin()
            .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
                spiffe_id: PLANNER.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    eventually("AuthorizeToolCall refuses the revoked ID", WAIT, || async {
        authorize(&s.socket, x509(&chain), "crm.read", "")
            .await
            .is_err_and(|e| {
                e.code() == tonic::Code::PermissionDenied && e.message().contains("revoked")
            })
            .then_some(())
    })
    .await;
    let audit = lanyard_integration_tests::verified_audit(s.server().admin()).await;
    let revocations = audit
        .iter()
        .filter(|r| r["kind"] == "revocation" && r.to_string().contains(PLANNER))
        .count();
    assert!(
        revocations >= 3,
        "the deletion and both revocations are recorded: {revocations}"
    );
}

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

/// Revoking a task or a SPIFFE ID reaches the CRLs without the holder's
/// agent: the server recorded every serial it signed. With the agent
/// stopped, `task revoke` and `svid revoke --spiffe-id` put the serials of
/// the task SVID and of the standing SVID into the CRL the server serves,
/// and `openssl verify -crl_check` refuses both certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_reach_the_crl_with_the_holders_agent_stopped() {
    let s = setup(true).await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    // The standing SVID of the planner, as this process (same uid) has it.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let resp = SpiffeWorkloadApiClient::new(ch)
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let standing = resp
        .svids
        .iter()
        .find(|v| v.spiffe_id == PLANNER && !v.hint.starts_with("task:"))
        .map(|v| lanyard_core::x509::der_chain_split(&v.x509_svid).unwrap())
        .unwrap();
    let Setup {
        server,
        agent,
        dir,
        socket: _,
    } = s;
    let server = server.unwrap();
    agent.shutdown().await;
    let serial_of = |der: &[u8]| {
        lanyard_core::revocation::normalize_serial(
            &lanyard_core::x509::CertInfo::parse(der).unwrap().serial,
        )
    };
    let task_serial = serial_of(&holder.chain[0]);
    let standing_serial = serial_of(&standing[0]);
    let t0 = Instant::now();
    server
        .admin()
        .revoke_task(lanyard_proto::admin::TaskRequest {
            task_id: holder.task_id.clone(),
        })
        .await
        .unwrap();
    server
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            spiffe_id: PLANNER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bundle = server.bundle();
    let crl = eventually("both serials in the server's CRL", WAIT, || async {
        let crls = server
            .admin()
            .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
            .await
            .ok()?
            .into_inner()
            .crls;
        crls.into_iter().find(|der| {
            lanyard_core::x509::parse_crl(der, &bundle).is_ok_and(|c| {
                c.serials.contains(&task_serial) && c.serials.contains(&standing_serial)
            })
        })
    })
    .await;
    eprintln!(
        "revoke -> both serials in the CRL, holder's agent stopped: {:?}",
        t0.elapsed()
    );
    // A TLS stack that is not ours refuses them.
    let pem = |label: &str, ders: &[Vec<u8>]| lanyard_core::x509::der_to_pem(label, ders);
    let files = dir.path().join("openssl");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("ca.pem"), pem("CERTIFICATE", &bundle)).unwrap();
    std::fs::write(
        files.join("crl.pem"),
        pem("X509 CRL", std::slice::from_ref(&crl)),
    )
    .unwrap();
    for (name, chain) in [("task", &holder.chain), ("standing", &standing)] {
        let leaf = files.join(format!("{name}.pem"));
        std::fs::write(&leaf, pem("CERTIFICATE", &chain[..1])).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(files.join("ca.pem"))
            .arg("-CRLfile")
            .arg(files.join("crl.pem"))
            .arg(&leaf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {text}");
        assert!(text.contains("revoked"), "{name}: {text}");
    }
    server.stop().await;
}
