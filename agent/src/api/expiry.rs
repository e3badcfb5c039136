//! One timer for every open stream: a tick when the earliest SVID in the
//! agent's snapshot (standing or task) expires, so that streams drop an
//! SVID that was not renewed in time without each holding a timer of its
//! own.
//!
//! A timer per stream is not free: registering one that is due earlier
//! than anything else in the runtime's timer wheel wakes the runtime's
//! driver, and a client that opens a stream, reads the first message and
//! hangs up (the common way to fetch an X.509-SVID) paid that wake-up on
//! every call. Renewed SVIDs replace the old ones in the snapshot before
//! they expire, so in the normal case this timer keeps moving forward and
//! never fires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_core::clock::Clock;
use tokio::sync::watch;

use crate::cache::Snapshot;

/// How long past an expiry the tick comes (so that `not_after < now` holds
/// for whoever looks on the tick).
const PAST_EXPIRY: Duration = Duration::from_millis(10);

/// When nothing expires.
const IDLE: Duration = Duration::from_secs(3600);

/// The ticker's half that runs; [`ExpiryTicker::subscribe`] hands out the
/// receivers.
pub struct ExpiryTicker {
    cache: watch::Receiver<Arc<Snapshot>>,
    clock: Arc<dyn Clock>,
    tick: watch::Sender<u64>,
}

impl ExpiryTicker {
    /// A ticker over the agent's published snapshots.
    pub fn new(cache: watch::Receiver<Arc<Snapshot>>, clock: Arc<dyn Clock>) -> Self {
        Self {
            cache,
            clock,
            tick: watch::channel(0).0,
        }
    }

    /// A receiver that changes on every tick.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// Ticks until the snapshot's publisher goes away (the agent stops);
    /// then the receivers see the channel closed, as the streams see the
    /// snapshot channel closed.
    pub async fn run(mut self) {
        loop {
            let wait = {
                let snap = self.cache.borrow_and_update();
                until_next_expiry(&snap, self.clock.now())
            };
            tokio::select! {
                r = self.cache.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {
                    self.tick.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }
}

/// How long until just after the earliest SVID in `snap` that is still
/// valid at `now` expires.
fn until_next_expiry(snap: &Snapshot, now: SystemTime) -> Duration {
    let standing = snap.svids.values().map(|s| s.not_after);
    let tasks = snap
        .tasks
        .iter()
        .filter_map(|t| t.svid.as_ref().map(|s| s.not_after));
    standing
        .chain(tasks)
        .filter(|t| *t > now)
        .min()
        .and_then(|t| t.duration_since(now).ok())
        .map_or(IDLE, |d| d + PAST_EXPIRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CachedSvid, fixtures};
    use lanyard_core::clock::SystemClock;
    use lanyard_core::{EntryId, TrustDomain};

    fn svid(id: &str, not_after: SystemTime) -> (EntryId, Arc<CachedSvid>) {
        let e = fixtures::entry(id, 0, "unix:uid:1");
        (e.id.clone(), fixtures::svid(&e, not_after))
    }

    fn snapshot(svids: Vec<(EntryId, Arc<CachedSvid>)>) -> Snapshot {
        let mut snap = Snapshot::empty(TrustDomain::new("td").unwrap());
        snap.svids = svids.into_iter().collect();
        snap
    }

    #[test]
    fn waits_for_the_earliest_svid_still_valid() {
        let now = SystemTime::now();
        let s = snapshot(vec![
            svid("gone", now - Duration::from_secs(5)),
            svid("late", now + Duration::from_secs(90)),
            svid("soon", now + Duration::from_secs(30)),
        ]);
        assert_eq!(
            until_next_expiry(&s, now),
            Duration::from_secs(30) + PAST_EXPIRY
        );
        assert_eq!(until_next_expiry(&snapshot(vec![]), now), IDLE);
    }

    #[tokio::test]
    async fn ticks_when_an_svid_expires_and_not_before() {
        let now = SystemTime::now();
        let (publish, cache) = watch::channel(Arc::new(snapshot(vec![svid(
            "a",
            now + Duration::from_secs(1),
        )])));
        let ticker = ExpiryTicker::new(cache, Arc::new(SystemClock));
        let mut tick = ticker.subscribe();
        let run = tokio::spawn(ticker.run());
        // Renewed before it expired: the timer moves forward, no tick.
        publish.send_replace(Arc::new(snapshot(vec![svid(
            "a",
            now + Duration::from_secs(2),
        )])));
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), tick.changed())
                .await
                .is_err(),
            "ticked for an SVID that was replaced"
        );
        tokio::time::timeout(Duration::from_secs(5), tick.changed())
            .await
            .expect("no tick when the SVID expired")
            .unwrap();
        assert!(SystemTime::now() > now + Duration::from_secs(2));
        // The publisher gone: the ticker ends and its receivers see it.
        drop(publish);
        run.await.unwrap();
        assert!(tick.changed().await.is_err());
    }
}
