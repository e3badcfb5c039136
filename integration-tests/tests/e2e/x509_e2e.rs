//! End to end: real server, real agent, real sockets and TLS, and the
//! `spiffe` crate as the workload's client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lanyard_core::x509::{CertInfo, PeerUsage, validate_x509_svid};
use lanyard_core::{SpiffeId, TrustDomain};
use lanyard_integration_tests::{NODE, TD, TestServer, endpoint, start_agent};
use spiffe::{WorkloadApiClient, X509Source};

use lanyard_integration_tests::wait_for_svid as fetch_ok;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_client_gets_a_valid_svid_with_matching_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = server
        .agent_with_entry("spiffe://example.org/workload", 60)
        .await;

    let svid = fetch_ok(&agent.socket).await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload"
    );

    // The chain verifies against the bundle the Workload API serves.
    let client = WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let bundle = bundles.get(&td).expect("bundle for the trust domain");
    let bundle_der: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(bundle_der, server.bundle());
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let id = validate_x509_svid(
        &chain,
        &TrustDomain::new(TD).unwrap(),
        &bundle_der,
        PeerUsage::Client,
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(id, SpiffeId::new("spiffe://example.org/workload").unwrap());

    // The private key belongs to the leaf.
    let key = lanyard_core::x509::SvidKey::from_pkcs8(svid.private_key().as_ref()).unwrap();
    let leaf = CertInfo::parse(&chain[0]).unwrap();
    assert_eq!(key.spki_der(), leaf.spki_der);
    assert!(leaf.not_after > std::time::SystemTime::now());

    // X509Source, the long-lived client most workloads use, works too.
    let source = X509Source::builder()
        .endpoint(endpoint(&agent.socket))
        .build()
        .await
        .unwrap();
    assert_eq!(
        source.svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/workload"
    );
    source.shutdown().await;

    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_without_entry_gets_no_identity_issued() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    // An entry for another uid only.
    server
        .admin()
        .create_entry(lanyard_proto::admin::CreateEntryRequest {
            entry: Some(lanyard_proto::types::Entry {
                spiffe_id: "spiffe://example.org/other".into(),
                parent_id: NODE.into(),
                selectors: vec![format!(
                    "unix:uid:{}",
                    lanyard_integration_tests::own_uid() + 1
                )],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    // Wait for the first sync so the answer is definitive.
    let mut state = agent.state.clone();
    state.wait_for(|s| s.synced).await.unwrap();
    let client = WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(
            err,
            spiffe::workload_api::WorkloadApiError::NoIdentityIssued
        ),
        "{err:?}"
    );
    // The bundle streams too: a caller with no identity gets none (the
    // SPIFFE Workload API says PermissionDenied for both).
    let mut raw = lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        lanyard_uds::unix_channel(&agent.socket).unwrap(),
    );
    fn with_header<T>(r: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(r);
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        req
    }
    let mut s = raw
        .fetch_jwt_bundles(with_header(lanyard_proto::workload::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");
    let mut s = raw
        .fetch_x509_bundles(with_header(lanyard_proto::workload::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_and_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let a = tempfile::tempdir().unwrap();
    let agent = start_agent(a.path(), server.addr(), Some(token.clone()))
        .await
        .unwrap();
    let b = tempfile::tempdir().unwrap();
    let err = start_agent(b.path(), server.addr(), Some(token))
        .await
        .err()
        .expect("reused token must be refused");
    assert!(err.to_string().contains("unknown or already used"), "{err}");
    let err = start_agent(b.path(), server.addr(), Some("not-a-token".into()))
        .await
        .err()
        .expect("bogus token must be refused");
    assert!(err.to_string().contains("join token"), "{err}");
    let err = start_agent(b.path(), server.addr(), None)
        .await
        .err()
        .expect("no token, no stored SVID");
    assert!(err.to_string().contains("--join-token"), "{err}");

    // An expired token.
    let expired = server
        .admin()
        .create_join_token(lanyard_proto::admin::CreateJoinTokenRequest {
            agent_id: "spiffe://example.org/node/n2".into(),
            ttl_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = start_agent(b.path(), server.addr(), Some(expired))
        .await
        .err()
        .expect("expired token");
    assert!(err.to_string().contains("expired"), "{err}");
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_bundle_bootstrap_refuses_a_server_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestServer::start(other_dir.path(), "127.0.0.1:0").await;
    let wrong_bundle = other.write_bundle_pem();
    let token = server.token(NODE).await;
    let a = tempfile::tempdir().unwrap();
    let mut cfg =
        lanyard_integration_tests::agent_config(a.path(), server.addr(), Some(token.clone()));
    cfg.bootstrap = lanyard_agent::config::Bootstrap::TrustBundle(wrong_bundle);
    let err = lanyard_agent::build(cfg)
        .await
        .err()
        .expect("wrong CA must fail");
    assert!(err.to_string().contains("is not trusted"), "{err}");
    // The token was not spent by the failed handshake; the right bundle works.
    let mut cfg = lanyard_integration_tests::agent_config(a.path(), server.addr(), Some(token));
    cfg.bootstrap = lanyard_agent::config::Bootstrap::TrustBundle(server.write_bundle_pem());
    let agent = lanyard_agent::build(cfg).await.unwrap();
    agent.shutdown().await;
    other.stop().await;
    server.stop().await;
}
