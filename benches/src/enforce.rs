//! Enforcement: AuthorizeToolCall on the agent (latency and decisions per
//! second at 1 and 10 callers, and per second of agent CPU), and revoke →
//! first refused handshake at a peer that follows the agent's CRLs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::peer::{LiveTrust, Requirements, SvidResolver, TrustState};
use lanyard_proto::admin::CreateEntryRequest;
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{AuthorizeToolCallRequest, BeginTaskRequest, X509Chain};
use lanyard_proto::types::Entry;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard_proto::workload::{X509BundlesRequest, X509svidRequest};
use lanyard_uds::unix_channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procs::{self, Deployment, NODE, TD};
use crate::scenarios::own_uid;
use crate::stats::Report;
use crate::tasks::{TASK_ID, req};

/// This bench process becomes an enforcement point (its own binary path
/// sets it apart from the task entry's workloads).
pub async fn prepare(d: &Deployment) -> anyhow::Result<()> {
    enforcement_point(d, "tool-server", &std::env::current_exe()?).await
}

/// An enforcement-point entry `spiffe://TD/bench/NAME` for the program
/// `exe` run by this uid.
pub async fn enforcement_point(d: &Deployment, name: &str, exe: &Path) -> anyhow::Result<()> {
    procs::admin(&d.admin_socket)?
        .create_entry(CreateEntryRequest {
            entry: Some(Entry {
                spiffe_id: format!("spiffe://{TD}/bench/{name}"),
                parent_id: NODE.into(),
                selectors: vec![
                    format!("unix:uid:{}", own_uid()),
                    format!("unix:path:{}", exe.display()),
                ],
                enforcement_point: true,
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Waits until the server's revocation set has not grown for a second
/// (at most `limit`); prints how long that took.
pub async fn wait_revocations_settle(d: &Deployment, limit: Duration) -> anyhow::Result<()> {
    let mut admin = procs::admin(&d.admin_socket)?;
    let start = Instant::now();
    let mut last = (usize::MAX, Instant::now());
    while start.elapsed() < limit {
        let n = admin
            .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
            .await?
            .into_inner()
            .revocations
            .len();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  ({n} revocations, settled after {:.1} s)",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("  (revocations still growing after {limit:?}; measuring anyway)");
    Ok(())
}

/// Begins a task under the bench's task entry; its chain and key.
/// A new decision task on the agent at `socket`: its ID and X.509-SVID
/// chain.
pub async fn task_chain(socket: &std::path::Path) -> anyhow::Result<(String, Vec<Vec<u8>>)> {
    let (id, chain, _) = task_on(socket).await?;
    Ok((id, chain))
}

pub(crate) async fn task(d: &Deployment) -> anyhow::Result<(String, Vec<Vec<u8>>, Vec<u8>)> {
    task_on(&d.socket).await
}

/// A new decision task: its ID, chain and key.
pub async fn task_with_key(
    socket: &std::path::Path,
) -> anyhow::Result<(String, Vec<Vec<u8>>, Vec<u8>)> {
    task_on(socket).await
}

async fn task_on(socket: &std::path::Path) -> anyhow::Result<(String, Vec<Vec<u8>>, Vec<u8>)> {
    let r = TaskIdentityClient::new(unix_channel(socket)?)
        .begin_task(req(BeginTaskRequest {
            spiffe_id: TASK_ID.into(),
            task_type: "bench.task".into(),
            tools: vec!["tool1".into(), "tool2".into()],
            ttl_seconds: 300,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let svid = r.x509_svid.ok_or_else(|| anyhow::anyhow!("no task SVID"))?;
    Ok((
        r.task_id,
        lanyard_core::x509::der_chain_split(&svid.x509_svid)?,
        svid.x509_svid_key,
    ))
}

/// `concurrency` enforcement-point callers ask for decisions on one task's
/// chain for `duration`. Returns the report and the decisions per second
/// of agent CPU.
pub async fn authorize(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Report, f64)> {
    let (_, chain, _) = task(d).await?;
    let make = move |w: usize| {
        Ok(call(
            w,
            Credential::X509Chain(X509Chain {
                certs: chain.clone(),
            }),
        ))
    };
    decide_loop(d, concurrency, duration, "authorize-tool-call", make).await
}

/// The bench's AuthorizeToolCall: `tool1` or `tool2` by worker, with a
/// small call context.
pub(crate) fn call(worker: usize, credential: Credential) -> AuthorizeToolCallRequest {
    AuthorizeToolCallRequest {
        credential: Some(credential),
        tool: if worker.is_multiple_of(2) {
            "tool1"
        } else {
            "tool2"
        }
        .into(),
        resource: "account/42".into(),
        context_json: r#"{"amount": 10}"#.into(),
        ..Default::default()
    }
}

/// `concurrency` callers each ask for decisions for `duration`, the
/// request of each call made by `make(worker)` before its timing starts.
pub(crate) async fn decide_loop<F>(
    d: &Deployment,
    concurrency: usize,
    duration: Duration,
    name: &str,
    make: F,
) -> anyhow::Result<(Report, f64)>
where
    F: Fn(usize) -> anyhow::Result<AuthorizeToolCallRequest> + Clone + Send + Sync + 'static,
{
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = procs::cpu_ticks(d.agent.0.id())?;
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let socket = d.socket.clone();
        let errors = errors.clone();
        let make = make.clone();
        handles.push(tokio::spawn(async move {
            let mut c = TaskIdentityClient::new(unix_channel(&socket)?);
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let request = make(w)?;
                let t = Instant::now();
                let r = c.authorize_tool_call(req(request)).await;
                match r {
                    Ok(r) if r.get_ref().allow => lat.push(t.elapsed()),
                    Ok(r) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  [authorize] first denial: {}", r.get_ref().reason);
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  [authorize] first error: {e}");
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
    let elapsed = start.elapsed();
    let cpu =
        (procs::cpu_ticks(d.agent.0.id())? - cpu_before) as f64 / procs::ticks_per_second() as f64;
    let n = all.len() as f64;
    let report = Report::from_samples(
        &format!("{name}-c{concurrency}"),
        all,
        errors.load(Ordering::Relaxed),
        elapsed,
        true,
    );
    Ok((report, if cpu > 0.0 { n / cpu } else { 0.0 }))
}

/// Live trust following the agent's FetchX509Bundles stream (CRLs
/// included), as a peer of the bench's trust domain keeps it.
pub async fn follow_bundles(d: &Deployment) -> anyhow::Result<Arc<LiveTrust>> {
    let td = TrustDomain::new(TD)?;
    let trust = LiveTrust::new(TrustState::new(td, vec![]));
    let mut bundles = SpiffeWorkloadApiClient::new(unix_channel(&d.socket)?)
        .fetch_x509_bundles(req(X509BundlesRequest {}))
        .await?
        .into_inner();
    let apply = {
        let trust = trust.clone();
        move |m: lanyard_proto::workload::X509BundlesResponse| -> anyhow::Result<()> {
            let b = m
                .bundles
                .get(&format!("spiffe://{TD}"))
                .cloned()
                .unwrap_or_default();
            let errors = trust.update_from_workload_api(
                lanyard_core::x509::der_chain_split(&b)?,
                &m.crl,
                SystemTime::now(),
            );
            anyhow::ensure!(errors.is_empty(), "CRL refused: {errors:?}");
            Ok(())
        }
    };
    apply(
        bundles
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("bundle stream closed"))?,
    )?;
    tokio::spawn(async move {
        while let Ok(Some(m)) = bundles.message().await {
            if let Err(e) = apply(m) {
                eprintln!("  [revoke] {e:#}");
            }
        }
    });
    Ok(trust)
}

/// task revoke → the first handshake a peer (following the agent's
/// FetchX509Bundles stream, CRLs included) refuses, `samples` times.
pub async fn revoke_to_handshake(d: &Deployment, samples: usize) -> anyhow::Result<Report> {
    let trust = follow_bundles(d).await?;
    // The tool server presents the bench's standing SVID.
    let own = SpiffeWorkloadApiClient::new(unix_channel(&d.socket)?)
        .fetch_x509svid(req(X509svidRequest {}))
        .await?
        .into_inner()
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no SVID"))?;
    let svid = own
        .svids
        .iter()
        .find(|s| !s.hint.starts_with("task:"))
        .ok_or_else(|| anyhow::anyhow!("no standing SVID"))?;
    let server_key = SvidResolver::new(lanyard_core::tls::certified_key(
        &lanyard_core::x509::der_chain_split(&svid.x509_svid)?,
        &svid.x509_svid_key,
    )?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(lanyard_core::peer::server_config(
        trust.clone(),
        server_key,
        Requirements::default(),
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"k").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let handshake = |chain: Vec<Vec<u8>>, key: Vec<u8>| {
        let trust = trust.clone();
        async move {
            let ck = lanyard_core::tls::certified_key(&chain, &key)?;
            let cfg = lanyard_core::peer::client_config(
                trust,
                None,
                SvidResolver::new(ck),
                Requirements::default(),
            );
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("tool")?;
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            anyhow::Ok(())
        }
    };
    let mut admin = procs::admin(&d.admin_socket)?;
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0u64;
    for _ in 0..samples {
        let (task_id, chain, key) = task(d).await?;
        if handshake(chain.clone(), key.clone()).await.is_err() {
            errors += 1;
            continue;
        }
        let t = Instant::now();
        admin
            .revoke_task(lanyard_proto::admin::TaskRequest { task_id })
            .await?;
        let deadline = t + Duration::from_secs(10);
        loop {
            if handshake(chain.clone(), key.clone()).await.is_err() {
                lat.push(t.elapsed());
                break;
            }
            if Instant::now() > deadline {
                errors += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(Report::from_samples(
        "revoke-to-refused-handshake",
        lat,
        errors,
        start.elapsed(),
        false,
    ))
}
