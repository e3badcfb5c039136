//! Bad input and faults: wrong or missing headers, another agent's entry,
//! garbage on sockets, restarts, a server that is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use lanyard_agent::upstream::client::{node_client, tls_config};
use lanyard_core::SpiffeId;
use lanyard_core::x509::SvidKey;
use lanyard_integration_tests::{
    NODE, TestServer, endpoint, eventually, node_client_from, start_agent,
};
use lanyard_proto::server::{SignX509SvidsRequest, SvidCsr};
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_uds::unix_channel;
use spiffe::WorkloadApiClient;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

async fn spiffe_id_of(socket: &std::path::Path) -> String {
    let client = WorkloadApiClient::connect_to(endpoint(socket))
        .await
        .unwrap();
    eventually("an X.509-SVID", WAIT, || {
        let c = client.clone();
        async move {
            c.fetch_x509_svid()
                .await
                .ok()
                .map(|s| s.spiffe_id().to_string())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_header_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = server.agent_with_entry("spiffe://example.org/w", 60).await;
    let mut raw = SpiffeWorkloadApiClient::new(unix_channel(&agent.socket).unwrap());
    let err = raw.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "security header missing from request");
    // A wrong value is as bad as none.
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let err = raw.fetch_x509svid(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // JWT RPCs check the header too.
    let err = raw
        .fetch_jwtsvid(lanyard_proto::workload::JwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wit_rpcs_are_unimplemented_and_health_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    let channel = unix_channel(&agent.socket).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let err = grpc
        .unary::<(), (), _>(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchWITSVID"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "SpiffeWorkloadAPI"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    agent.shutdown().await;
    server.stop().await;
}

/// A Node API client using the agent SVID stored in `data_dir`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_get_another_agents_svids() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let other = server
        .entry_for_me(
            "spiffe://example.org/not-yours",
            "spiffe://example.org/node/n2",
            60,
        )
        .await;
    let token = server.token(NODE).await;
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    let mut client = node_client_from(&dir.path().join("agent-data"), server.addr());
    let key = SvidKey::generate().unwrap();
    let csr = key
        .csr(&SpiffeId::new("spiffe://example.org/not-yours").unwrap())
        .unwrap();
    let resp = client
        .sign_x509_svids(SignX509SvidsRequest {
            csrs: vec![
                SvidCsr {
                    entry_id: other.id.clone(),
                    csr: csr.clone(),
                },
                SvidCsr {
                    entry_id: "does-not-exist".into(),
                    csr,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 2);
    for r in &resp.results {
        assert!(r.svid.is_none());
        assert!(
            r.error
                .contains("is not authorized for agent spiffe://example.org/node/n1"),
            "{}",
            r.error
        );
    }
    // Without a client certificate the API refuses outright.
    let tls = tls_config(
        Arc::new(lanyard_core::tls::InsecureBootstrapVerifier::default()),
        None,
    )
    .unwrap();
    let mut anon = node_client(&server.addr().to_string(), tls).unwrap();
    let err = anon
        .sign_x509_svids(SignX509SvidsRequest { csrs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_both_sockets_breaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = server.agent_with_entry("spiffe://example.org/w", 60).await;
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for _ in 0..5 {
        let mut s = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        let _ = s.write_all(&junk).await;
        let mut t = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let _ = t.write_all(&junk).await;
        let mut a = tokio::net::UnixStream::connect(&server.bound.admin_socket)
            .await
            .unwrap();
        let _ = a
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff")
            .await;
    }
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/w");
    // The admin API still answers.
    let entries = server.entries().await;
    assert_eq!(entries.len(), 1);
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_keeps_entries_agents_and_ca_and_agent_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let addr = server.addr();
    let bundle_before = server.bundle();
    let agent = server.agent_with_entry("spiffe://example.org/a", 60).await;
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/a");

    server.stop().await;
    // While the server is down the agent keeps serving what it holds.
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/a");

    let server = TestServer::start(dir.path(), &addr.to_string()).await;
    assert_eq!(server.bundle(), bundle_before, "CA must survive a restart");
    let agents = server
        .admin()
        .list_agents(lanyard_proto::admin::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].spiffe_id, NODE);
    let entries = server.entries().await;
    assert_eq!(entries.len(), 1);

    // The agent reconnects by itself: an entry created now reaches it.
    server
        .entry_for_me("spiffe://example.org/b", NODE, 60)
        .await;
    let client = WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    eventually(
        "both SVIDs after the server restart",
        Duration::from_secs(60),
        || {
            let c = client.clone();
            async move {
                let all = c.fetch_all_x509_svids().await.ok()?;
                (all.len() == 2).then_some(())
            }
        },
    )
    .await;
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_reattests_from_its_stored_svid() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = server.agent_with_entry("spiffe://example.org/w", 60).await;
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/w");
    agent.shutdown().await;
    // No token this time: the stored agent SVID is enough.
    let agent = start_agent(dir.path(), server.addr(), None).await.unwrap();
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/w");
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_pushed_to_waiting_streams_and_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let first = server
        .entry_for_me("spiffe://example.org/first", NODE, 60)
        .await;
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    let client = WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    eventually("first SVID", WAIT, || {
        let c = client.clone();
        async move { c.fetch_x509_svid().await.ok() }
    })
    .await;
    use tokio_stream::StreamExt;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let ctx = stream.next().await.unwrap().unwrap();
    assert_eq!(ctx.svids().len(), 1);

    let second = server
        .entry_for_me("spiffe://example.org/second", NODE, 60)
        .await;
    let ctx = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut ids: Vec<String> = ctx
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["spiffe://example.org/first", "spiffe://example.org/second"]
    );

    server
        .admin()
        .delete_entry(lanyard_proto::admin::DeleteEntryRequest { id: second.id })
        .await
        .unwrap();
    let ctx = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ctx.svids().len(), 1);

    server
        .admin()
        .delete_entry(lanyard_proto::admin::DeleteEntryRequest { id: first.id })
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    match end {
        Some(Err(e)) => assert!(
            matches!(e, spiffe::workload_api::WorkloadApiError::NoIdentityIssued),
            "{e:?}"
        ),
        other => panic!("expected the stream to end with no identity issued, got {other:?}"),
    }
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    agent.shutdown().await;
    server
        .admin()
        .evict_agent(lanyard_proto::admin::AgentRequest {
            spiffe_id: NODE.into(),
        })
        .await
        .unwrap();
    let mut client = node_client_from(&dir.path().join("agent-data"), server.addr());
    let err = client
        .sign_x509_svids(SignX509SvidsRequest { csrs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("evicted or never attested"),
        "{}",
        err.message()
    );
    server.stop().await;
}

/// An evicted agent restarted with a new join token attests again instead
/// of presenting its stored (refused) SVID; restarted with the token it
/// already used, it keeps its stored SVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_agent_restarted_with_a_new_token_attests_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    server
        .entry_for_me("spiffe://example.org/w", NODE, 60)
        .await;
    let first = server.token(NODE).await;
    let agent = start_agent(dir.path(), server.addr(), Some(first.clone()))
        .await
        .unwrap();
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/w");
    agent.shutdown().await;
    // Same token again: the stored SVID is used (the token is spent).
    let agent = start_agent(dir.path(), server.addr(), Some(first))
        .await
        .unwrap();
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/w");
    agent.shutdown().await;
    server
        .admin()
        .evict_agent(lanyard_proto::admin::AgentRequest {
            spiffe_id: NODE.into(),
        })
        .await
        .unwrap();
    let second = server.token(NODE).await;
    let agent = start_agent(dir.path(), server.addr(), Some(second))
        .await
        .unwrap();
    assert_eq!(spiffe_id_of(&agent.socket).await, "spiffe://example.org/w");
    let agents = server
        .admin()
        .list_agents(lanyard_proto::admin::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].spiffe_id, NODE);
    agent.shutdown().await;
    server.stop().await;
}
