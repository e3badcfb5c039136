//! The driver of the Workload API's streams: it follows the agent's
//! snapshot and sends the caller's state whenever it changes, for as long as
//! the caller has identities. Before every send the process behind the
//! connection is checked again: if it exec'd or exited (its descriptor
//! passed on), the stream ends with Unavailable and the client redials and
//! is attested afresh.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
}

/// Streams `build(snapshot, svids)` whenever its key changes. The stream
/// is driven by the connection (no task per stream): it ends when the
/// client goes away.
pub(crate) fn follow<T, K>(
    source: StreamSource,
    caller: Caller,
    build: impl Fn(&Snapshot, &[Arc<CachedSvid>]) -> (K, T) + Send + Sync + 'static,
) -> Streamed<T>
where
    T: Send + 'static,
    K: PartialEq + Send + 'static,
{
    struct State<K, B> {
        src: StreamSource,
        caller: Caller,
        last: Option<K>,
        build: B,
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
        loop {
            let snap = st.src.cache.borrow_and_update().clone();
            let now = st.src.clock.now();
            let mut recheck: Option<SystemTime> = None;
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
                    return Some((Err(WorkloadError::NoIdentity.into()), st));
                }
                Identities::None | Identities::Pending => {}
                Identities::Ready(svids) => {
                    recheck = svids.iter().map(|s| s.not_after).min();
                    let (key, msg) = (st.build)(&snap, &svids);
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
                        st.last = Some(key);
                        return Some((Ok(msg), st));
                    }
                }
            }
            let wait = recheck
                .and_then(|t| t.duration_since(now).ok())
                .map_or(Duration::from_secs(3600), |d| d + Duration::from_millis(10));
            st.waited = true;
            let stop = &mut st.src.stop;
            tokio::select! {
                r = st.src.cache.changed() => if r.is_err() { return None },
                () = tokio::time::sleep(wait) => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    st.done = true;
                    return Some((Err(WorkloadError::ShuttingDown.into()), st));
                }
            }
        }
    }))
}
