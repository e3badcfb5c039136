//! JWT-SVIDs end to end: fetched and validated with the `spiffe` crate,
//! through `ValidateJWTSVID` and locally, the agent's cache, and every kind
//! of bad token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_core::clock::{FakeClock, unix_secs};
use lanyard_integration_tests::{TestServer, endpoint, eventually, init};
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest};
use lanyard_uds::unix_channel;
use serde_json::json;
use spiffe::{JwtSvid, WorkloadApiClient};

const NODE: &str = "spiffe://example.org/node/n1";
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    server: TestServer,
    agent: lanyard_agent::Bound,
    _dir: tempfile::TempDir,
}

async fn setup_with(clock: Option<Arc<FakeClock>>, jwt_ttl: i64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let mut admin = server.admin();
    admin
        .create_entry(lanyard_proto::admin::CreateEntryRequest {
            entry: Some(lanyard_proto::types::Entry {
                spiffe_id: "spiffe://example.org/jwt-workload".into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", lanyard_integration_tests::own_uid())],
                jwt_ttl_seconds: jwt_ttl,
                hint: "jwt".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    init();
    let cfg = lanyard_integration_tests::agent_config(dir.path(), server.addr(), Some(token));
    let agent = match clock {
        Some(c) => lanyard_agent::app::build_with(
            cfg,
            c,
            Arc::new(lanyard_agent::attestor::UnixAttestor::default()),
        )
        .await
        .unwrap(),
        None => lanyard_agent::build(cfg).await.unwrap(),
    };
    let mut state = agent.state.clone();
    state.wait_for(|s| s.synced).await.unwrap();
    Setup {
        server,
        agent,
        _dir: dir,
    }
}

fn raw(agent: &lanyard_agent::Bound) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(unix_channel(&agent.socket).unwrap())
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_client_fetches_and_validates_jwt_svids() {
    let s = setup_with(None, 0).await;
    let client = WorkloadApiClient::connect_to(endpoint(&s.agent.socket))
        .await
        .unwrap();
    let svid = eventually("a JWT-SVID", WAIT, || {
        let c = client.clone();
        async move { c.fetch_jwt_svid(["aud1", "aud2"], None).await.ok() }
    })
    .await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/jwt-workload"
    );
    assert_eq!(svid.hint(), Some("jwt"));
    let token = svid.token().to_owned();

    // Through the agent's ValidateJWTSVID, with the spiffe client.
    let validated = client.validate_jwt_token("aud2", &token).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/jwt-workload"
    );

    // Locally, against the JWT bundle fetched from the agent, with the
    // spiffe crate's own verifier.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let local = JwtSvid::parse_and_validate(&token, &bundles, &["aud1"]).unwrap();
    assert_eq!(
        local.spiffe_id().to_string(),
        "spiffe://example.org/jwt-workload"
    );
    assert!(JwtSvid::parse_and_validate(&token, &bundles, &["nope"]).is_err());

    // The claims as a Struct: sub, aud, exp, iat, jti; header with kid and typ.
    let resp = raw(&s.agent)
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "aud1".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let claims = resp.claims.unwrap();
    for k in ["sub", "aud", "exp", "iat", "jti"] {
        assert!(claims.fields.contains_key(k), "missing claim {k}");
    }
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(
        header["kid"],
        s.server.bound.ca.snapshot().jwt_active.key_id()
    );

    // Default jwt_ttl is 5 minutes.
    let payload: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let ttl = payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300);

    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_requires_audience_and_an_identity_of_the_caller() {
    let s = setup_with(None, 0).await;
    let mut c = raw(&s.agent);
    let err = c
        .fetch_jwtsvid(with_header(JwtsvidRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "audience must be specified");
    let err = c
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "spiffe://example.org/someone-else".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Asking for one's own ID works.
    let ok = c
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "spiffe://example.org/jwt-workload".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.svids.len(), 1);
    // ValidateJWTSVID needs both fields.
    let err = c
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: String::new(),
            svid: "x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fetches_are_served_from_the_cache() {
    let s = setup_with(None, 0).await;
    let client = WorkloadApiClient::connect_to(endpoint(&s.agent.socket))
        .await
        .unwrap();
    let signed = || {
        s.server
            .bound
            .metrics
            .jwt_svids_signed
            .load(Ordering::Relaxed)
    };
    let first = client.fetch_jwt_token(["a", "b"], None).await.unwrap();
    assert_eq!(signed(), 1);
    for _ in 0..20 {
        // Same audiences in any order: the same cached token.
        assert_eq!(
            client.fetch_jwt_token(["b", "a"], None).await.unwrap(),
            first
        );
    }
    assert_eq!(signed(), 1, "20 fetches must not reach the server");
    client.fetch_jwt_token(["c"], None).await.unwrap();
    assert_eq!(signed(), 2);
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_valid_token_is_served_while_the_server_is_down() {
    let clock = Arc::new(FakeClock::at(unix_secs(std::time::SystemTime::now())));
    let s = setup_with(Some(clock.clone()), 60).await;
    let client = WorkloadApiClient::connect_to(endpoint(&s.agent.socket))
        .await
        .unwrap();
    let first = client.fetch_jwt_token(["a"], None).await.unwrap();
    s.server.stop().await;
    // Past the half-life, the agent would refresh; the server is gone, the
    // cached token is still valid, so it is served.
    clock.advance(Duration::from_secs(40));
    let again = client.fetch_jwt_token(["a"], None).await.unwrap();
    assert_eq!(again, first);
    // A new audience has nothing to fall back on: a clear error.
    let err = client.fetch_jwt_token(["new"], None).await.unwrap_err();
    assert!(err.to_string().contains("JWT-SVID"), "{err}");
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_invalid_argument() {
    let s = setup_with(None, 0).await;
    let mut c = raw(&s.agent);
    let good = c
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["aud".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    let signer = s.server.bound.ca.snapshot().jwt_active.clone();
    let kid = signer.key_id().to_owned();
    let now = unix_secs(std::time::SystemTime::now());
    let claims = json!({"sub": "spiffe://example.org/w", "aud": ["aud"], "exp": now + 300});
    let forge =
        |h: serde_json::Value, c: serde_json::Value| signer.sign_with_header(&h, &c).unwrap();
    let other_key = lanyard_core::jwt::JwtSigner::generate(
        std::time::SystemTime::now(),
        std::time::SystemTime::now() + Duration::from_secs(3600),
    )
    .unwrap();

    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    let mut tampered_payload = parts.clone();
    tampered_payload[1] = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(
            &json!({"sub": "spiffe://example.org/admin", "aud": ["aud"], "exp": now + 300}),
        )
        .unwrap(),
    );
    let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    sig[0] ^= 0xff;
    parts[2] = URL_SAFE_NO_PAD.encode(sig);

    let long_audience = "x".repeat(5000);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "alg none",
            forge(json!({"alg": "none", "kid": kid}), claims.clone()),
            "aud",
            "algorithm",
        ),
        (
            "HS256",
            forge(json!({"alg": "HS256", "kid": kid}), claims.clone()),
            "aud",
            "algorithm",
        ),
        (
            "missing kid",
            forge(json!({"alg": "ES256"}), claims.clone()),
            "aud",
            "key ID",
        ),
        (
            "unknown kid",
            forge(json!({"alg": "ES256", "kid": "nope"}), claims.clone()),
            "aud",
            "not found",
        ),
        (
            "foreign key, known kid",
            other_key
                .sign_with_header(&json!({"alg": "ES256", "kid": kid}), &claims)
                .unwrap(),
            "aud",
            "signature",
        ),
        (
            "tampered payload",
            tampered_payload.join("."),
            "aud",
            "signature",
        ),
        ("tampered signature", parts.join("."), "aud", "signature"),
        (
            "expired",
            forge(
                json!({"alg": "ES256", "kid": kid}),
                json!({"sub": "spiffe://example.org/w", "aud": ["aud"], "exp": now - 10}),
            ),
            "aud",
            "expired",
        ),
        ("wrong audience", good.clone(), "other", "audience"),
        (
            "non-SPIFFE sub",
            forge(
                json!({"alg": "ES256", "kid": kid}),
                json!({"sub": "alice", "aud": ["aud"], "exp": now + 300}),
            ),
            "aud",
            "SPIFFE ID",
        ),
        ("two parts", "abc.def".into(), "aud", "malformed"),
        ("four parts", format!("{good}.x"), "aud", "malformed"),
        ("not base64", "@@@.@@@.@@@".into(), "aud", "malformed"),
        ("very long token", "a".repeat(20_000), "aud", "too long"),
        (
            "very long audience",
            good.clone(),
            &long_audience,
            "too long",
        ),
    ];
    for (name, token, audience, want) in cases {
        let err = c
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().to_lowercase().contains(&want.to_lowercase()),
            "{name}: {}",
            err.message()
        );
    }
    // Long audiences on fetch are refused cleanly too.
    let err = c
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["x".repeat(5000)],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("audiences"), "{}", err.message());
    s.agent.shutdown().await;
    s.server.stop().await;
}

