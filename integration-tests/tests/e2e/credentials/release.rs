//! Releasing a secret to an enforcement point acting for a task: only with
//! the task's credential (X.509-SVID chain, or a JWT-SVID whose audience
//! is the enforcement point), only providers the enforcement point's entry
//! lists, and never after the task ends (the agent's cached answer goes
//! with the task's revocation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use lanyard_proto::broker::X509Chain;
use lanyard_proto::broker::get_credential_request::TaskCredential;
use lanyard_proto::task::EndTaskRequest;
use tonic::Code;

const GATEWAY: &str = "spiffe://example.org/gateway";

async fn release(
    socket: &Path,
    name: &str,
    shown: TaskCredential,
) -> Result<GetCredentialResponse, tonic::Status> {
    broker(socket)
        .get_credential(header(GetCredentialRequest {
            name: name.into(),
            task_credential: Some(shown),
            ..Default::default()
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforcement_point_gets_a_secret_for_the_task_it_was_shown_and_nothing_else() {
    let s = setup(3600).await;
    let sock = s.agent.socket.as_path();
    let task = begin(
        sock,
        BeginTaskRequest {
            jwt_audiences: vec![GATEWAY.into()],
            ..task_request()
        },
    )
    .await;
    let chain = lanyard_core::x509::der_chain_split(&task.x509_svid.unwrap().x509_svid).unwrap();
    let jwt = task.jwt_svid.unwrap().svid;
    let x509 = || {
        TaskCredential::X509Chain(X509Chain {
            certs: chain.clone(),
        })
    };

    // Not an enforcement point yet: showing a credential is refused.
    let e = release(sock, "hidden", x509()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("only an enforcement point"), "{e:?}");

    s.server
        .admin()
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: GATEWAY.into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", own_uid())],
                x509_ttl_seconds: 60,
                enforcement_point: true,
                task_limits: Some(types::TaskLimits {
                    allowed_credentials: vec!["hidden".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.entries.iter().any(|e| e.enforcement_point)),
    )
    .await
    .unwrap()
    .unwrap();

    // The secret the workload itself may not have, for the task shown.
    let c = release(sock, "hidden", x509()).await.unwrap();
    assert_eq!(c.credential, "never-to-a-workload");
    assert_eq!(c.task_id, task.task_id);
    assert!(c.expires_at <= task.expires_at);
    let by_jwt = release(sock, "hidden", TaskCredential::JwtSvid(jwt.clone()))
        .await
        .unwrap();
    assert_eq!(by_jwt.credential, "never-to-a-workload");

    // A JWT-SVID for another audience, garbage, a provider the enforcement
    // point's entry does not list: refused.
    let other = spiffe::WorkloadApiClient::connect_to(lanyard_integration_tests::endpoint(sock))
        .await
        .unwrap()
        .fetch_jwt_svid(["https://elsewhere.example"], None)
        .await
        .unwrap();
    let e = release(
        sock,
        "hidden",
        TaskCredential::JwtSvid(other.token().into()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("audience"), "{e:?}");
    let e = release(
        sock,
        "hidden",
        TaskCredential::X509Chain(X509Chain {
            certs: vec![b"not a certificate".to_vec()],
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = release(sock, "api-key", x509()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("enforcement point's entry"), "{e:?}");

    // The task ends: the release stops, cached answer or not.
    tasks(sock)
        .end_task(header(EndTaskRequest {
            task_id: task.task_id.clone(),
        }))
        .await
        .unwrap();
    let e = eventually("the release refused after the task", WAIT, || async {
        release(sock, "hidden", x509()).await.err()
    })
    .await;
    // (Ended, or its SVID already revoked by its agent: either way, no.)
    assert!(
        matches!(e.code(), Code::FailedPrecondition | Code::PermissionDenied),
        "{e:?}"
    );

    // Both identities are on the record, the secret is not.
    let audit = lanyard_integration_tests::verified_audit(s.server.admin()).await;
    let issued = audit
        .iter()
        .find(|l| l["kind"] == "credential.issued" && l["details"]["provider"] == "hidden")
        .expect("the release is audited");
    assert_eq!(issued["actor"], GATEWAY);
    assert_eq!(issued["subject"]["spiffe_id"], PLANNER);
    assert_eq!(issued["details"]["enforcement_point"], GATEWAY);
    assert!(
        !serde_json::to_string(&audit)
            .unwrap()
            .contains("never-to-a-workload")
    );
}
