//! The PostgreSQL store against a real PostgreSQL server (a throwaway
//! cluster per test binary): the whole store conformance suite with two
//! connections per database as two servers would hold, TLS to the
//! database, migrations, the change feed across disconnection and pruning,
//! and clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use lanyard_pg_testing::PgCluster;
use lanyard_server::store::{Feed, PgOptions, PgStore, Store, conformance};
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<PgCluster> = OnceCell::const_new();

async fn cluster() -> &'static PgCluster {
    CLUSTER
        .get_or_init(|| async { PgCluster::start().await.expect("start PostgreSQL") })
        .await
}

async fn store(url: String) -> Arc<dyn Store> {
    Arc::new(
        PgStore::connect(&PgOptions { url, ca_file: None })
            .await
            .expect("connect"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_conformance_suite_with_two_servers() {
    let pg = cluster().await;
    conformance::run_all(|| async {
        let db = pg.create_db().await.expect("create database");
        let a = store(pg.url(&db)).await;
        let b = store(pg.url(&db)).await;
        (a, b, ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reconnect_and_migrations_apply_once() {
    let pg = cluster().await;
    let db = pg.create_db().await.unwrap();
    {
        let s = store(pg.url(&db)).await;
        s.create_entry(&conformance::entry("a", "spiffe://td/w"))
            .await
            .unwrap();
    }
    // Two servers starting at once on the same new schema version.
    let (x, y) = tokio::join!(store(pg.url(&db)), store(pg.url(&db)));
    assert_eq!(x.list_entries().await.unwrap().len(), 1);
    assert_eq!(y.list_entries().await.unwrap().len(), 1);
    let client = pg.client(&db).await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM lanyard_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    // Each of the schema's steps applied once (1: records and the change
    // feed, 2: documents), however many servers started at once.
    assert_eq!(n, 2);
    // A database written by a newer server is refused with the reason.
    client
        .execute(
            "INSERT INTO lanyard_schema_migrations (version) VALUES (99)",
            &[],
        )
        .await
        .unwrap();
    let err = PgStore::connect(&PgOptions {
        url: pg.url(&db),
        ca_file: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("newer than this lanyard-server"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    let pg = cluster().await;
    let db = pg.create_db().await.unwrap();
    let s = PgStore::connect(&PgOptions {
        url: pg.tls_url(&db),
        ca_file: Some(pg.ca_file()),
    })
    .await
    .expect("TLS connection with the right CA");
    let s: &dyn Store = &s;
    s.create_entry(&conformance::entry("a", "spiffe://td/w"))
        .await
        .unwrap();
    // Verified: the server's session is encrypted.
    let client = pg.client(&db).await.unwrap();
    let tls_sessions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "no TLS session to the database");
    // sslmode=require without a CA to verify against is refused up front.
    let err = PgStore::connect(&PgOptions {
        url: pg.tls_url(&db),
        ca_file: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("--datastore-ca"), "{err}");
    // A CA that did not sign the server's certificate fails the handshake.
    let other = tempfile::NamedTempFile::new().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(other.path(), params.self_signed(&key).unwrap().pem()).unwrap();
    let err = PgStore::connect(&PgOptions {
        url: pg.tls_url(&db),
        ca_file: Some(other.path().to_owned()),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot reach the database") || err.contains("certificate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_catches_up_from_the_table_and_a_pruned_gap_says_reload() {
    let pg = cluster().await;
    let db = pg.create_db().await.unwrap();
    let writer = store(pg.url(&db)).await;
    let follower = store(pg.url(&db)).await;
    let from = follower.last_change().await.unwrap();
    // Terminate every connection of the follower's database session
    // (its LISTEN connection among them): what is written meanwhile is
    // still read from the table after it reconnects.
    let admin = pg.client("postgres").await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap();
    let mut last = from;
    for i in 0..5 {
        loop {
            // The writer's pool also lost its connections: retry.
            match writer
                .create_entry(&conformance::entry(
                    &format!("e{i}"),
                    &format!("spiffe://td/w{i}"),
                ))
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.to_string().contains("database"), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let mut wake = follower.wake();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(Feed::Changes(c)) = follower.changes_since(last, 100).await {
                if let Some(c) = c.last() {
                    last = c.seq;
                }
                if last >= from + 5 {
                    return;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.changed()).await;
        }
    })
    .await
    .expect("the follower never read the changes made while it was cut off");
    // Pruning everything (age 0) leaves a gap for a follower at `from`.
    assert!(writer.prune_changes(Duration::ZERO).await.unwrap() >= 4);
    match follower.changes_since(from, 100).await.unwrap() {
        Feed::Gap { last } => assert_eq!(last, from + 5),
        other => panic!("expected a gap, got {other:?}"),
    }
    // The newest change is kept, so a follower that is up to date is not.
    assert_eq!(
        follower.changes_since(from + 5, 100).await.unwrap(),
        Feed::Changes(vec![])
    );
}

#[tokio::test]
async fn a_database_that_is_not_there_is_a_clear_error() {
    let err = PgStore::connect(&PgOptions {
        url: "postgres://lanyard@127.0.0.1:1/none?sslmode=disable&connect_timeout=2".into(),
        ca_file: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot reach the database"), "{err}");
    let err = PgStore::connect(&PgOptions {
        url: "postgres://lanyard@db:notaport/x".into(),
        ca_file: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("datastore URL"), "{err}");
}

/// A sled server's data, backed up and restored into a new data dir, and
/// migrated to PostgreSQL: the server started on either has the same
/// entries, the same CA and a bundle sequence that did not go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_and_migrate_keep_entries_keys_and_sequences() {
    use lanyard_integration_tests::TestServer;
    use lanyard_server::cli::datastore::{DatastoreCmd, run};
    use lanyard_server::config::Datastore;
    let pg = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let server = TestServer::start(&old, "127.0.0.1:0").await;
    server
        .entry_for_me(
            "spiffe://example.org/kept",
            lanyard_integration_tests::NODE,
            60,
        )
        .await;
    let ca = server.active_ca_id();
    let seq = server.bound.ca.snapshot().sequence;
    // While it runs, the database is locked: a clear refusal.
    let err = run(DatastoreCmd::Backup {
        file: dir.path().join("x.jsonl"),
        data_dir: Some(old.join("data")),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("stop the server first"), "{err}");
    server.stop().await;

    let file = dir.path().join("backup.jsonl");
    // The server ran in this process: its connection tasks let go of the
    // database moments after it stops (a real server's process exits).
    let t = std::time::Instant::now();
    loop {
        match run(DatastoreCmd::Backup {
            file: file.clone(),
            data_dir: Some(old.join("data")),
        })
        .await
        {
            Ok(()) => break,
            Err(e)
                if t.elapsed() < Duration::from_secs(10)
                    && e.to_string().contains("stop the server") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let new = dir.path().join("new");
    run(DatastoreCmd::Restore {
        file: file.clone(),
        data_dir: Some(new.join("data")),
    })
    .await
    .unwrap();
    let restored = TestServer::start(&new, "127.0.0.1:0").await;
    let ids: Vec<String> = restored
        .entries()
        .await
        .into_iter()
        .map(|e| e.spiffe_id)
        .collect();
    assert_eq!(ids, ["spiffe://example.org/kept"]);
    assert_eq!(restored.active_ca_id(), ca);
    assert!(restored.bound.ca.snapshot().sequence >= seq);
    restored.stop().await;

    let db = pg.create_db().await.unwrap();
    run(DatastoreCmd::Migrate {
        to: pg.url(&db),
        datastore_ca: None,
        data_dir: Some(old.join("data")),
    })
    .await
    .unwrap();
    // Not twice into the same database.
    let err = run(DatastoreCmd::Migrate {
        to: pg.url(&db),
        datastore_ca: None,
        data_dir: Some(old.join("data")),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("not empty"), "{err}");
    let url = pg.url(&db);
    let migrated = TestServer::start_with(&old, "127.0.0.1:0", |c| {
        c.datastore = Datastore::Postgres(PgOptions { url, ca_file: None });
    })
    .await;
    let ids: Vec<String> = migrated
        .entries()
        .await
        .into_iter()
        .map(|e| e.spiffe_id)
        .collect();
    assert_eq!(ids, ["spiffe://example.org/kept"]);
    assert_eq!(migrated.active_ca_id(), ca, "the server kept its own CA");
    // Its private keys moved out of the database into its data dir.
    let client = pg.client(&db).await.unwrap();
    let with_private: i64 = client
        .query_one(
            "SELECT count(*) FILTER (WHERE jsonb_array_length(data->'key_pkcs8') > 0) FROM lanyard_ca_keys",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(with_private, 0);
    assert!(old.join("data").join("keys").read_dir().unwrap().count() >= 2);
    assert!(migrated.bound.ca.snapshot().sequence >= seq);
    migrated.stop().await;
}

/// Set in the child of `a_cluster_never_dropped_does_not_outlive_its_process`.
const ORPHAN_ENV: &str = "LANYARD_PG_ORPHAN_CHILD";

/// A cluster held where it is never dropped (the `static` above), or that
/// of a test process that is killed, is stopped and removed once its
/// process is gone: a child run of this test binary starts one, reports
/// the server's PID and directory, and exits without dropping it.
#[tokio::test]
async fn a_cluster_never_dropped_does_not_outlive_its_process() {
    if std::env::var_os(ORPHAN_ENV).is_some() {
        let pg = PgCluster::start().await.expect("start PostgreSQL");
        println!("orphan {} {}", pg.server_pid(), pg.dir().display());
        std::mem::forget(pg);
        std::process::exit(0);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "postgres::a_cluster_never_dropped_does_not_outlive_its_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("orphan ").map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| {
            panic!(
                "the child did not start a cluster: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (pid, dir) = line.split_once(' ').unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let dir = std::path::PathBuf::from(dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (proc_dir.exists() || dir.exists()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !proc_dir.exists(),
        "postgres (PID {pid}) still runs after the process that started it exited"
    );
    assert!(
        !dir.exists(),
        "the cluster's directory {} is left behind",
        dir.display()
    );
}
