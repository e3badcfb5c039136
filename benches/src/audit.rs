//! `lanyard-bench audit`: how many audit records a real `lanyard-server`
//! takes per second (simulated agents ship batches over their own mTLS
//! connections through the real `AppendAudit`; every acknowledged record
//! is sealed into the chain and fsynced, many per fsync), and what the
//! agent's durable queue adds to each tool-call decision (the real queue
//! in a temp dir with its 5 ms syncer running).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_agent::audit_queue::{AuditQueue, QueueSettings};
use lanyard_core::audit::{Event, Kind};
use lanyard_proto::admin::{CreateJoinTokenRequest, GetBundleRequest};
use lanyard_proto::server::{AppendAuditRequest, AuditItem};

use crate::procs;
use crate::stats::Report;

/// What `audit` measures with.
#[derive(Debug, Clone)]
pub struct AuditArgs {
    /// How long to ship.
    pub duration: Duration,
    /// Simulated agents shipping at once.
    pub shippers: usize,
    /// Records per AppendAudit call.
    pub batch: usize,
}

/// The results.
#[derive(Debug, serde::Serialize)]
pub struct AuditReport {
    /// Records the server acknowledged per second.
    pub records_per_second: f64,
    /// AppendAudit calls (one batch each).
    pub batches: Report,
    /// Queue appends on the agent, by one and by ten callers at once.
    pub append: Vec<Report>,
}

/// A typical decision record.
fn decision(i: u64) -> Event {
    let mut e = Event::new(Kind::ToolDecision, "2026-12-03T10:45:08.123Z".into())
        .actor("spiffe://bench.local/bench/tool-server")
        .subject("spiffe://bench.local/bench/task-workload")
        .task("6daa4718bb8c2641a0b1c2d3e4f50617")
        .reason("permitted by tools");
    e.tool = "tool1".into();
    e.resource = "account/42".into();
    e.decision = "allow".into();
    e.policy_ids = vec!["tools".into()];
    e.correlation.decision_id = format!("{i:032x}");
    e.details = serde_json::json!({"credential": "x509"});
    e
}

async fn ship(bins: &std::path::Path, args: &AuditArgs) -> anyhow::Result<(f64, Report)> {
    let dir = tempfile::tempdir()?;
    let server = crate::fleet::start_server(bins, dir.path(), 1, "sled")?;
    let mut admin = procs::admin(&server.admin)?;
    let bundle = Arc::new(
        admin
            .get_bundle(GetBundleRequest {})
            .await?
            .into_inner()
            .x509_authorities,
    );
    let line = serde_json::to_string(&decision(0))?;
    let start = Instant::now();
    let mut handles = vec![];
    for n in 0..args.shippers {
        let token = admin
            .create_join_token(CreateJoinTokenRequest {
                agent_id: String::new(),
                ttl_seconds: 600,
            })
            .await?
            .into_inner()
            .token;
        let (_, mut client) = crate::fleet::attest(n, &server.addr, token, bundle.clone()).await?;
        let (line, batch, duration) = (line.clone(), args.batch, args.duration);
        handles.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut seq = 0u64;
            let mut acked = 0u64;
            while start.elapsed() < duration {
                let records = (0..batch)
                    .map(|_| {
                        seq += 1;
                        AuditItem {
                            seq,
                            event_json: line.clone(),
                        }
                    })
                    .collect();
                let t = Instant::now();
                let r = client
                    .append_audit(AppendAuditRequest {
                        epoch: format!("bench{n:04}"),
                        records,
                    })
                    .await?;
                lat.push(t.elapsed());
                acked = r.into_inner().acked_through;
            }
            anyhow::Ok((lat, acked))
        }));
    }
    let mut all = vec![];
    let mut records = 0;
    for h in handles {
        let (lat, acked) = h.await??;
        all.extend(lat);
        records += acked;
    }
    let elapsed = start.elapsed();
    drop(server);
    Ok((
        records as f64 / elapsed.as_secs_f64(),
        Report::from_samples(
            &format!("append-audit-batch{}-c{}", args.batch, args.shippers),
            all,
            0,
            elapsed,
            true,
        ),
    ))
}

/// `callers` threads append `per_caller` decision records each to a real
/// queue whose syncer runs; the latency of each append.
async fn append(callers: usize, per_caller: u64) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let q = AuditQueue::open(dir.path(), QueueSettings::default())?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let syncer = tokio::spawn(q.clone().run_sync(stop_rx));
    let start = Instant::now();
    let mut handles = vec![];
    for c in 0..callers {
        let q = q.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let mut lat = Vec::with_capacity(per_caller as usize);
            for i in 0..per_caller {
                let e = decision(c as u64 * per_caller + i);
                let t = Instant::now();
                q.append(e)?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = vec![];
    for h in handles {
        all.extend(h.await??);
    }
    let elapsed = start.elapsed();
    let _ = stop.send(true);
    syncer.await?;
    Ok(Report::from_samples(
        &format!("audit-queue-append-c{callers}"),
        all,
        0,
        elapsed,
        true,
    ))
}

/// Runs both parts.
pub async fn run(bins: &std::path::Path, args: &AuditArgs) -> anyhow::Result<AuditReport> {
    eprintln!(
        "- AppendAudit: {} simulated agents, batches of {}, {:?}",
        args.shippers, args.batch, args.duration
    );
    let (records_per_second, batches) = ship(bins, args).await?;
    eprintln!("- the agent's queue: appends with the syncer running");
    let append = vec![append(1, 100_000).await?, append(10, 20_000).await?];
    Ok(AuditReport {
        records_per_second,
        batches,
        append,
    })
}
