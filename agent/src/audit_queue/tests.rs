use super::*;
use lanyard_core::audit::Kind;

fn event(i: u64) -> Event {
    let mut e = Event::new(Kind::ToolDecision, "2026-12-03T00:00:00.000Z".into());
    e.tool = format!("t{i}");
    e
}

#[test]
fn records_survive_reopen_and_leave_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    let epoch = q.epoch().to_owned();
    for i in 1..=5 {
        assert_eq!(q.append(event(i)).unwrap(), i);
    }
    drop(q);
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    assert_eq!(q.epoch(), epoch);
    assert_eq!(q.waiting(), 5);
    let p = q.pending(0).unwrap();
    assert_eq!(
        p.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    q.ack(3).unwrap();
    assert_eq!(q.pending(3).unwrap().len(), 2);
    drop(q);
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    assert_eq!(q.waiting(), 2);
    assert_eq!(q.append(event(6)).unwrap(), 6);
    // A new data dir is a new epoch.
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        AuditQueue::open(other.path(), QueueSettings::default())
            .unwrap()
            .epoch(),
        epoch
    );
}

#[test]
fn batches_read_on_from_the_last_one_and_start_over_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    for i in 1..=2500 {
        q.append(event(i)).unwrap();
    }
    let mut seen = vec![];
    let mut acked = 0;
    loop {
        let b = q.pending(acked).unwrap();
        let Some(last) = b.last().map(|i| i.seq) else {
            break;
        };
        assert!(b.len() <= BATCH);
        seen.extend(b.iter().map(|i| i.seq));
        if last == 1000 {
            // A failed batch: the next read starts again after the ack.
            let again = q.pending(acked).unwrap();
            assert_eq!(again.first().map(|i| i.seq), Some(1));
        }
        q.ack(last).unwrap();
        acked = last;
        if acked <= 2500 {
            q.append(event(acked + 10_000)).unwrap();
        }
    }
    // 2,500 written first, then one more after each ack up to there.
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.len(), 2502);
}

#[test]
fn a_torn_last_line_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    q.append(event(1)).unwrap();
    drop(q);
    let seg = segment_path(&dir.path().join("audit-queue"), 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"2\t{\"time\":").unwrap();
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    assert_eq!(q.append(event(2)).unwrap(), 2);
    assert_eq!(q.pending(0).unwrap().len(), 2);
}

#[test]
fn a_full_queue_refuses_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let settings = QueueSettings {
        max_bytes: 600,
        ..QueueSettings::default()
    };
    let q = AuditQueue::open(dir.path(), settings).unwrap();
    let full = q.full();
    let mut n = 0;
    while q.append(event(n)).is_ok() {
        n += 1;
    }
    assert!(n >= 2, "{n}");
    assert!(*full.borrow());
    assert!(matches!(q.append(event(99)), Err(QueueError::Full(_))));
    q.ack(n).unwrap();
    assert!(!*full.borrow());
    assert!(q.append(event(100)).is_ok());
}

#[test]
fn a_small_acknowledged_segment_is_kept_and_written_on() {
    let dir = tempfile::tempdir().unwrap();
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    for i in 1..=5 {
        q.append(event(i)).unwrap();
    }
    q.ack(5).unwrap();
    // No new file per acknowledged batch: the same segment goes on.
    assert_eq!(
        q.lock()
            .segments
            .iter()
            .map(|g| g.first)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(q.append(event(6)).unwrap(), 6);
    assert_eq!(q.pending(5).unwrap().len(), 1);
    drop(q);
    let q = AuditQueue::open(dir.path(), QueueSettings::default()).unwrap();
    assert_eq!(q.waiting(), 1);
    assert_eq!(
        q.pending(5)
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect::<Vec<_>>(),
        vec![6]
    );
}
