//! Audit records are not lost and not doubled: a server killed with
//! SIGKILL while an agent ships thousands of decisions and an operator
//! makes changes; an agent cut off from its server for a while; an agent
//! whose queue fills up (it fails closed, then recovers).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::enforce_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enforce_support::*;
use lanyard_integration_tests::server_proc::ServerProc;
use lanyard_integration_tests::{NODE, eventually, init, verified_audit};

const SERVER: &str = env!("CARGO_BIN_EXE_server_proc");

/// How many times each ID appears among the records of `kind`, keyed by
/// the JSON pointer `at`.
fn counts(recs: &[serde_json::Value], kind: &str, at: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in recs.iter().filter(|r| r["kind"] == kind) {
        if let Some(id) = r.pointer(at).and_then(|v| v.as_str()) {
            *out.entry(id.to_owned()).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_while_agents_push_keeps_every_acknowledged_record_once() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(SERVER, dir.path(), 1, "sled");
    server.ready().await;
    let port = server.port;
    let token = server
        .admin()
        .create_join_token(lanyard_proto::admin::CreateJoinTokenRequest {
            agent_id: NODE.into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    entry_via(server.admin(), PLANNER, vec![], false)
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    entry_via(
        server.admin(),
        TOOLS,
        vec![format!("unix:path:{}", exe.display())],
        true,
    )
    .await
    .unwrap();
    let config = lanyard_integration_tests::agent_config(
        dir.path(),
        server.addr().parse().unwrap(),
        Some(token),
    );
    let agent = lanyard_agent::build(config).await.unwrap();
    let mut state = agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.synced && s.entries.iter().count() >= 2),
    )
    .await
    .unwrap()
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let holder = Holder::start(&socket, &["crm.read"]);

    // Decisions from 8 callers and entry changes from 2 operators, until
    // told to stop; every answered decision and acknowledged entry is kept.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let decided = Arc::new(Mutex::new(Vec::new()));
    let entries = Arc::new(Mutex::new(Vec::new()));
    let mut loops = vec![];
    for _ in 0..8 {
        let (stop, decided, socket, chain) = (
            stop.clone(),
            decided.clone(),
            socket.clone(),
            holder.chain.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = authorize(&socket, x509(&chain), "crm.read", "")
                    .await
                    .unwrap();
                assert!(r.allow, "{r:?}");
                decided.lock().unwrap().push(r.decision_id);
            }
        }));
    }
    for w in 0..2 {
        let (stop, entries, admin) = (stop.clone(), entries.clone(), server.admin());
        loops.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let id = format!("spiffe://example.org/crash/{w}/{i}");
                match entry_via(
                    admin.clone(),
                    &id,
                    vec![format!("unix:gid:{}", 5000 + i)],
                    false,
                )
                .await
                {
                    Ok(e) => entries.lock().unwrap().push(e.id),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let records flow, kill the server mid-stream, keep deciding while it
    // is down (the agent queues), then bring it back on the same port.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let killed_at = decided.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let decided = decided.lock().unwrap().clone();
    let entries = entries.lock().unwrap().clone();
    assert!(
        killed_at > 200,
        "only {killed_at} decisions before the kill"
    );
    assert!(
        decided.len() > killed_at,
        "no decisions while the server was down"
    );
    assert!(entries.len() > 5, "only {} entries", entries.len());
    drop(server);
    let server = ServerProc::start_on(SERVER, dir.path(), 1, "sled", port);
    server.ready().await;

    // Every decision arrives, exactly once, and the chain verifies.
    let started = Instant::now();
    let recs = eventually(
        "every decision in the restarted server's chain",
        Duration::from_secs(60),
        || async {
            let recs = verified_audit(server.admin()).await;
            let n = recs.iter().filter(|r| r["kind"] == "tool.decision").count();
            (n >= decided.len()).then_some(recs)
        },
    )
    .await;
    println!(
        "{} decisions ({} before the kill), {} entries; queue drained {:?} after the restart",
        decided.len(),
        killed_at,
        entries.len(),
        started.elapsed()
    );
    let by_id = counts(&recs, "tool.decision", "/correlation/decision_id");
    let missing = decided.iter().filter(|d| !by_id.contains_key(*d)).count();
    let doubled = by_id.values().filter(|n| **n > 1).count();
    assert_eq!((missing, doubled), (0, 0), "decisions missing / doubled");
    assert_eq!(by_id.len(), decided.len());
    let created = counts(&recs, "entry.created", "/details/entry_id");
    let lost: Vec<&String> = entries
        .iter()
        .filter(|e| !created.contains_key(*e))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged entries without their record",
        lost.len()
    );
    drop(holder);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_agent_queue_fails_closed_and_recovers() {
    let mut s = setup_with(true, |c| c.audit.max_bytes = 16 * 1024).await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    let addr = s.server().addr();
    s.server.take().unwrap().stop().await;
    // The server is away: decisions are queued until the queue is full,
    // then denied for that reason.
    let mut decided = vec![];
    let mut refused = None;
    for _ in 0..1000 {
        let r = authorize(&s.socket, x509(&holder.chain), "crm.read", "")
            .await
            .unwrap();
        if r.allow {
            decided.push(r.decision_id);
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a full queue refuses");
    assert_eq!(refused.reason, lanyard_agent::pdp::AUDIT_UNAVAILABLE);
    assert!(decided.len() > 5, "{}", decided.len());
    let health = || async {
        let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
        tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest {
                service: lanyard_agent::app::AUDIT_HEALTH_SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    eventually(
        "the health check to report the full queue",
        WAIT,
        || async { (health().await == not_serving).then_some(()) },
    )
    .await;
    // Back: the queue drains into the chain and decisions resume.
    s.server =
        Some(lanyard_integration_tests::TestServer::start(s.dir.path(), &addr.to_string()).await);
    eventually("decisions to resume", WAIT, || async {
        authorize(&s.socket, x509(&holder.chain), "crm.read", "")
            .await
            .unwrap()
            .allow
            .then_some(())
    })
    .await;
    assert_eq!(health().await, serving);
    let recs = eventually("the queued decisions in the chain", WAIT, || async {
        let recs = verified_audit(s.server().admin()).await;
        let by_id = counts(&recs, "tool.decision", "/correlation/decision_id");
        decided
            .iter()
            .all(|d| by_id.get(d) == Some(&1))
            .then_some(recs)
    })
    .await;
    // The refusal itself was not recorded as a decision (it had no room).
    let by_id = counts(&recs, "tool.decision", "/correlation/decision_id");
    assert!(!by_id.contains_key(&refused.decision_id));
}
