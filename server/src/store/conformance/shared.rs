//! The checks that need two handles on one database (two servers): races
//! and what one server's change looks like to the other.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::SpiffeId;

use super::{agent, agent_id, ca_key, entry, task};
use crate::store::{AgentRecord, ChangeKind, Feed, PolicyRecord, Store, StoreError};

/// Writers on both handles race on one agent record: each change is a
/// read-modify-swap loop, and no increment is lost.
pub(super) async fn agent_swaps_race_without_lost_updates(s: Arc<dyn Store>, t: Arc<dyn Store>) {
    let id = agent_id("racer");
    assert_eq!(
        s.swap_agent(&id, None, Some(&agent(&id))).await.unwrap(),
        Ok(())
    );
    let mut writers = Vec::new();
    for n in 0..4 {
        let (store, id) = (if n % 2 == 0 { s.clone() } else { t.clone() }, id.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let cur = store.get_agent(&id).await.unwrap().unwrap();
                    let mut next = cur.clone();
                    next.expires_at += 1;
                    if store
                        .swap_agent(&id, Some(&cur), Some(&next))
                        .await
                        .unwrap()
                        .is_ok()
                    {
                        break;
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(s.get_agent(&id).await.unwrap().unwrap().expires_at, 100);
}

/// A renewal loop on one server against a ban, then an eviction, on the
/// other: the renewal never writes back a record the ban or eviction
/// changed.
pub(super) async fn renewal_racing_a_ban_or_eviction_never_undoes_it(
    s: Arc<dyn Store>,
    t: Arc<dyn Store>,
) {
    for evict in [false, true] {
        let id = agent_id(if evict { "evicted" } else { "banned" });
        assert_eq!(
            s.swap_agent(&id, None, Some(&agent(&id))).await.unwrap(),
            Ok(())
        );
        let (renewer, rid) = (s.clone(), id.clone());
        let renewals = tokio::spawn(async move {
            for n in 0..200u64 {
                let Some(cur) = renewer.get_agent(&rid).await.unwrap() else {
                    break;
                };
                if cur.banned {
                    break;
                }
                let mut next = cur.clone();
                next.previous_serial = Some(cur.serial.clone());
                next.serial = format!("{n:x}");
                let _ = renewer
                    .swap_agent(&rid, Some(&cur), Some(&next))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        loop {
            let cur = t.get_agent(&id).await.unwrap().unwrap();
            let next = (!evict).then(|| AgentRecord {
                banned: true,
                ..cur.clone()
            });
            if t.swap_agent(&id, Some(&cur), next.as_ref())
                .await
                .unwrap()
                .is_ok()
            {
                break;
            }
        }
        renewals.await.unwrap();
        let after = s.get_agent(&id).await.unwrap();
        if evict {
            assert_eq!(after, None, "an eviction was undone by a renewal");
        } else {
            assert!(after.unwrap().banned, "a ban was undone by a renewal");
        }
    }
}

/// Two servers create the same registration (same SPIFFE ID, parent and
/// selectors, different entry IDs) at the same moment: one wins, the other
/// is told which entry exists.
pub(super) async fn two_servers_creating_the_same_entry(s: Arc<dyn Store>, t: Arc<dyn Store>) {
    for round in 0..10 {
        let path = format!("spiffe://td/same{round}");
        let x = entry(&format!("x{round}"), &path);
        let y = entry(&format!("y{round}"), &path);
        let (s2, t2, x2, y2) = (s.clone(), t.clone(), x.clone(), y.clone());
        let (rx, ry) = tokio::join!(
            tokio::spawn(async move { s2.create_entry(&x2).await }),
            tokio::spawn(async move { t2.create_entry(&y2).await })
        );
        let (rx, ry) = (rx.unwrap(), ry.unwrap());
        match (&rx, &ry) {
            (Ok(()), Err(StoreError::DuplicateEntry(id))) => assert_eq!(id, &x.id),
            (Err(StoreError::DuplicateEntry(id)), Ok(())) => assert_eq!(id, &y.id),
            other => panic!("round {round}: expected one winner, got {other:?}"),
        }
    }
    // An update that would make an entry the same as another is refused.
    let a = entry("ua", "spiffe://td/u1");
    let b = entry("ub", "spiffe://td/u2");
    s.create_entry(&a).await.unwrap();
    s.create_entry(&b).await.unwrap();
    let mut b2 = b.clone();
    b2.spiffe_id = a.spiffe_id.clone();
    assert!(matches!(
        t.update_entry(&b2).await,
        Err(StoreError::DuplicateEntry(id)) if id == a.id
    ));
    // Its old identity is still taken, and freed by a real change.
    assert!(matches!(
        s.create_entry(&entry("uc", "spiffe://td/u2")).await,
        Err(StoreError::DuplicateEntry(id)) if id == b.id
    ));
    let mut b3 = b.clone();
    b3.spiffe_id = SpiffeId::new("spiffe://td/u3").unwrap();
    t.update_entry(&b3).await.unwrap();
    s.create_entry(&entry("uc", "spiffe://td/u2"))
        .await
        .unwrap();
    // A deleted entry frees its identity.
    s.delete_entry(&a.id).await.unwrap();
    t.create_entry(&entry("ud", "spiffe://td/u1"))
        .await
        .unwrap();
}

/// Every change made through either handle is numbered, without gaps, in
/// order, readable from the other handle, and wakes its followers; a swap
/// that did not write announces nothing.
pub(super) async fn documents_are_shared_and_announced(s: Arc<dyn Store>, t: Arc<dyn Store>) {
    use crate::store::DocKind;
    let start = t.last_change().await.unwrap();
    let doc = serde_json::json!({"value": "abc", "n": 1});
    s.put_doc(DocKind::Revocation, "serial:b", &doc)
        .await
        .unwrap();
    s.put_doc(DocKind::Revocation, "serial:a", &doc)
        .await
        .unwrap();
    s.put_doc(DocKind::Quarantine, "q1", &doc).await.unwrap();
    let listed = t.list_docs(DocKind::Revocation).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["serial:a", "serial:b"]);
    assert_eq!(listed[0].1, doc);
    assert_eq!(
        t.get_doc(DocKind::Quarantine, "q1").await.unwrap(),
        Some(doc.clone())
    );
    assert_eq!(t.get_doc(DocKind::Crl, "q1").await.unwrap(), None);
    let changed = serde_json::json!({"value": "abc", "n": 2});
    t.put_doc(DocKind::Quarantine, "q1", &changed)
        .await
        .unwrap();
    assert_eq!(
        s.get_doc(DocKind::Quarantine, "q1").await.unwrap(),
        Some(changed)
    );
    assert!(s.delete_doc(DocKind::Revocation, "serial:a").await.unwrap());
    assert!(!t.delete_doc(DocKind::Revocation, "serial:a").await.unwrap());
    assert_eq!(t.list_docs(DocKind::Revocation).await.unwrap().len(), 1);
    // Credential providers: compare-and-swap through either handle, and
    // no announcement (they are read from the store whenever used).
    let p1 = serde_json::json!({"name": "p", "version": 1});
    let p2 = serde_json::json!({"name": "p", "version": 2});
    let absent = |c: Option<&serde_json::Value>| c.is_none();
    assert_eq!(
        s.swap_doc(DocKind::Credential, "p", &absent, Some(&p1))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        t.swap_doc(DocKind::Credential, "p", &absent, Some(&p2))
            .await
            .unwrap(),
        Err(Some(p1.clone()))
    );
    let was_p1 = |c: Option<&serde_json::Value>| c == Some(&p1);
    assert_eq!(
        t.swap_doc(DocKind::Credential, "p", &was_p1, Some(&p2))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(s.get_doc(DocKind::Credential, "p").await.unwrap(), Some(p2));
    assert!(s.delete_doc(DocKind::Credential, "p").await.unwrap());
    let Feed::Changes(changes) = t.changes_since(start, 100).await.unwrap() else {
        panic!("gap")
    };
    let seen: Vec<(ChangeKind, &str)> = changes.iter().map(|c| (c.kind, c.key.as_str())).collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Revocation, "serial:b"),
            (ChangeKind::Revocation, "serial:a"),
            (ChangeKind::Quarantine, "q1"),
            (ChangeKind::Quarantine, "q1"),
            (ChangeKind::Revocation, "serial:a"),
        ]
    );
}

pub(super) async fn change_feed_numbers_every_change_in_order(
    s: Arc<dyn Store>,
    t: Arc<dyn Store>,
) {
    let mut wake = s.wake();
    let start = s.last_change().await.unwrap();
    let e = entry("fe", "spiffe://td/feed");
    let a = agent(&agent_id("feed"));
    let tk = task(9);
    t.create_entry(&e).await.unwrap();
    t.swap_agent(&a.spiffe_id, None, Some(&a))
        .await
        .unwrap()
        .unwrap();
    assert!(
        t.swap_agent(&a.spiffe_id, None, Some(&a))
            .await
            .unwrap()
            .is_err()
    );
    t.put_ca_key(&ca_key("feedkey")).await.unwrap();
    t.create_policy(&PolicyRecord {
        version: 7,
        shadow: false,
        text: String::new(),
        created_at: 1,
        cleared: false,
    })
    .await
    .unwrap();
    t.swap_task(&tk.grant.task_id, None, &tk)
        .await
        .unwrap()
        .unwrap();
    t.bump_counter("feed").await.unwrap();
    t.delete_entry(&e.id).await.unwrap();
    let want = [
        (ChangeKind::Entry, e.id.to_string()),
        (ChangeKind::Agent, a.spiffe_id.to_string()),
        (ChangeKind::Authority, "feedkey".to_owned()),
        (ChangeKind::Policy, "7".to_owned()),
        (ChangeKind::Task, tk.grant.task_id.to_string()),
        (ChangeKind::Counter, "feed".to_owned()),
        (ChangeKind::Entry, e.id.to_string()),
    ];
    let end = start + want.len() as u64;
    tokio::time::timeout(Duration::from_secs(20), async {
        while *wake.borrow_and_update() < end {
            wake.changed().await.unwrap();
        }
    })
    .await
    .expect("the other handle was not woken by the changes");
    assert_eq!(s.last_change().await.unwrap(), end);
    let Feed::Changes(got) = s.changes_since(start, 100).await.unwrap() else {
        panic!("gap in a fresh feed")
    };
    let seqs: Vec<u64> = got.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (start + 1..=end).collect::<Vec<_>>());
    let got: Vec<(ChangeKind, String)> = got.into_iter().map(|c| (c.kind, c.key)).collect();
    assert_eq!(got, want);
    let Feed::Changes(two) = s.changes_since(start, 2).await.unwrap() else {
        panic!("gap")
    };
    assert_eq!(two.len(), 2);
    assert_eq!(
        s.changes_since(end, 10).await.unwrap(),
        Feed::Changes(vec![])
    );
}
