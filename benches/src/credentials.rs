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

/// `samples` GetCredential calls of `provider`: each in a fresh task
/// (`first`: a first issuance) or all in one (served from the cache after
/// the first, which is not counted).
pub async fn get_credential(
    d: &Deployment,
    provider: &str,
    first: bool,
    samples: usize,
) -> anyhow::Result<Report> {
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
    let mut task = begin(&mut tasks).await?;
    if !first {
        broker.get_credential(ask(&task)).await?;
    }
    for _ in 0..samples {
        if first {
            let _ = tasks
                .end_task(req(EndTaskRequest {
                    task_id: task.clone(),
                }))
                .await;
            task = begin(&mut tasks).await?;
        }
        let t = Instant::now();
        match broker.get_credential(ask(&task)).await {
            Ok(_) => lat.push(t.elapsed()),
            Err(e) => {
                if errors == 0 {
                    eprintln!("  [get-credential {provider}] first error: {e}");
                }
                errors += 1;
            }
        }
    }
    let _ = tasks.end_task(req(EndTaskRequest { task_id: task })).await;
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
