//! Very short TTLs: a workload holding an `X509Source` across many SVID
//! rotations and a CA rotation never holds an expired SVID, and what it
//! holds always verifies against the bundle it holds at that moment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::x509::{CertInfo, PeerUsage, validate_x509_svid};
use lanyard_integration_tests::{TD, TestServer, endpoint};
use spiffe::X509Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_and_the_ca_rotate_without_the_workload_noticing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", |c| {
        c.ca_ttl = Duration::from_secs(36);
        c.default_x509_svid_ttl = Duration::from_secs(6);
        c.default_jwt_svid_ttl = Duration::from_secs(6);
        c.agent_svid_ttl = Duration::from_secs(6);
    })
    .await;
    let first_ca = server.active_ca_id();
    let agent = server
        .agent_with_entry("spiffe://example.org/short", 0)
        .await;

    let source = X509Source::builder()
        .endpoint(endpoint(&agent.socket))
        .build()
        .await
        .unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let mut serials = HashSet::new();
    let mut issuers = HashSet::new();
    let mut checks = 0u32;
    let started = Instant::now();
    // Run past the first CA's activation (5/6 of its life) and expiry.
    while started.elapsed() < Duration::from_secs(46) {
        let ctx = source.x509_context().unwrap();
        let svid = ctx.default_svid().expect("an SVID").clone();
        let chain: Vec<Vec<u8>> = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let bundle: Vec<Vec<u8>> = ctx
            .bundle_set()
            .get(&spiffe::TrustDomain::new(TD).unwrap())
            .expect("bundle")
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let now = SystemTime::now();
        let leaf = CertInfo::parse(&chain[0]).unwrap();
        assert!(
            leaf.not_after > now,
            "held an expired SVID (serial {})",
            leaf.serial
        );
        validate_x509_svid(&chain, &td, &bundle, PeerUsage::Client, now).unwrap_or_else(|e| {
            panic!(
                "held SVID {} does not verify against the held bundle: {e}",
                leaf.serial
            )
        });
        serials.insert(leaf.serial);
        issuers.insert(leaf.authority_key_id.unwrap_or_default());
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now_ca = server.active_ca_id();
    assert_ne!(now_ca, first_ca, "the CA must have rotated");
    assert!(
        issuers.len() >= 2,
        "SVIDs from both CAs were held: {issuers:?}"
    );
    assert!(issuers.contains(&now_ca));
    assert!(
        serials.len() >= 8,
        "several SVID rotations: {} serials",
        serials.len()
    );
    assert!(
        !server
            .bound
            .ca
            .snapshot()
            .authorities
            .iter()
            .any(|c| CertInfo::parse(c).unwrap().subject_key_id == first_ca),
        "the expired CA left the bundle"
    );
    eprintln!(
        "{checks} checks, {} SVIDs, {} CAs",
        serials.len(),
        issuers.len()
    );
    source.shutdown().await;
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tainting_a_ca_makes_agents_reissue_at_once_and_revoking_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let old_ca = server.active_ca_id();
    // A long TTL: only the taint can explain a re-issue within the test.
    let agent = server
        .agent_with_entry("spiffe://example.org/long", 3600)
        .await;
    let source = X509Source::builder()
        .endpoint(endpoint(&agent.socket))
        .build()
        .await
        .unwrap();
    let issuer = |s: &X509Source| {
        let svid = s.svid().unwrap();
        CertInfo::parse(svid.leaf().as_bytes())
            .unwrap()
            .authority_key_id
            .unwrap()
    };
    assert_eq!(issuer(&source), old_ca);

    server.bound.ca.prepare().await.unwrap();
    server.bound.ca.activate().await.unwrap();
    let new_ca = server.active_ca_id();
    // Activation alone does not force a re-issue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(issuer(&source), old_ca);

    server.bound.ca.taint(&old_ca).await.unwrap();
    lanyard_integration_tests::eventually(
        "an SVID from the new CA",
        Duration::from_secs(20),
        || {
            let got = issuer(&source);
            let want = new_ca.clone();
            async move { (got == want).then_some(()) }
        },
    )
    .await;

    server.bound.ca.revoke(&old_ca).await.unwrap();
    lanyard_integration_tests::eventually(
        "the revoked CA out of the bundle",
        Duration::from_secs(20),
        || {
            let bundle = source
                .bundle_set()
                .unwrap()
                .get(&spiffe::TrustDomain::new(TD).unwrap())
                .unwrap();
            let ids: Vec<String> = bundle
                .authorities()
                .iter()
                .map(|c| CertInfo::parse(c.as_bytes()).unwrap().subject_key_id)
                .collect();
            let gone = !ids.contains(&old_ca) && ids.contains(&new_ca);
            async move { gone.then_some(()) }
        },
    )
    .await;
    source.shutdown().await;
    agent.shutdown().await;
    server.stop().await;
}
