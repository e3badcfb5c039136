//! A server killed with SIGKILL while it acknowledges writes, on each
//! store: after a restart on the same data (the same sled dir, or the same
//! PostgreSQL database) every acknowledged entry is there and nothing is
//! half written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_integration_tests::server_proc::ServerProc;
use lanyard_integration_tests::{NODE, init};
use lanyard_pg_testing::PgCluster;
use lanyard_proto::admin::{CreateEntryRequest, ListEntriesRequest};
use lanyard_proto::types;

const SERVER: &str = env!("CARGO_BIN_EXE_server_proc");

async fn acknowledged_entries_survive_sigkill(datastore: &str) {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(SERVER, dir.path(), 1, datastore);
    server.ready().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (mut admin, acked) = (server.admin(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let r = admin
                    .create_entry(CreateEntryRequest {
                        entry: Some(types::Entry {
                            spiffe_id: format!("spiffe://example.org/crash/{w}/{i}"),
                            parent_id: NODE.into(),
                            selectors: vec![format!("unix:uid:{}", 1000 + w)],
                            ..Default::default()
                        }),
                    })
                    .await;
                match r {
                    Ok(e) => acked.lock().unwrap().push(e.into_inner().id),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let writes flow, then kill mid-stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "only {} writes before the kill",
        acked.len()
    );
    drop(server);

    let server = ServerProc::start(SERVER, dir.path(), 1, datastore);
    server.ready().await;
    let stored: std::collections::HashSet<String> = server
        .admin()
        .list_entries(ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged entries lost after SIGKILL ({datastore})",
        lost.len(),
        acked.len()
    );
    eprintln!(
        "{datastore}: {} acknowledged, {} stored after restart",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_keeps_every_acknowledged_write_across_sigkill() {
    acknowledged_entries_survive_sigkill("sled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_across_a_server_sigkill() {
    let pg = PgCluster::start().await.unwrap();
    let db = pg.create_db().await.unwrap();
    acknowledged_entries_survive_sigkill(&pg.url(&db)).await;
}
