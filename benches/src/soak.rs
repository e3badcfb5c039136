//! `lanyard-bench soak`: the long run. 1,000 SVIDs on a short TTL, a task
//! begun and ended every second, a tool-call decision every 10 ms, and a
//! workload watching its X.509-SVID stream; the agent's and the server's
//! RSS sampled as it goes. Reports expired SVIDs served (must be zero),
//! errors, and each process's RSS slope per hour after the warm-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lanyard_proto::admin::CreateEntryRequest;
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallRequest, BeginTaskRequest, EndTaskRequest, X509Chain};
use lanyard_proto::types::Entry;
use lanyard_proto::workload::X509svidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_uds::unix_channel;

use crate::procs::{self, Deployment, NODE};
use crate::scenarios::own_uid;
use crate::tasks::{TASK_ID, req};

/// What the soak is told.
#[derive(Debug, Clone)]
pub struct SoakArgs {
    /// How long.
    pub duration: Duration,
    /// Standing SVIDs the agent holds.
    pub svids: usize,
    /// Their TTL.
    pub ttl: Duration,
    /// How often RSS is sampled.
    pub sample_every: Duration,
}

/// One RSS sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Agent RSS, MiB.
    pub agent_mib: f64,
    /// Server RSS, MiB.
    pub server_mib: f64,
}

/// The result.
#[derive(Debug, serde::Serialize)]
pub struct Soak {
    /// Seconds run.
    pub seconds: f64,
    /// Tasks begun and ended.
    pub tasks: u64,
    /// Decisions asked.
    pub decisions: u64,
    /// Stream updates the watcher received.
    pub updates: u64,
    /// SVIDs received already expired (must be 0).
    pub expired_served: u64,
    /// Failed calls.
    pub errors: u64,
    /// RSS samples.
    pub samples: Vec<Sample>,
    /// Agent RSS slope after the warm-up (the first fifth), MiB per hour.
    pub agent_mib_per_hour: f64,
    /// Server RSS slope after the warm-up, MiB per hour.
    pub server_mib_per_hour: f64,
}

/// Least-squares slope of `y` over `x` (per unit of x).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

async fn entries(d: &Deployment, count: usize, ttl: Duration) -> anyhow::Result<()> {
    let mut admin = procs::admin(&d.admin_socket)?;
    for i in 0..count {
        admin
            .create_entry(CreateEntryRequest {
                entry: Some(Entry {
                    spiffe_id: format!("spiffe://{}/bench/soak/{i}", procs::TD),
                    parent_id: NODE.into(),
                    selectors: vec![format!("unix:uid:{}", own_uid())],
                    x509_ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(30),
                    ..Default::default()
                }),
            })
            .await?;
    }
    Ok(())
}

fn count_err(errors: &AtomicU64, what: &str, e: &dyn std::fmt::Display) {
    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("  [soak] {what}: {e}");
    }
}

