//! WIT-SVIDs through the Workload API (the WIT-SVID profile, on): the WIT
//! bundle, a WIT bound to the key served with it, a proof made with that
//! key accepted once, renewal with a fresh key pushed on the stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lanyard_core::jwt::wit::{
    ReplayCache, WorkloadKey, WptRequest, sign_wpt, validate_wit_svid, validate_wpt,
};
use lanyard_core::{SpiffeId, TrustDomain};
use lanyard_integration_tests::{TestServer, init};
use lanyard_proto::task::WitProof;
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{WitBundlesRequest, WitsvidRequest};
use lanyard_uds::unix_channel;

use crate::enforce_support::{PLANNER, authorize_request, header, set_policy, setup_with};

const NODE: &str = "spiffe://example.org/node/n1";
const WORKLOAD: &str = "spiffe://example.org/wit-workload";
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    server: TestServer,
    agent: lanyard_agent::Bound,
    _dir: tempfile::TempDir,
}

/// A server, an entry for this process whose WITs live `ttl` seconds, and
/// an agent serving the WIT-SVID profile.
async fn setup(ttl: i64) -> Setup {
    let uid = format!("unix:uid:{}", lanyard_integration_tests::own_uid());
    let workload = lanyard_proto::types::Entry {
        spiffe_id: WORKLOAD.into(),
        selectors: vec![uid],
        jwt_ttl_seconds: ttl,
        hint: "wit".into(),
        ..Default::default()
    };
    setup_entries(vec![workload]).await
}

