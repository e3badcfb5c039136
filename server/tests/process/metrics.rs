//! The real `lanyard-server` binary serves Prometheus metrics on
//! `--metrics-bind`, and they parse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-server");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    Some(body.to_owned())
}

#[tokio::test]
async fn the_server_serves_metrics_that_parse() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--trust-domain",
            "example.org",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .args(["--metrics-bind", &metrics])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some(b) = scrape(&metrics).await {
            break b;
        }
        assert!(Instant::now() < deadline, "no metrics on {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A token is an audit event: it shows in the events counter.
    let out = Command::new(BIN)
        .args(["token", "generate", "--admin-socket"])
        .arg(dir.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = lanyard_metrics::parse_exposition(&body).unwrap();
    assert_eq!(
        parsed.get("lanyard_server_sync_streams"),
        Some(&0.0),
        "{body}"
    );
    let after = lanyard_metrics::parse_exposition(&scrape(&metrics).await.unwrap()).unwrap();
    assert_eq!(
        after.get("lanyard_server_events_total{kind=\"token.created\",decision=\"-\"}"),
        Some(&1.0),
        "{after:?}"
    );
    // Only /metrics is served.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    s.write_all(b"GET /secrets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 404"), "{buf}");
    let _ = child.kill();
    let _ = child.wait();
}
