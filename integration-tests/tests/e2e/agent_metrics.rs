//! The real `lanyard-agent` binary serves Prometheus metrics on
//! `--metrics-bind`: after a workload fetched its SVID they count the
//! call and the SVID, and the server's side (in this test) counts the
//! signing and the open Sync stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, CreateJoinTokenRequest};
use lanyard_proto::types::Entry;
use lanyard_uds::unix_channel;

use crate::agent_cli::{Agent, BIN, NODE};

fn free_addr() -> String {
    let p = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{p}")
}

async fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (_, body) = buf.split_once("\r\n\r\n")?;
    Some(lanyard_metrics::parse_exposition(body).expect("metrics parse"))
}

/// Scrapes `addr` until `want` holds.
async fn until(
    addr: &str,
    what: &str,
    want: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = scrape(addr).await
            && want(&m)
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            scrape(addr).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_server_metrics_count_what_happened() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_metrics = free_addr();
    let mut cfg = lanyard_server::Config::for_dir("example.org", d).unwrap();
    cfg.metrics_bind = Some(server_metrics.parse().unwrap());
    let server = lanyard_server::build(cfg).await.unwrap();
    let mut admin = AdminClient::new(unix_channel(&server.admin_socket).unwrap());
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            agent_id: NODE.into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: "spiffe://example.org/metrics".into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", lanyard_uds::own_uid().unwrap())],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let socket = d.join("agent.sock");
    let agent_metrics = free_addr();
    let _agent = Agent(
        Command::new(BIN)
            .args([
                "run",
                "--trust-domain",
                "example.org",
                "--insecure-bootstrap",
                "--server",
            ])
            .arg(server.server_addr.to_string())
            .args(["--join-token", &token, "--socket"])
            .arg(&socket)
            .arg("--data-dir")
            .arg(d.join("agent-data"))
            .args(["--metrics-bind", &agent_metrics])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = loop {
        if let Ok(c) =
            spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display())).await
            && c.fetch_x509_svid().await.is_ok()
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(client);
    let m = until(&agent_metrics, "agent metrics", |m| {
        m.get("lanyard_agent_svids") == Some(&1.0)
            && m.iter().any(|(k, v)| k.starts_with("lanyard_agent_api_calls_total{method=\"/SpiffeWorkloadAPI/FetchX509SVID\",code=\"OK\"}") && *v >= 1.0)
    })
    .await;
    assert_eq!(m.get("lanyard_agent_entries"), Some(&1.0));
    let s = until(&server_metrics, "server metrics", |m| {
        m.get("lanyard_server_sync_streams") == Some(&1.0)
            && m.get("lanyard_server_svids_signed_total{kind=\"x509\"}")
                .is_some_and(|v| *v >= 1.0)
            && m.get("lanyard_server_svids_signed_total{kind=\"agent\"}")
                .is_some_and(|v| *v >= 1.0)
    })
    .await;
    assert!(
        s.get("lanyard_server_signing_seconds_count{kind=\"x509\"}")
            .is_some_and(|v| *v >= 1.0),
        "{s:?}"
    );
    assert!(
        s.keys().any(|k| k.starts_with(
            "lanyard_server_node_calls_total{method=\"/lanyard.server.v1.Node/Sync\""
        )),
        "{s:?}"
    );
    assert!(
        s.get("lanyard_server_events_total{kind=\"node.attested\",decision=\"-\"}")
            .is_some_and(|v| *v >= 1.0),
        "{s:?}"
    );
    server.shutdown().await;
}
