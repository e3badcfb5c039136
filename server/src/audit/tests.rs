use std::sync::Arc;
use std::time::Duration;

use lanyard_core::audit::{Event, Kind, Verifier};
use lanyard_core::clock::{FakeClock, SystemClock};

use super::*;

fn settings() -> AuditSettings {
    AuditSettings {
        checkpoint_every: 100,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditSettings::default()
    }
}

/// Verifies the log on disk plus a checkpoint of its head, as an export.
async fn verify(audit: &Audit) -> Vec<lanyard_core::audit::ChainSummary> {
    let mut lines = vec![];
    audit
        .read(|l| {
            lines.push(l.to_owned());
            true
        })
        .unwrap();
    lines.push(audit.sign_head().await.unwrap().to_line());
    let mut v = Verifier::new(vec![audit.public_key().clone()]);
    for l in &lines {
        v.feed(l).unwrap();
    }
    v.finish().unwrap()
}

fn lines(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    segments::read_all(&audit_dir(dir), |l| {
        out.push(l.to_owned());
        true
    })
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_form_one_verifiable_chain_with_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
    let mut tasks = vec![];
    for w in 0..8 {
        let a = audit.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let e = a
                    .event(Kind::SvidIssued)
                    .subject(format!("spiffe://td/w{w}/{i}"));
                a.record(e).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = verify(&audit).await;
    assert_eq!((s[0].first_seq, s[0].last_seq), (1, 2000));
    // Checkpoints every 100 records (plus the closing one).
    assert!(s[0].checkpoints >= 21, "{s:?}");
    // The key is private to the server.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(audit_dir(dir.path()).join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_cut_and_the_chain_goes_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
        for _ in 0..10 {
            audit.record(audit.event(Kind::EntryCreated)).await.unwrap();
        }
        // Closed (its closing checkpoint written) before the file is
        // touched below.
        audit.close(Duration::from_secs(10)).await;
    }
    // A crash in the middle of a write: half a line at the end.
    let (_, seg) = segments::list(&audit_dir(dir.path()))
        .unwrap()
        .pop()
        .unwrap();
    let mut text = std::fs::read_to_string(&seg).unwrap();
    text.push_str("{\"actor\":\"half");
    std::fs::write(&seg, text).unwrap();
    let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
    assert_eq!(*audit.subscribe().borrow(), 10);
    assert_eq!(
        audit.record(audit.event(Kind::EntryDeleted)).await.unwrap(),
        11
    );
    assert_eq!(verify(&audit).await[0].last_seq, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_line_refuses_to_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
        for _ in 0..3 {
            audit.record(audit.event(Kind::EntryCreated)).await.unwrap();
        }
        audit.close(Duration::from_secs(10)).await;
    }
    let (_, seg) = segments::list(&audit_dir(dir.path()))
        .unwrap()
        .pop()
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let mut ls: Vec<&str> = text.lines().collect();
    ls[1] = "garbage";
    std::fs::write(&seg, ls.join("\n") + "\n").unwrap();
    let e = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap_err();
    assert!(matches!(e, AuditLogError::Corrupt(_, 2, _)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_records_are_appended_once_however_often_they_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
    let batch = |from: u64, to: u64| {
        (from..=to)
            .map(|s| {
                (
                    s,
                    Event::new(Kind::ToolDecision, "2026-12-03T00:00:00.000Z".into()),
                )
            })
            .collect::<Vec<_>>()
    };
    let agent = "spiffe://td/lanyard/agent/a";
    assert_eq!(
        audit
            .append_shipped(agent, "e1", batch(1, 5))
            .await
            .unwrap(),
        5
    );
    // A retry after a lost acknowledgement, overlapping.
    assert_eq!(
        audit
            .append_shipped(agent, "e1", batch(3, 8))
            .await
            .unwrap(),
        8
    );
    // Another epoch (a new data dir) starts again at 1.
    assert_eq!(
        audit
            .append_shipped(agent, "e2", batch(1, 2))
            .await
            .unwrap(),
        2
    );
    audit.close(Duration::from_secs(10)).await;
    // The high-water marks come back from the chain after a restart.
    let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
    assert_eq!(
        audit
            .append_shipped(agent, "e1", batch(1, 8))
            .await
            .unwrap(),
        8
    );
    let recs: Vec<_> = lines(dir.path())
        .into_iter()
        .filter(|l| l.contains("\"origin\""))
        .collect();
    assert_eq!(recs.len(), 10);
    assert_eq!(verify(&audit).await[0].records, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_whole_segments_and_what_remains_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::at(1_800_000_000));
    let s = AuditSettings {
        segment_bytes: 2048,
        max_records: Some(30),
        retention: None,
        ..settings()
    };
    let audit = Audit::open(dir.path(), "aaaa", clock.clone(), s).unwrap();
    for _ in 0..100 {
        audit.record(audit.event(Kind::EntryUpdated)).await.unwrap();
    }
    let pruned = audit.prune().await.unwrap();
    assert!(pruned > 0 && pruned <= 70, "{pruned}");
    let s = verify(&audit).await;
    assert_eq!(s[0].pruned_through, Some(s[0].first_seq - 1));
    assert!(s[0].records >= 30);
    assert_eq!(s[0].last_seq, 100);
    // Pruning by age, after a restart.
    audit.close(Duration::from_secs(10)).await;
    let by_age = AuditSettings {
        segment_bytes: 2048,
        retention: Some(Duration::from_secs(60)),
        ..settings()
    };
    clock.advance(Duration::from_secs(3600));
    let audit = Audit::open(dir.path(), "aaaa", clock.clone(), by_age).unwrap();
    audit.record(audit.event(Kind::EntryUpdated)).await.unwrap();
    audit.prune().await.unwrap();
    let s = verify(&audit).await;
    assert_eq!(s[0].last_seq, 101);
    assert!(s[0].first_seq > 70, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_are_checkpointed_after_the_interval_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let s = AuditSettings {
        checkpoint_interval: Duration::from_millis(200),
        ..settings()
    };
    let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), s).unwrap();
    for _ in 0..3 {
        audit.record(audit.event(Kind::EntryCreated)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !lines(dir.path())
        .iter()
        .any(|l| l.starts_with("{\"checkpoint\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint by time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more record, then close: the closing checkpoint covers it, so
    // the log as it is on disk verifies with nothing added.
    audit.record(audit.event(Kind::EntryDeleted)).await.unwrap();
    audit.close(Duration::from_secs(10)).await;
    let mut v = Verifier::new(vec![public_key(dir.path()).unwrap()]);
    for l in lines(dir.path()) {
        v.feed(&l).unwrap();
    }
    assert_eq!(v.finish().unwrap()[0].last_seq, 4);
}

/// Records an agent numbered but never shipped leave an `audit.gap`
/// record where they would have been (counted by `audit verify`); an empty
/// batch keeps no mark; only an agent's newest epochs are remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_in_shipped_records_are_recorded_and_the_index_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), "aaaa", Arc::new(SystemClock), settings()).unwrap();
    let batch = |seqs: &[u64]| {
        seqs.iter()
            .map(|s| {
                (
                    *s,
                    Event::new(Kind::ToolDecision, "2026-12-03T00:00:00.000Z".into()),
                )
            })
            .collect::<Vec<_>>()
    };
    let agent = "spiffe://td/lanyard/agent/a";
    assert_eq!(
        audit
            .append_shipped(agent, "e1", batch(&[1, 2, 5]))
            .await
            .unwrap(),
        5
    );
    let gaps: Vec<String> = lines(dir.path())
        .into_iter()
        .filter(|l| l.contains("\"audit.gap\""))
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(
        gaps[0].contains("agent records 3 to 4 of epoch e1"),
        "{}",
        gaps[0]
    );
    assert_eq!(verify(&audit).await[0].gaps, 1);
    // An empty batch of a new epoch places nothing and keeps no mark.
    assert_eq!(audit.append_shipped(agent, "e0", vec![]).await.unwrap(), 0);
    // Newer epochs push the oldest out of the index: e2 and e3 are kept,
    // so a resend of e2 is skipped; e1 is forgotten (its queue is done).
    audit
        .append_shipped(agent, "e2", batch(&[1]))
        .await
        .unwrap();
    audit
        .append_shipped(agent, "e3", batch(&[1]))
        .await
        .unwrap();
    let before = verify(&audit).await[0].records;
    audit
        .append_shipped(agent, "e2", batch(&[1]))
        .await
        .unwrap();
    audit
        .append_shipped(agent, "e3", batch(&[1]))
        .await
        .unwrap();
    assert_eq!(verify(&audit).await[0].records, before);
    // (Were e1's queue to come back, its record would be placed again,
    // after a gap record for what the forgotten mark had covered.)
    audit
        .append_shipped(agent, "e1", batch(&[5]))
        .await
        .unwrap();
    assert_eq!(verify(&audit).await[0].records, before + 2);
}
