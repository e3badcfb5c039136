//! The driver of the Workload API's streams: it follows the agent's
//! snapshot and sends the caller's state whenever it changes, for as long as
//! the caller has identities. Before every send the process behind the
//! connection is checked again: if it exec'd or exited (its descriptor
//! passed on), the stream ends with Unavailable and the client redials and
//! is attested afresh.

use std::pin::Pin;
use std::sync::Arc;

use lanyard_core::clock::Clock;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;

use super::caller::Caller;
use super::status::WorkloadError;
use crate::cache::{CachedSvid, Identities, Snapshot};

/// A server stream of `T`.
pub(crate) type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a stream needs from the agent.
pub(crate) struct StreamSource {
    pub cache: watch::Receiver<Arc<Snapshot>>,
    pub stop: watch::Receiver<bool>,
    pub clock: Arc<dyn Clock>,
    /// Ticks when an SVID in the snapshot expires (see `expiry`).
    pub expiry: watch::Receiver<u64>,
}

/// Parts of a snapshot shared between snapshots that did not change them
/// (bundle certificates, CRLs, JWT authorities), compared by pointer first:
/// then the per-call comparison costs nothing, while a replaced part with
/// equal contents still compares equal (nothing is resent). Holding the
/// `Arc` keeps its address from being reused by another part.
pub(crate) struct Shared<T>(pub(crate) Arc<T>);

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// How a stream's messages are made: `key` says what a message would be
/// built from (compared with the last one sent, on every wake-up), and
/// `message` builds it only when the key changed.
pub(crate) struct Build<K, T> {
    pub key: fn(&Snapshot, &[Arc<CachedSvid>]) -> K,
    pub message: fn(&Snapshot, &[Arc<CachedSvid>]) -> T,
}

/// Streams `build.message(snapshot, svids)` whenever its key changes. The
/// stream is driven by the connection (no task, no timer per stream): it
/// ends when the client goes away.
pub(crate) fn follow<T, K>(source: StreamSource, caller: Caller, build: Build<K, T>) -> Streamed<T>
where
    T: Send + 'static,
    K: PartialEq + Send + 'static,
{
    struct State<K, T> {
        src: StreamSource,
        caller: Caller,
        last: Option<K>,
        build: Build<K, T>,
        done: bool,
        /// Whether the stream has waited since the caller was attested.
        waited: bool,
    }
    let state = State {
        src: source,
        caller,
        last: None,
        build,
        done: false,
        waited: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        // Polled again right after a send (the connection polls the stream
        // once more before it parks it): when neither the snapshot nor the
        // expiry tick moved since, the answer is the same, so go straight
        // to waiting.
        let mut unchanged = st.last.is_some()
            && !st.src.cache.has_changed().unwrap_or(true)
            && !st.src.expiry.has_changed().unwrap_or(true);
        loop {
            if std::mem::take(&mut unchanged) {
                st.waited = true;
                let stop = &mut st.src.stop;
                tokio::select! {
                    r = st.src.cache.changed() => if r.is_err() { return None },
                    r = st.src.expiry.changed() => if r.is_err() { return None },
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        st.done = true;
                        return Some((Err(WorkloadError::ShuttingDown.into()), st));
                    }
                }
            }
            let snap = st.src.cache.borrow_and_update().clone();
            st.src.expiry.mark_unchanged();
            let now = st.src.clock.now();
            // A quarantined caller's open streams end at once.
            if let Some(q) =
                snap.quarantine_of(&st.caller.selectors, st.caller.conn.instance.as_deref())
            {
                st.done = true;
                let e = WorkloadError::Quarantined(q.reason.clone());
                return Some((Err(e.into()), st));
            }
            match snap.identities_for(
                &st.caller.selectors,
                st.caller.conn.instance.as_deref(),
                now,
            ) {
                Identities::None if snap.synced => {
                    st.done = true;
                    return Some((Err(st.caller.no_identity().into()), st));
                }
                Identities::None | Identities::Pending => {}
                Identities::Ready(svids) => {
                    let key = (st.build.key)(&snap, &svids);
                    if st.last.as_ref() != Some(&key) {
                        // A first send without waiting follows the
                        // attestation's own check by microseconds; every
                        // other send checks again.
                        if (st.last.is_some() || st.waited)
                            && let Err(e) = st.caller.recheck()
                        {
                            st.done = true;
                            return Some((Err(e.into()), st));
                        }
                        let msg = (st.build.message)(&snap, &svids);
                        st.last = Some(key);
                        return Some((Ok(msg), st));
                    }
                }
            }
            unchanged = true;
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use lanyard_core::clock::SystemClock;
    use lanyard_core::{Selector, TrustDomain};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::api::ExpiryTicker;
    use crate::cache::fixtures::{entry, svid};
    use crate::listener::ConnInfo;

    fn ids(_: &Snapshot, svids: &[Arc<CachedSvid>]) -> Vec<String> {
        svids
            .iter()
            .map(|s| s.entry_id.as_str().to_owned())
            .collect()
    }

    /// An SVID that expires without being renewed (the server is away) is
    /// dropped from an open stream by the shared expiry tick alone: no
    /// snapshot is published, and no stream holds a timer.
    #[tokio::test]
    async fn an_svid_not_renewed_leaves_the_open_stream_when_it_expires() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let caller = Caller {
            selectors: Arc::new(vec!["unix:uid:1".parse::<Selector>().unwrap()]),
            conn: ConnInfo::of_peer(&a, 1),
            unmatched: Arc::default(),
        };
        let now = SystemTime::now();
        let (short, long) = (
            entry("short", 1, "unix:uid:1"),
            entry("long", 2, "unix:uid:1"),
        );
        let mut snap = Snapshot::empty(TrustDomain::new("td").unwrap())
            .with_entries(vec![short.clone(), long.clone()]);
        snap.synced = true;
        snap.svids
            .insert(short.id.clone(), svid(&short, now + Duration::from_secs(1)));
        snap.svids.insert(
            long.id.clone(),
            svid(&long, now + Duration::from_secs(3600)),
        );
        let (publish, cache) = watch::channel(Arc::new(snap));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ticker = ExpiryTicker::new(cache.clone(), clock.clone());
        let expiry = ticker.subscribe();
        let ticking = tokio::spawn(ticker.run());
        let (_stop_tx, stop) = watch::channel(false);
        let source = StreamSource {
            cache,
            stop,
            clock,
            expiry,
        };
        let mut stream = follow(
            source,
            caller,
            Build {
                key: ids,
                message: ids,
            },
        );
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, vec!["short", "long"]);
        let second = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the expired SVID leaves the stream")
            .unwrap()
            .unwrap();
        assert_eq!(second, vec!["long"]);
        drop((stream, publish, a, b));
        ticking.await.unwrap();
    }
}
