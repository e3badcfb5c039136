//! The measured scenarios. Every loop is bounded by a deadline and talks
//! only to the local unix sockets of the deployment.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_proto::admin::{CreateEntryRequest, DeleteEntryRequest};
use lanyard_proto::types::Entry;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{JwtsvidRequest, X509svidRequest};
use lanyard_uds::unix_channel;
use tonic::transport::Channel;

use crate::procs::{self, Deployment, NODE};
use crate::stats::Report;

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// Our uid (owner of /proc/self).
pub fn own_uid() -> u32 {
    lanyard_uds::own_uid().unwrap_or(0)
}

/// Registers an entry for this process and returns its ID.
pub async fn entry_for_me(
    d: &Deployment,
    spiffe_id: &str,
    extra_selector: Option<&str>,
    ttl: i64,
) -> anyhow::Result<String> {
    let mut selectors = vec![format!("unix:uid:{}", own_uid())];
    selectors.extend(extra_selector.map(str::to_owned));
    let e = procs::admin(&d.admin_socket)?
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: spiffe_id.into(),
                parent_id: NODE.into(),
                selectors,
                x509_ttl_seconds: ttl,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    Ok(e.id)
}

/// Fetches X.509-SVIDs once; the number of SVIDs.
pub async fn fetch_once(c: &mut SpiffeWorkloadApiClient<Channel>) -> anyhow::Result<usize> {
    let mut s = c
        .fetch_x509svid(req(X509svidRequest {}))
        .await?
        .into_inner();
    let m = s.message().await?.context("stream ended")?;
    Ok(m.svids.len())
}

/// Starts a server and an agent from `bins` with an entry for this
/// process (`spiffe://TD/bench/workload`), once its SVID is served.
pub async fn start_with_workload(bins: &Path, ttl: Duration) -> anyhow::Result<Deployment> {
    let d = procs::start(bins, ttl).await?;
    entry_for_me(
        &d,
        &format!("spiffe://{}/bench/workload", procs::TD),
        None,
        0,
    )
    .await?;
    wait_for_svids(&d.socket, 1, Duration::from_secs(30)).await?;
    Ok(d)
}

/// Waits until the caller gets `n` SVIDs (bounded by `timeout`).
pub async fn wait_for_svids(
    socket: &Path,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut c =
        SpiffeWorkloadApiClient::new(unix_channel(socket)?).max_decoding_message_size(64 << 20);
    loop {
        if let Ok(got) = fetch_once(&mut c).await
            && got >= n
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("the agent did not serve {n} SVIDs within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Copy)]
enum Op {
    Health,
    HealthWatch,
    X509,
    Jwt,
}

/// `concurrency` workloads, each on its own connection, calling `op` in a
/// loop until `duration` has passed.
async fn closed_loop(
    name: &str,
    socket: &Path,
    op: Op,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let channel = unix_channel(socket)?;
        let errors = errors.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let mut api = SpiffeWorkloadApiClient::new(channel);
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match op {
                    Op::Health => health
                        .check(tonic_health::pb::HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                    Op::HealthWatch => watch_once(&mut health).await.is_ok(),
                    Op::X509 => fetch_once(&mut api).await.is_ok(),
                    Op::Jwt => api
                        .fetch_jwtsvid(req(JwtsvidRequest {
                            audience: vec!["bench.tools".into()],
                            spiffe_id: String::new(),
                        }))
                        .await
                        .is_ok(),
                };
                if ok {
                    samples.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            samples
        }));
    }
    let progress = tokio::spawn({
        let name = name.to_owned();
        let done = done.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "  [{name}] {:>4.1}s/{:.0}s  {} calls",
                    start.elapsed().as_secs_f64(),
                    duration.as_secs_f64(),
                    done.load(Ordering::Relaxed)
                );
            }
        }
    });
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    progress.abort();
    Ok(Report::from_samples(
        name,
        samples,
        errors.load(Ordering::Relaxed),
        start.elapsed(),
        true,
    ))
}

/// The bare tonic unary call (grpc.health.v1 Check) on the agent socket.
pub async fn baseline(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    closed_loop(
        "baseline-health-unary",
        &d.socket,
        Op::Health,
        concurrency,
        duration,
    )
    .await
}

/// The bare tonic server stream (grpc.health.v1 Watch, first message, then
/// hang up) on the agent socket: what a stream costs with no attestation
/// and no Workload API behind it.
pub async fn baseline_stream(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    closed_loop(
        "baseline-health-stream",
        &d.socket,
        Op::HealthWatch,
        concurrency,
        duration,
    )
    .await
}

/// Opens a health Watch, reads its first message and hangs up, as a
/// FetchX509SVID caller that wants one answer does.
async fn watch_once(
    c: &mut tonic_health::pb::health_client::HealthClient<Channel>,
) -> anyhow::Result<()> {
    let mut s = c
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    s.message().await?.context("stream ended")?;
    Ok(())
}