/// Runs the soak on a deployment prepared by the caller (task and
/// enforcement-point entries).
pub async fn run(d: &Deployment, a: &SoakArgs) -> anyhow::Result<Soak> {
    entries(d, a.svids, a.ttl).await?;
    crate::scenarios::wait_for_svids(&d.socket, a.svids, Duration::from_secs(300)).await?;
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let (tasks_n, decisions_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (updates_n, expired_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = start + a.duration;

    // A task begun and ended every second.
    let churn = {
        let (socket, errors, n) = (d.socket.clone(), errors.clone(), tasks_n.clone());
        tokio::spawn(async move {
            let mut c = TaskIdentityClient::new(unix_channel(&socket)?);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < end {
                tick.tick().await;
                let r = c
                    .begin_task(req(BeginTaskRequest {
                        spiffe_id: TASK_ID.into(),
                        task_type: "bench.soak".into(),
                        tools: vec!["tool1".into()],
                        ttl_seconds: 60,
                        ..Default::default()
                    }))
                    .await;
                match r {
                    Ok(r) => {
                        let task_id = r.into_inner().task_id;
                        if let Err(e) = c.end_task(req(EndTaskRequest { task_id })).await {
                            count_err(&errors, "end task", &e);
                        }
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => count_err(&errors, "begin task", &e),
                }
            }
            anyhow::Ok(())
        })
    };
    // A decision every 10 ms, on a task renewed well within its SVID's
    // TTL (the chain shown is the one BeginTask returned).
    let renew_every = (a.ttl / 3).max(Duration::from_secs(1));
    let decide = {
        let (socket, errors, n) = (d.socket.clone(), errors.clone(), decisions_n.clone());
        let d_socket = d.socket.clone();
        tokio::spawn(async move {
            let mut c = TaskIdentityClient::new(unix_channel(&socket)?);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut chain: Vec<Vec<u8>> = Vec::new();
            let mut current: Option<String> = None;
            let mut renewed = Instant::now() - Duration::from_secs(3600);
            while Instant::now() < end {
                tick.tick().await;
                if renewed.elapsed() > renew_every {
                    let (id, next) = crate::enforce::task_chain(&d_socket).await?;
                    if let Some(task_id) = current.replace(id) {
                        let _ = c.end_task(req(EndTaskRequest { task_id })).await;
                    }
                    chain = next;
                    renewed = Instant::now();
                }
                let r = c
                    .authorize_tool_call(req(AuthorizeToolCallRequest {
                        credential: Some(Credential::X509Chain(X509Chain {
                            certs: chain.clone(),
                        })),
                        tool: "tool1".into(),
                        resource: "account/42".into(),
                        context_json: r#"{"amount": 10}"#.into(),
                        audience: String::new(),
                        ..Default::default()
                    }))
                    .await;
                match r {
                    Ok(r) if r.get_ref().allow => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => count_err(&errors, "decision denied", &r.get_ref().reason),
                    Err(e) => count_err(&errors, "decision", &e),
                }
            }
            anyhow::Ok(())
        })
    };
    // A workload following its X.509-SVID stream: nothing it receives may
    // have expired.
    let watch = {
        let (socket, errors) = (d.socket.clone(), errors.clone());
        let (updates, expired) = (updates_n.clone(), expired_n.clone());
        tokio::spawn(async move {
            let mut c = SpiffeWorkloadApiClient::new(unix_channel(&socket)?)
                .max_decoding_message_size(64 << 20);
            while Instant::now() < end {
                let mut stream = match c.fetch_x509svid(req(X509svidRequest {})).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        count_err(&errors, "stream", &e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    let left = end.saturating_duration_since(Instant::now());
                    let Ok(msg) = tokio::time::timeout(left, stream.message()).await else {
                        break;
                    };
                    let Ok(Some(m)) = msg else { break };
                    updates.fetch_add(1, Ordering::Relaxed);
                    let now = SystemTime::now();
                    for s in &m.svids {
                        let leaf = lanyard_core::x509::der_chain_split(&s.x509_svid)?;
                        let info = lanyard_core::x509::CertInfo::parse(&leaf[0])?;
                        if info.not_after <= now {
                            expired.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    // RSS samples.
    let mut samples = Vec::new();
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    while Instant::now() < end {
        samples.push(Sample {
            t: start.elapsed().as_secs_f64(),
            agent_mib: mib(procs::rss_bytes(d.agent.0.id())?),
            server_mib: mib(procs::rss_bytes(d.server.0.id())?),
        });
        let s = samples.last().map_or(0.0, |s| s.t);
        eprintln!(
            "  [soak] {s:.0}s: agent {:.1} MiB, server {:.1} MiB, {} tasks, {} decisions, {} errors",
            samples.last().map_or(0.0, |s| s.agent_mib),
            samples.last().map_or(0.0, |s| s.server_mib),
            tasks_n.load(Ordering::Relaxed),
            decisions_n.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
        );
        tokio::time::sleep(
            a.sample_every
                .min(end.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    for h in [churn, decide, watch] {
        h.await??;
    }
    let warm = samples.len() / 5;
    let per_hour = |f: fn(&Sample) -> f64| {
        let pts: Vec<(f64, f64)> = samples[warm..].iter().map(|s| (s.t, f(s))).collect();
        slope(&pts) * 3600.0
    };
    Ok(Soak {
        seconds: start.elapsed().as_secs_f64(),
        tasks: tasks_n.load(Ordering::Relaxed),
        decisions: decisions_n.load(Ordering::Relaxed),
        updates: updates_n.load(Ordering::Relaxed),
        expired_served: expired_n.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        agent_mib_per_hour: per_hour(|s| s.agent_mib),
        server_mib_per_hour: per_hour(|s| s.server_mib),
        samples,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slope_of_a_line_is_its_rate() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 2.0 * f64::from(i) + 1.0))
            .collect();
        assert!((super::slope(&pts) - 2.0).abs() < 1e-9);
        assert_eq!(super::slope(&[(1.0, 1.0)]), 0.0);
        assert_eq!(super::slope(&[(1.0, 1.0), (1.0, 2.0)]), 0.0);
    }
}
