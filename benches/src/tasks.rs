//! BeginTask → task SVID in hand, measured through the agent's
//! TaskIdentity service (the agent forwards, the server decides with the
//! entry ceilings and, when loaded, Cedar, records and mints).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lanyard_proto::admin::CreateEntryRequest;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{BeginTaskRequest, EndTaskRequest};
use lanyard_proto::types::{Entry, TaskLimits};
use lanyard_uds::unix_channel;

use crate::procs::{self, Deployment, NODE};
use crate::scenarios::own_uid;
use crate::stats::Report;

pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// The SPIFFE ID tasks are begun under.
pub const TASK_ID: &str = "spiffe://bench.example.org/bench/tasks";

/// Registers an entry that allows any task, and a policy set of
/// `policies` rules (0: entry ceilings only).
pub async fn prepare(d: &Deployment, policies: usize) -> anyhow::Result<()> {
    let mut admin = procs::admin(&d.admin_socket)?;
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: TASK_ID.into(),
                parent_id: NODE.into(),
                selectors: vec![format!("unix:uid:{}", own_uid())],
                task_limits: Some(TaskLimits {
                    allowed_task_types: vec!["*".into()],
                    allowed_tools: vec!["*".into()],
                    max_task_ttl_seconds: 600,
                    max_sensitivity: String::new(),
                    allowed_credentials: vec!["*".into()],
                }),
                ..Default::default()
            }),
        })
        .await?;
    if policies > 0 {
        let mut text = String::from(
            "permit (principal, action == Lanyard::Action::\"BeginTask\", resource);\npermit (principal, action == Lanyard::Action::\"GetCredential\", resource);\n",
        );
        for i in 0..policies {
            text.push_str(&format!(
                "permit (principal, action == Lanyard::Action::\"UseTool\", resource == Lanyard::Tool::\"tool{i}\") when {{ context.sensitivity_rank <= 2 }};\n"
            ));
        }
        admin
            .set_policy(lanyard_proto::admin::SetPolicyRequest {
                text,
                shadow: false,
                source_name: "bench.cedar".into(),
            })
            .await?;
    }
    Ok(())
}

/// `concurrency` callers begin tasks (two tools) back to back for
/// `duration`; each task is ended right after (not timed).
pub async fn begin_task(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let socket = d.socket.clone();
        let errors = errors.clone();
        handles.push(tokio::spawn(async move {
            let mut c = TaskIdentityClient::new(unix_channel(&socket)?);
            let mut lat = Vec::new();
            let mut n = 0usize;
            while start.elapsed() < duration {
                n += 1;
                let t = Instant::now();
                let r = c
                    .begin_task(req(BeginTaskRequest {
                        spiffe_id: TASK_ID.into(),
                        task_type: "bench.task".into(),
                        tools: vec![format!("tool{}", n % 100), format!("tool{}", (w + 1) % 100)],
                        ttl_seconds: 60,
                        intent: "benchmark".into(),
                        ..Default::default()
                    }))
                    .await;
                match r {
                    Ok(r) => {
                        let r = r.into_inner();
                        if r.x509_svid.is_none() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        lat.push(t.elapsed());
                        let _ = c.end_task(req(EndTaskRequest { task_id: r.task_id })).await;
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  [begin-task] first error: {e}");
                        }
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok(Report::from_samples(
        &format!("begin-task-c{concurrency}"),
        all,
        errors.load(Ordering::Relaxed),
        start.elapsed(),
        true,
    ))
}

/// How a task is withdrawn in [`withdrawal`].
#[derive(Debug, Clone, Copy)]
pub enum Withdraw {
    /// EndTask by the holder (the agent withdraws it at once).
    End,
    /// `task revoke` by an operator (server → agent push).
    Revoke,
}

/// Reads the stream until an answer does (`present`) or does not carry an
/// SVID with `hint`.
async fn until_hint(
    stream: &mut tonic::Streaming<lanyard_proto::workload::X509svidResponse>,
    hint: &str,
    present: bool,
) -> Result<anyhow::Result<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = stream.message().await? {
            if m.svids.iter().any(|s| s.hint == hint) == present {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("stream ended")
    })
    .await
}

/// Task withdrawn → gone from the holder's waiting FetchX509SVID stream.
pub async fn withdrawal(d: &Deployment, how: Withdraw, samples: usize) -> anyhow::Result<Report> {
    use lanyard_proto::workload::X509svidRequest;
    use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    let mut tasks = TaskIdentityClient::new(unix_channel(&d.socket)?);
    let mut api = SpiffeWorkloadApiClient::new(unix_channel(&d.socket)?);
    let mut admin = procs::admin(&d.admin_socket)?;
    let mut stream = api
        .fetch_x509svid(req(X509svidRequest {}))
        .await?
        .into_inner();
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0u64;
    for _ in 0..samples {
        let r = tasks
            .begin_task(req(BeginTaskRequest {
                spiffe_id: TASK_ID.into(),
                task_type: "bench.task".into(),
                tools: vec!["tool1".into()],
                ttl_seconds: 60,
                ..Default::default()
            }))
            .await?
            .into_inner();
        let hint = format!("task:{}", r.task_id);
        if !matches!(until_hint(&mut stream, &hint, true).await, Ok(Ok(()))) {
            errors += 1;
            continue;
        }
        let t = Instant::now();
        match how {
            Withdraw::End => {
                tasks
                    .end_task(req(EndTaskRequest {
                        task_id: r.task_id.clone(),
                    }))
                    .await?;
            }
            Withdraw::Revoke => {
                admin
                    .revoke_task(lanyard_proto::admin::TaskRequest {
                        task_id: r.task_id.clone(),
                    })
                    .await?;
            }
        }
        match until_hint(&mut stream, &hint, false).await {
            Ok(Ok(())) => lat.push(t.elapsed()),
            _ => errors += 1,
        }
    }
    let name = match how {
        Withdraw::End => "end-task-to-stream",
        Withdraw::Revoke => "revoke-task-to-stream",
    };
    Ok(Report::from_samples(
        name,
        lat,
        errors,
        start.elapsed(),
        false,
    ))
}
