//! Finding the server by DNS name: every address of the name is tried
//! (the first one dead), the answer is cached for its TTL, and when the
//! server moves the agent resolves again and follows it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::time::Duration;

use lanyard_integration_tests::dns::TestDns;
use lanyard_integration_tests::{NODE, TD, TestServer, eventually, init, own_uid, wait_for_svid};
use lanyard_proto::admin::CreateEntryRequest;
use lanyard_proto::types;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_finds_its_server_by_name_and_follows_it_when_it_moves() {
    init();
    let dir = tempfile::tempdir().unwrap();
    // A port free on 127.0.0.1; the server takes it there, and later on
    // 127.0.0.3. 127.0.0.2 never answers on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = TestServer::start(dir.path(), &format!("127.0.0.1:{port}")).await;
    // A long TTL: only the failure makes the agent ask again.
    let dns = TestDns::start(300).await;
    let name = "lanyard-server.lanyard.svc.cluster.local";
    let dead = Ipv4Addr::new(127, 0, 0, 2);
    dns.set(name, &[dead, Ipv4Addr::new(127, 0, 0, 1)]);
    let token = server.token(NODE).await;
    server
        .entry_for_me(&format!("spiffe://{TD}/w1"), NODE, 60)
        .await;
    let cfg = lanyard_agent::config::RawConfig {
        server: Some(format!("{name}:{port}")),
        trust_domain: Some(TD.into()),
        join_token: Some(token),
        insecure_bootstrap: Some(true),
        socket: Some(dir.path().join("agent.sock")),
        data_dir: Some(dir.path().join("agent-data")),
        dns_server: Some(dns.addr().to_string()),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let agent = lanyard_agent::build(cfg)
        .await
        .expect("agent attests through the name");
    let svid = wait_for_svid(&dir.path().join("agent.sock")).await;
    assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/w1"));
    assert!(dns.queries() >= 1);

    // The server moves to 127.0.0.3 (same data dir, same CA); the name now
    // points there. The agent's connection breaks, the cached answer's
    // addresses do not answer, it resolves afresh and reconnects: a new
    // entry reaches it.
    let before = dns.queries();
    server.stop().await;
    dns.set(name, &[dead, Ipv4Addr::new(127, 0, 0, 3)]);
    let moved = TestServer::start(dir.path(), &format!("127.0.0.3:{port}")).await;
    moved
        .admin()
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: format!("spiffe://{TD}/w2"),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", own_uid())],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let client = spiffe::WorkloadApiClient::connect_to(lanyard_integration_tests::endpoint(
        &dir.path().join("agent.sock"),
    ))
    .await
    .unwrap();
    eventually(
        "the entry created on the moved server",
        Duration::from_secs(60),
        || {
            let c = client.clone();
            async move {
                let ctx = c.fetch_x509_context().await.ok()?;
                ctx.svids()
                    .iter()
                    .any(|s| s.spiffe_id().to_string().ends_with("/w2"))
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        dns.queries() > before,
        "the agent resolved the name again after the failure"
    );
    agent.shutdown().await;
    moved.stop().await;
}