/// A server with `entries` (under the node), and an agent serving the
/// WIT-SVID profile once it has them all.
async fn setup_entries(entries: Vec<lanyard_proto::types::Entry>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let n = entries.len();
    for e in entries {
        server
            .admin()
            .create_entry(lanyard_proto::admin::CreateEntryRequest {
                entry: Some(lanyard_proto::types::Entry {
                    parent_id: NODE.into(),
                    ..e
                }),
            })
            .await
            .unwrap();
    }
    init();
    let mut cfg = lanyard_integration_tests::agent_config(dir.path(), server.addr(), Some(token));
    cfg.wit_svids = true;
    let agent = lanyard_agent::build(cfg).await.unwrap();
    let mut state = agent.state.clone();
    state
        .wait_for(|s| s.synced && s.entries.iter().count() >= n)
        .await
        .unwrap();
    Setup {
        server,
        agent,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wit_comes_with_its_key_and_a_proof_made_with_it_is_accepted_once() {
    let s = setup(4).await;
    let mut c = SpiffeWorkloadApiClient::new(unix_channel(&s.agent.socket).unwrap());
    let td = TrustDomain::new("example.org").unwrap();

    // The WIT bundle: the server's WIT key alone, never its JWT key.
    let mut bundles = c
        .fetch_wit_bundles(header(WitBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let b = tokio::time::timeout(WAIT, bundles.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!b.more);
    let jwks = &b.bundles["spiffe://example.org"];
    let doc: serde_json::Value = serde_json::from_str(jwks).unwrap();
    let ca = s.server.bound.ca.snapshot();
    assert_eq!(doc["keys"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["keys"][0]["use"], "wit-svid");
    assert_eq!(doc["keys"][0]["kid"], ca.wit_active.key_id());
    assert_ne!(ca.wit_active.key_id(), ca.jwt_active.key_id());
    let authorities = lanyard_core::jwt::parse_jwks(jwks.as_bytes()).unwrap();

    let (first, mut stream) = wits(&s.agent.socket, "").await;
    assert_eq!(first.svids.len(), 1);
    let w = &first.svids[0];
    assert_eq!(w.spiffe_id, WORKLOAD);
    assert_eq!(w.hint, "wit");
    let now = std::time::SystemTime::now();
    let wit = validate_wit_svid(&w.wit_svid, &td, &authorities, now).unwrap();
    assert_eq!(wit.spiffe_id, SpiffeId::new(WORKLOAD).unwrap());
    // The key served is the one the WIT is bound to.
    let key = WorkloadKey::from_private_jwk(&w.wit_svid_key).unwrap();
    assert_eq!(
        serde_json::to_value(&wit.cnf).unwrap()["x"],
        key.public_jwk()["x"]
    );

    // A proof for one request, accepted once.
    let req = WptRequest {
        target_uri: "https://tool.example/call",
        ..Default::default()
    };
    let wpt = sign_wpt(&key, &w.wit_svid, &req, Duration::from_secs(30), now).unwrap();
    let cache = ReplayCache::new(16);
    validate_wpt(
        &wpt,
        &wit,
        &w.wit_svid,
        &req,
        now,
        Duration::from_secs(60),
        &cache,
    )
    .unwrap();
    assert!(
        validate_wpt(
            &wpt,
            &wit,
            &w.wit_svid,
            &req,
            now,
            Duration::from_secs(60),
            &cache
        )
        .is_err()
    );

    // At half its 4 s life the WIT is renewed, with a fresh key, on the
    // open stream.
    let second = next(&mut stream).await;
    let w2 = &second.svids[0];
    assert_ne!(w2.wit_svid, w.wit_svid);
    assert_ne!(w2.wit_svid_key, w.wit_svid_key);
    validate_wit_svid(
        &w2.wit_svid,
        &td,
        &authorities,
        std::time::SystemTime::now(),
    )
    .unwrap();

    // Another SPIFFE ID than the caller's is refused.
    let mut other = c
        .fetch_witsvid(header(WitsvidRequest {
            spiffe_id: "spiffe://example.org/someone-else".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(WAIT, other.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    s.agent.shutdown().await;
    s.server.stop().await;
}

/// The first FetchWITSVID message for `spiffe_id` on the agent at
/// `socket`, and the stream, still open.
async fn wits(
    socket: &std::path::Path,
    spiffe_id: &str,
) -> (
    lanyard_proto::workload::WitsvidResponse,
    tonic::Streaming<lanyard_proto::workload::WitsvidResponse>,
) {
    let mut stream = SpiffeWorkloadApiClient::new(unix_channel(socket).unwrap())
        .fetch_witsvid(header(WitsvidRequest {
            spiffe_id: spiffe_id.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    (first, stream)
}

async fn next(
    stream: &mut tonic::Streaming<lanyard_proto::workload::WitsvidResponse>,
) -> lanyard_proto::workload::WitsvidResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// A proof by `key` for the WIT `wit` on a request to `target`.
fn proof(key: &WorkloadKey, wit: &str, target: &str) -> String {
    let req = WptRequest {
        target_uri: target,
        ..Default::default()
    };
    sign_wpt(
        key,
        wit,
        &req,
        Duration::from_secs(30),
        std::time::SystemTime::now(),
    )
    .unwrap()
}

fn with_proof(wit: &str, wpt: String) -> Credential {
    Credential::Wit(WitProof {
        wit_svid: wit.to_owned(),
        wpt,
        ..Default::default()
    })
}

/// This process (an enforcement point) asks for a `crm.read` decision.
async fn decide(
    socket: &std::path::Path,
    credential: Credential,
    target: &str,
) -> Result<lanyard_proto::task::AuthorizeToolCallResponse, tonic::Status> {
    let mut r = authorize_request(credential, "crm.read");
    r.target_uri = target.to_owned();
    TaskIdentityClient::new(unix_channel(socket).unwrap())
        .authorize_tool_call(header(r))
        .await
        .map(tonic::Response::into_inner)
}

/// The claims of a compact JWS, unverified.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

const TARGET: &str = "https://crm.example/api/contacts";

/// AuthorizeToolCall with a WIT and its proof: accepted (the decision goes
/// on to the grant: a standing identity has no task), and refused with the
/// reason when the proof is replayed, names another target, is signed by
/// another key or is missing, when the WIT is sent as a bearer token, and
/// once the WIT is revoked by its jti.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_point_takes_a_wit_only_with_a_fresh_proof_for_its_request() {
    let s = setup_with(true, |c| c.wit_svids = true).await;
    let (got, _stream) = wits(&s.socket, PLANNER).await;
    let w = got.svids[0].clone();
    assert_eq!(w.spiffe_id, PLANNER);
    let key = WorkloadKey::from_private_jwk(&w.wit_svid_key).unwrap();
    let wit = w.wit_svid.as_str();
    let ask = |cred, target| decide(&s.socket, cred, target);

    let good = proof(&key, wit, TARGET);
    let d = ask(with_proof(wit, good.clone()), TARGET).await.unwrap();
    assert_eq!(d.principal, PLANNER, "{d:?}");
    assert!(!d.allow);
    assert!(d.reason.contains("carries no task"), "{d:?}");
    // Replayed.
    let e = ask(with_proof(wit, good), TARGET).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("already used"), "{e:?}");
    // For another request target.
    let other = proof(&key, wit, "https://crm.example/api/delete");
    let e = ask(with_proof(wit, other), TARGET).await.unwrap_err();
    assert!(e.message().contains("not this request's target"), "{e:?}");
    // Signed by a key that is not the WIT's.
    let thief = proof(&WorkloadKey::generate().unwrap(), wit, TARGET);
    let e = ask(with_proof(wit, thief), TARGET).await.unwrap_err();
    assert!(e.message().contains("signature is invalid"), "{e:?}");
    // No proof, or no target: the caller's mistake.
    let e = ask(with_proof(wit, String::new()), TARGET)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = ask(with_proof(wit, proof(&key, wit, TARGET)), "")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // The WIT as a bearer JWT-SVID.
    let e = ask(Credential::JwtSvid(wit.to_owned()), TARGET)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("typ"), "{e:?}");
    // Revoked by its jti (`svid revoke --jwt-id`): refused with a fresh
    // proof once the revocation reaches the agent.
    let jti = claims_of(wit)["jti"].as_str().unwrap().to_owned();
    s.server()
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            jwt_id: jti.clone(),
            reason: "leaked".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = lanyard_integration_tests::eventually("the revoked WIT refused", WAIT, || async {
        ask(with_proof(wit, proof(&key, wit, TARGET)), TARGET)
            .await
            .err()
    })
    .await;
    assert!(
        e.message().contains("revoked") && e.message().contains(&jti),
        "{e:?}"
    );
    s.agent.shutdown().await;
}

/// Inside a task the first WIT is the task's: it carries the task, a call
/// with it and a proof is decided on the task's grant, and it dies with the
/// task (refused once the task ends, and gone from the open stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_wit_carries_the_task_and_dies_with_it() {
    use lanyard_proto::task::{BeginTaskRequest, EndTaskRequest};

    let s = setup_with(true, |c| c.wit_svids = true).await;
    set_policy(&s, "@id(\"all\") permit (principal, action, resource);").await;
    let mut tasks = TaskIdentityClient::new(unix_channel(&s.socket).unwrap());
    let begun = tasks
        .begin_task(header(BeginTaskRequest {
            spiffe_id: PLANNER.into(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 120,
            intent: "weekly report".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let (got, mut stream) = wits(&s.socket, PLANNER).await;
    // The task's WIT first, then the standing one.
    assert_eq!(got.svids.len(), 2, "{got:?}");
    let w = got.svids[0].clone();
    let claims = claims_of(&w.wit_svid);
    let task = &claims[lanyard_core::jwt::wit::TASK_CLAIM];
    assert_eq!(task["txn"], begun.task_id.as_str(), "{claims}");
    assert_eq!(task["tctx"]["tools"][0], "crm.read", "{claims}");
    assert!(claims["exp"].as_u64().unwrap() <= u64::try_from(begun.expires_at).unwrap());

    let key = WorkloadKey::from_private_jwk(&w.wit_svid_key).unwrap();
    let call = || {
        let cred = with_proof(&w.wit_svid, proof(&key, &w.wit_svid, TARGET));
        decide(&s.socket, cred, TARGET)
    };
    let d = call().await.unwrap();
    assert!(d.allow, "{d:?}");
    assert_eq!(d.task_id, begun.task_id);

    tasks
        .end_task(header(EndTaskRequest {
            task_id: begun.task_id.clone(),
        }))
        .await
        .unwrap();
    // Once the task's revocation reaches the agent (the server pushes it).
    let e = lanyard_integration_tests::eventually("the ended task's WIT refused", WAIT, || async {
        call().await.err()
    })
    .await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&begun.task_id), "{e:?}");
    // The open stream drops the task's WIT.
    let after = next(&mut stream).await;
    assert_eq!(after.svids.len(), 1, "{after:?}");
    assert_eq!(after.svids[0].spiffe_id, PLANNER);
    assert_ne!(after.svids[0].wit_svid, w.wit_svid);
    s.agent.shutdown().await;
}

/// A client that is not ours (Python: grpcio stubs generated from the
/// standard's proto, PyJWT for the proof) fetches its WIT and key and asks
/// AuthorizeToolCall: a good proof is taken, and a replayed proof, a proof
/// for another target, a proof signed by another key, the WIT as a bearer
/// token and an expired WIT are each refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_proves_possession_and_every_forgery_is_refused() {
    use lanyard_integration_tests::python;
    const PY_ID: &str = "spiffe://example.org/agent/py";
    let py = python::python(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    let exe = std::fs::canonicalize(&py).unwrap();
    let selectors = vec![
        format!("unix:uid:{}", lanyard_integration_tests::own_uid()),
        format!("unix:path:{}", exe.display()),
    ];
    let entry = |id: &str, ep: bool, ttl: i64| lanyard_proto::types::Entry {
        spiffe_id: id.into(),
        selectors: selectors.clone(),
        jwt_ttl_seconds: ttl,
        enforcement_point: ep,
        ..Default::default()
    };
    let s = setup_entries(vec![
        entry(PY_ID, false, 3),
        entry("spiffe://example.org/tool/py", true, 0),
    ])
    .await;
    let (agent, server) = (s.agent, s.server);
    let socket = agent.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .arg(python::repo_root().join("examples/python/wit_check.py"))
            .arg("--socket")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--spiffe-id",
                PY_ID,
                "--target",
                "https://tool.example/call",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: std::collections::HashMap<String, serde_json::Value> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["case"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    let check = |case: &str, code: &str, reason: &str| {
        let v = &cases[case];
        assert_eq!(v["code"], code, "{case}: {v}");
        assert!(
            v["reason"].as_str().unwrap().contains(reason),
            "{case}: {v} (wanted {reason:?})"
        );
    };
    // Taken: the decision goes on to the grant (a standing identity has
    // no task).
    check("good", "OK", "carries no task");
    check("replayed", "PERMISSION_DENIED", "already used");
    check(
        "other target",
        "PERMISSION_DENIED",
        "not this request's target",
    );
    check("other key", "PERMISSION_DENIED", "signature is invalid");
    check("bearer", "PERMISSION_DENIED", "typ");
    check("expired", "PERMISSION_DENIED", "expired");
    agent.shutdown().await;
    server.stop().await;
}