/// The WIT-SVID profile is optional: this agent answers its calls with
/// Unimplemented, as the standard requires of an endpoint that does not
/// serve it, and the other profiles go on working on the same channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wit_profile_answers_unimplemented_and_leaves_the_others_alone() {
    let s = setup_with(None, 0).await;
    let mut c = raw(&s.agent);
    let err = c
        .fetch_witsvid(with_header(
            lanyard_proto::workload::WitsvidRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("WIT-SVID profile"), "{err:?}");
    let err = c
        .fetch_wit_bundles(with_header(lanyard_proto::workload::WitBundlesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    let jwt = c
        .fetch_jwtsvid(with_header(lanyard_proto::workload::JwtsvidRequest {
            audience: vec!["crm".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.svids.len(), 1);
    s.agent.shutdown().await;
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bundles_stream_sends_plain_jwks_at_once() {
    let s = setup_with(None, 0).await;
    let mut c = raw(&s.agent);
    let mut stream = c
        .fetch_jwt_bundles(with_header(lanyard_proto::workload::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&first.bundles["spiffe://example.org"]).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0]["kid"],
        s.server.bound.ca.snapshot().jwt_active.key_id()
    );
    assert_eq!(keys[0]["kty"], "EC");
    // No duplicate sends while nothing changes (an entry change is not a
    // bundle change).
    s.server
        .entry_for_me("spiffe://example.org/another", NODE, 60)
        .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .is_err()
    );
    s.agent.shutdown().await;
    s.server.stop().await;
}
