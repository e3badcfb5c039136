//! A task's credentials: exchanged, narrowed, delegated, refused, ended.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use base64::Engine;
use lanyard_proto::broker::CredentialType;
use lanyard_proto::task::{DelegateTaskRequest, EndTaskRequest};
use tonic::Code;

fn claims_of(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let seg = token.split('.').nth(i).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(seg)
                .unwrap(),
        )
        .unwrap()
    };
    (part(0), part(1))
}

fn refused(r: Result<GetCredentialResponse, tonic::Status>, code: Code, says: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(says),
        "{:?} lacks {says:?}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_exchanges_its_identity_for_credentials_that_end_with_it() {
    let s = setup(3600).await;
    let sock = s.agent.socket.as_path();

    // Outside a task there is nothing to hand out.
    refused(
        get(sock, "github", &[], "").await,
        Code::FailedPrecondition,
        "holds no task",
    );

    let task = begin(sock, task_request()).await;
    let c = get(sock, "github", &["repo:read"], "").await.unwrap();
    assert_eq!(c.r#type, i32::from(CredentialType::Bearer));
    assert_eq!(c.task_id, task.task_id);
    assert_eq!(c.scopes, vec!["repo:read"]);
    // The authorization server issued it for an hour; the task ends first.
    assert!(
        c.expires_at <= task.expires_at,
        "{} > {}",
        c.expires_at,
        task.expires_at
    );
    // It verified the task's JWT-SVID through discovery and issued a token
    // for exactly the task, authenticated by a jwt-spiffe assertion.
    let (status, who) = s.auth.whoami(&c.credential).await;
    assert_eq!(status, 200);
    assert_eq!(who["sub"], PLANNER);
    assert_eq!(who["task"], task.task_id.as_str());
    assert_eq!(who["scope"], serde_json::json!(["repo:read"]));
    let grant = logged(&s.auth, "the grant", |e| e["event"] == "grant").await;
    assert_eq!(
        grant["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(grant["client"], PLANNER);

    // Cached: the same request is answered with the same lease.
    let again = get(sock, "github", &["repo:read"], "").await.unwrap();
    assert_eq!(again.lease_id, c.lease_id);

    // Scopes outside the provider's, a provider the entry does not allow,
    // an unknown one, a secret that is not revealed: refused, with why.
    refused(
        get(sock, "github", &["admin:org"], "").await,
        Code::PermissionDenied,
        "outside the provider's scopes",
    );
    refused(
        get(sock, "ci", &[], "").await,
        Code::PermissionDenied,
        "not allowed by the entry",
    );
    refused(get(sock, "nope", &[], "").await, Code::NotFound, "nope");
    // An authorization server that cannot be reached, one that refuses:
    // the reason, and nothing issued.
    refused(
        get(sock, "down", &[], "").await,
        Code::Unavailable,
        "cannot be reached",
    );
    refused(
        get(sock, "wide", &[], "").await,
        Code::PermissionDenied,
        "invalid_scope",
    );
    // A token that would outlive the task, with no way to end it early.
    refused(
        get(sock, "norevoke", &[], "").await,
        Code::PermissionDenied,
        "past the task's end",
    );
    refused(
        get(sock, "hidden", &[], "").await,
        Code::PermissionDenied,
        "only to an enforcement point",
    );
    let secret = get(sock, "api-key", &[], "").await.unwrap();
    assert_eq!(secret.r#type, i32::from(CredentialType::Secret));
    assert_eq!(secret.credential, "crm-key-123");
    assert_eq!(secret.expires_at, task.expires_at);

    // A transaction token: the task, whom it acts for, the requester.
    let txn = get(sock, "internal", &["reports:write"], "").await.unwrap();
    assert_eq!(txn.r#type, i32::from(CredentialType::TxnToken));
    let (h, claims) = claims_of(&txn.credential);
    assert_eq!(h["typ"], "txntoken+jwt");
    assert_eq!(claims["txn"], task.task_id.as_str());
    assert_eq!(claims["sub"], "user:alice@example.com");
    assert_eq!(claims["scope"], "reports:write");
    assert_eq!(claims["rctx"]["req_wl"], PLANNER);
    assert!(claims["exp"].as_i64().unwrap() <= task.expires_at);
    // It verifies with the server's JWT keys, found by discovery alone.
    let (ok, verified) =
        crate::oidc::pyjwt_verify(&s.issuer, "spiffe://example.org", &txn.credential).await;
    assert!(ok, "{verified}");
    assert_eq!(verified["claims"]["txn"], task.task_id.as_str());

    // A delegated task is exchanged as itself acting for the root task.
    let token = tasks(sock)
        .delegate_task(header(DelegateTaskRequest {
            task_id: task.task_id.clone(),
            to_spiffe_id: WORKER.into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 120,
        }))
        .await
        .unwrap()
        .into_inner()
        .delegation_token;
    let child = begin(
        sock,
        BeginTaskRequest {
            spiffe_id: WORKER.into(),
            ttl_seconds: 120,
            parent_task_id: task.task_id.clone(),
            delegation_token: token,
            ..task_request()
        },
    )
    .await;
    // This process holds two tasks now: it names one.
    refused(
        get(sock, "github", &[], "").await,
        Code::FailedPrecondition,
        "name one",
    );
    let delegated = get(sock, "github", &["repo:read"], &child.task_id)
        .await
        .unwrap();
    let (_, who) = s.auth.whoami(&delegated.credential).await;
    assert_eq!(
        who["sub"], PLANNER,
        "the subject is the root task's workload"
    );
    assert_eq!(who["task"], task.task_id.as_str());
    assert_eq!(who["act"]["sub"], WORKER);
    assert_eq!(who["act"]["task"], child.task_id.as_str());

    // The operator sees the open leases (never the credentials).
    let open = s
        .server
        .admin()
        .list_leases(lanyard_proto::admin::ListLeasesRequest {
            task_id: task.task_id.clone(),
            all: false,
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    let github = open.iter().find(|l| l.lease_id == c.lease_id).unwrap();
    assert_eq!(
        (github.provider.as_str(), github.r#type.as_str()),
        ("github", "bearer")
    );
    assert!(github.revocation_pending && github.ended_at == 0);
    assert!(open.iter().all(|l| l.task_id == task.task_id));

    // Ending the root task ends every lease, the delegated one's too: the
    // authorization server revokes both tokens.
    tasks(sock)
        .end_task(header(EndTaskRequest {
            task_id: task.task_id.clone(),
        }))
        .await
        .unwrap();
    for t in [&task.task_id, &task.task_id] {
        logged(&s.auth, "the revocations", |e| {
            e["event"] == "revoke" && e["known"] == true && e["task"] == t.as_str()
        })
        .await;
    }
    eventually("both tokens refused", WAIT, || async {
        let a = s.auth.whoami(&c.credential).await.0;
        let b = s.auth.whoami(&delegated.credential).await.0;
        (a == 401 && b == 401).then_some(())
    })
    .await;
    let ended = eventually("the leases ended and revoked", WAIT, || async {
        let all = s
            .server
            .admin()
            .list_leases(lanyard_proto::admin::ListLeasesRequest {
                task_id: String::new(),
                all: true,
            })
            .await
            .unwrap()
            .into_inner()
            .leases;
        all.iter()
            .filter(|l| l.task_id == task.task_id || l.task_id == child.task_id)
            .all(|l| l.ended_at > 0 && !l.revocation_pending)
            .then_some(all)
    })
    .await;
    assert!(ended.iter().any(|l| l.lease_id == delegated.lease_id));
    // And the broker no longer answers for the task.
    refused(
        get(sock, "github", &[], &task.task_id).await,
        Code::NotFound,
        "not found",
    );
    // The audit log names each issuance, refusal and end, never a token.
    let audit = eventually("lease ends in the audit log", WAIT, || {
        let admin = s.server.admin();
        async move {
            let lines = lanyard_integration_tests::verified_audit(admin).await;
            (lines
                .iter()
                .filter(|l| l["kind"] == "credential.lease_ended")
                .count()
                >= 2)
                .then_some(lines)
        }
    })
    .await;
    let text = serde_json::to_string(&audit).unwrap();
    for secret in [
        &c.credential,
        &delegated.credential,
        &secret.credential,
        &txn.credential,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "a credential in the audit log"
        );
    }
    let issued: Vec<_> = audit
        .iter()
        .filter(|l| l["kind"] == "credential.issued")
        .collect();
    assert!(issued.len() >= 4, "{issued:?}");
    assert!(
        issued
            .iter()
            .any(|l| l["details"]["lease_id"] == c.lease_id.as_str()
                && l["details"]["provider"] == "github"
                && l["task"]["id"] == task.task_id.as_str())
    );
    assert!(
        audit
            .iter()
            .any(|l| l["kind"] == "credential.denied" && l["details"]["provider"] == "ci")
    );
    for refused in ["down", "wide", "norevoke", "hidden"] {
        assert!(
            audit.iter().any(|l| l["kind"] == "credential.denied"
                && l["details"]["provider"] == refused
                && l["subject"]["spiffe_id"] == PLANNER
                && !l["reason"].as_str().unwrap_or_default().is_empty()),
            "{refused}: no denial on record"
        );
        assert!(
            !audit
                .iter()
                .any(|l| l["kind"] == "credential.issued" && l["details"]["provider"] == refused),
            "{refused}: issued"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_quarantine_refuse_credentials_and_a_short_token_needs_no_revocation_endpoint() {
    let s = setup(60).await;
    let sock = s.agent.socket.as_path();
    s.server
        .admin()
        .set_policy(lanyard_proto::admin::SetPolicyRequest {
            text: r#"
                @id("begin") permit (principal, action == Lanyard::Action::"BeginTask", resource);
                @id("tools") permit (principal, action == Lanyard::Action::"UseTool", resource);
                @id("creds") permit (principal, action == Lanyard::Action::"GetCredential", resource);
                @id("read-only")
                @reason("AI agents do not write issues")
                forbid (principal, action == Lanyard::Action::"GetCredential", resource == Lanyard::Credential::"github")
                when { context.scopes.contains("issues:write") || context.scopes.isEmpty() };
            "#
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let task = begin(sock, task_request()).await;
    refused(
        get(sock, "github", &["issues:write"], "").await,
        Code::PermissionDenied,
        "read-only",
    );
    let c = get(sock, "github", &["repo:read"], "").await.unwrap();
    assert_eq!(s.auth.whoami(&c.credential).await.0, 200);
    // A token that ends before the task is handed out without a
    // revocation endpoint (and without client authentication).
    let short = get(sock, "norevoke", &[], "").await.unwrap();
    assert!(short.expires_at < task.expires_at);
    assert_eq!(s.auth.whoami(&short.credential).await.0, 200);

    // Revoking the workload's SVIDs ends its leases: the token is revoked
    // at the authorization server, and the agent forgets its copy.
    s.server
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            spiffe_id: PLANNER.into(),
            reason: "key leaked".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the token revoked with the workload", WAIT, || async {
        (s.auth.whoami(&c.credential).await.0 == 401).then_some(())
    })
    .await;
    // A revocation covers what was issued up to its second: the next
    // lease comes from the second after.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = eventually("a fresh lease", WAIT, || async {
        get(sock, "github", &["repo:read"], "")
            .await
            .ok()
            .filter(|n| n.lease_id != c.lease_id)
    })
    .await;
    assert_eq!(s.auth.whoami(&fresh.credential).await.0, 200);

    // A quarantine of the task refuses the caller and ends the lease.
    s.server
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: task.task_id.clone(),
            reason: "exfiltration suspected".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = eventually("the quarantine reaches the agent", WAIT, || async {
        get(sock, "github", &["repo:read"], &task.task_id)
            .await
            .err()
            .filter(|e| e.code() == Code::PermissionDenied)
    })
    .await;
    assert!(e.message().contains("exfiltration suspected"), "{e:?}");
    logged(&s.auth, "the revocation", |e| {
        e["event"] == "revoke" && e["task"] == task.task_id.as_str()
    })
    .await;
}