/// FetchX509SVID, first message of the stream, SVIDs cached by the agent.
pub async fn fetch_x509(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    closed_loop(
        "fetch-x509-svid",
        &d.socket,
        Op::X509,
        concurrency,
        duration,
    )
    .await
}

/// FetchJWTSVID for one audience (served from the agent's cache).
pub async fn fetch_jwt(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    closed_loop("fetch-jwt-svid", &d.socket, Op::Jwt, concurrency, duration).await
}

/// Entry created on the server → SVID in a waiting workload stream.
pub async fn propagation(
    d: &Deployment,
    samples: usize,
    budget: Duration,
) -> anyhow::Result<Report> {
    let mut api = SpiffeWorkloadApiClient::new(unix_channel(&d.socket)?);
    let mut stream = api
        .fetch_x509svid(req(X509svidRequest {}))
        .await?
        .into_inner();
    let first = stream.message().await?.context("stream ended")?;
    let base = first.svids.len();
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut admin = procs::admin(&d.admin_socket)?;
    for i in 0..samples {
        if start.elapsed() > budget {
            break;
        }
        let id = format!("spiffe://{}/bench/propagation/{i}", procs::TD);
        let t = Instant::now();
        let created = entry_for_me(d, &id, None, 0).await?;
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = stream.message().await? {
                if m.svids.iter().any(|s| s.spiffe_id == id) {
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!("stream ended")
        })
        .await;
        match arrived {
            Ok(Ok(())) => lat.push(t.elapsed()),
            _ => errors += 1,
        }
        admin
            .delete_entry(DeleteEntryRequest { id: created })
            .await?;
        // Wait for the withdrawal so the next sample starts clean.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = stream.message().await? {
                if m.svids.len() == base {
                    break;
                }
            }
            anyhow::Ok(())
        })
        .await;
        if (i + 1).is_multiple_of(20) {
            eprintln!("  [propagation] {} samples", i + 1);
        }
    }
    Ok(Report::from_samples(
        "entry-create-to-stream",
        lat,
        errors,
        start.elapsed(),
        false,
    ))
}

/// Agent resource use with `count` cached SVIDs on `ttl`.
#[derive(Debug, serde::Serialize)]
pub struct Footprint {
    /// SVIDs the agent holds.
    pub svids: usize,
    /// SVID TTL, seconds.
    pub ttl_seconds: u64,
    /// Agent RSS before the entries were created, MiB.
    pub rss_idle_mib: f64,
    /// Agent RSS with every SVID cached, MiB (highest seen while observing).
    pub rss_loaded_mib: f64,
    /// Agent CPU while holding and rotating them, percent of one core.
    pub cpu_percent: f64,
    /// Seconds observed.
    pub observed_seconds: f64,
    /// Seconds until every SVID was served.
    pub fill_seconds: f64,
}

/// Registers `count` entries and observes the agent for `observe`.
pub async fn footprint(
    d: &Deployment,
    count: usize,
    ttl: Duration,
    observe: Duration,
) -> anyhow::Result<Footprint> {
    let pid = d.agent.0.id();
    let rss_idle = procs::rss_bytes(pid)?;
    wait_for_svids(&d.socket, 1, Duration::from_secs(30)).await?;
    let mut admin = procs::admin(&d.admin_socket)?;
    let uid = own_uid();
    let start = Instant::now();
    for i in 0..count {
        admin
            .create_entry(CreateEntryRequest {
                entry: Some(Entry {
                    spiffe_id: format!("spiffe://{}/bench/footprint/{i}", procs::TD),
                    parent_id: NODE.into(),
                    selectors: vec![format!("unix:uid:{uid}")],
                    x509_ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(30),
                    ..Default::default()
                }),
            })
            .await?;
        if (i + 1).is_multiple_of(250) {
            eprintln!("  [footprint] {} entries created", i + 1);
        }
    }
    // Every entry matches this process: the agent serves them all once it
    // holds an SVID for each.
    wait_for_svids(&d.socket, count + 1, Duration::from_secs(120)).await?;
    let fill = start.elapsed();
    let hz = procs::ticks_per_second() as f64;
    let t0 = procs::cpu_ticks(pid)?;
    let obs_start = Instant::now();
    let mut rss_max = procs::rss_bytes(pid)?;
    while obs_start.elapsed() < observe {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(procs::rss_bytes(pid)?);
        let s = obs_start.elapsed().as_secs();
        if s.is_multiple_of(10) {
            eprintln!("  [footprint] observing {s}s/{}s", observe.as_secs());
        }
    }
    let t1 = procs::cpu_ticks(pid)?;
    let secs = obs_start.elapsed().as_secs_f64();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(Footprint {
        svids: count + 1,
        ttl_seconds: ttl.as_secs(),
        rss_idle_mib: mib(rss_idle),
        rss_loaded_mib: mib(rss_max),
        cpu_percent: (t1 - t0) as f64 / hz / secs * 100.0,
        observed_seconds: secs,
        fill_seconds: fill.as_secs_f64(),
    })
}
