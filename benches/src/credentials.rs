//! GetCredential through the agent's CredentialBroker: a cached answer,
//! and first issuances (a transaction token the server signs; an OAuth
//! token exchange against a loopback authorization server that answers
//! at once, so the figure is Lanyard's own cost on top of an
//! authorization server's latency).

use std::time::{Duration, Instant};

use lanyard_proto::admin::AddCredentialRequest;
use lanyard_proto::broker::GetCredentialRequest;
use lanyard_proto::broker::credential_broker_client::CredentialBrokerClient;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{BeginTaskRequest, EndTaskRequest};
use lanyard_uds::unix_channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{self, Deployment};
use crate::stats::Report;
use crate::tasks::{TASK_ID, req};

/// A loopback token endpoint answering every request with a token at once.
async fn instant_token_endpoint() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                // Headers, then the body its Content-Length names.
                loop {
                    let Ok(r) = s.read(&mut buf[n..]).await else {
                        return;
                    };
                    if r == 0 {
                        return;
                    }
                    n += r;
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if n >= end + 4 + len || n == buf.len() {
                            break;
                        }
                    }
                }
                let body = r#"{"access_token":"bench-token","token_type":"Bearer","expires_in":30,"scope":"read"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(format!("http://{addr}/token"))
}

/// Declares the providers the scenarios use.
pub async fn prepare(d: &Deployment) -> anyhow::Result<()> {
    let token_url = instant_token_endpoint().await?;
    let mut admin = procs::admin(&d.admin_socket)?;
    let add = |name: &str, kind: &str| AddCredentialRequest {
        name: name.into(),
        kind: kind.into(),
        ..Default::default()
    };
    admin
        .add_credential(AddCredentialRequest {
            audience: "spiffe://bench.example.org".into(),
            ..add("bench-txn", "txn-token")
        })
        .await?;
    admin
        .add_credential(AddCredentialRequest {
            token_url,
            audience: "https://as.bench".into(),
            scopes: vec!["read".into()],
            ..add("bench-oauth", "oauth-exchange")
        })
        .await?;
    Ok(())
}

async fn begin(c: &mut TaskIdentityClient<tonic::transport::Channel>) -> anyhow::Result<String> {
    Ok(c.begin_task(req(BeginTaskRequest {
        spiffe_id: TASK_ID.into(),
        task_type: "bench.credentials".into(),
        tools: vec!["tool1".into()],
        ttl_seconds: 120,
        ..Default::default()
    }))
    .await?
    .into_inner()
    .task_id)
}

/// `samples` GetCredential calls of `provider`: each for a task of its own
/// (`first`: a first issuance; the tasks are begun in batches before the
/// timed calls and ended after them, so that ending tasks, and the
/// revocations it pushes, do not run under the figures) or all in one
/// (served from the cache after the first, which is not counted).
pub async fn get_credential(
    d: &Deployment,
    provider: &str,
    first: bool,
    samples: usize,
) -> anyhow::Result<Report> {
    const BATCH: usize = 50;
    let mut tasks = TaskIdentityClient::new(unix_channel(&d.socket)?);
    let mut broker = CredentialBrokerClient::new(unix_channel(&d.socket)?);
    let ask = |task_id: &str| {
        req(GetCredentialRequest {
            name: provider.into(),
            task_id: task_id.into(),
            ..Default::default()
        })
    };
    let mut lat = Vec::with_capacity(samples);
    let mut errors = 0u64;
    let start = Instant::now();
    let mut timed = |r: Result<tonic::Response<_>, tonic::Status>, t: Instant| match r {
        Ok(_) => lat.push(t.elapsed()),
        Err(e) => {
            if errors == 0 {
                eprintln!("  [get-credential {provider}] first error: {e}");
            }
            errors += 1;
        }
    };
    if first {
        let mut left = samples;
        while left > 0 {
            let n = left.min(BATCH);
            let mut batch = Vec::with_capacity(n);
            for _ in 0..n {
                batch.push(begin(&mut tasks).await?);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            for task in &batch {
                let t = Instant::now();
                let r = broker.get_credential(ask(task)).await;
                timed(r, t);
            }
            for task_id in batch {
                let _ = tasks.end_task(req(EndTaskRequest { task_id })).await;
            }
            left -= n;
        }
    } else {
        let task = begin(&mut tasks).await?;
        broker.get_credential(ask(&task)).await?;
        for _ in 0..samples {
            let t = Instant::now();
            let r = broker.get_credential(ask(&task)).await;
            timed(r, t);
        }
        let _ = tasks.end_task(req(EndTaskRequest { task_id: task })).await;
    }
    Ok(Report::from_samples(
        &format!(
            "get-credential-{provider}-{}",
            if first { "first" } else { "cached" }
        ),
        lat,
        errors,
        start.elapsed().max(Duration::from_millis(1)),
        false,
    ))
}
