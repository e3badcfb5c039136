//! The WIT-SVID profile's streams: the caller's WIT-SVIDs with their keys,
//! sent again when one is renewed or the caller's identities change, and
//! the WIT bundle.
//!
//! Each stream re-checks the process behind the connection before every
//! send after the first, ends on quarantine, and ends when the caller has
//! no identity left, as the other streams do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::SpiffeId;
use lanyard_core::jwt::JwtAuthority;
use lanyard_proto::workload::{WitBundlesResponse, Witsvid, WitsvidResponse};
use tonic::Status;

use super::caller::Caller;
use super::status::WorkloadError;
use super::streams::{Build, Shared, StreamSource, Streamed};
use crate::cache::Snapshot;
use crate::wit_cache::{Wit, WitCache, WitFor};
use crate::workload_scope::WorkloadScope;

/// How long a stream waits before asking again for a WIT the server could
/// not sign.
const RETRY: Duration = Duration::from_secs(1);
/// The longest a stream sleeps without looking at its WITs again.
const LONGEST_SLEEP: Duration = Duration::from_secs(60);

/// The caller's identities that may have a WIT, its tasks first (newest
/// first, as for JWT-SVIDs: inside a task the default WIT is the task's),
/// then its entries; not withheld by a quarantine, and only `want` when
/// given.
fn identities(snap: &Snapshot, caller: &Caller, want: &str) -> Vec<(WitFor, SpiffeId, String)> {
    let scope = WorkloadScope::of(&caller.selectors);
    let holder = caller.conn.instance.as_deref();
    snap.tasks_for(&caller.selectors, holder)
        .map(|t| {
            (
                WitFor::Task(t.id().to_owned(), t.exe_sha256.clone()),
                t.record.grant.spiffe_id.clone(),
                t.hint(),
            )
        })
        .chain(snap.entries_for(&caller.selectors).into_iter().map(|e| {
            (
                WitFor::Entry(e.id.to_string()),
                e.spiffe_id.clone(),
                e.hint.clone(),
            )
        }))
        .filter(|(_, id, _)| snap.withheld(id.as_str(), scope.as_ref()).is_none())
        .filter(|(_, id, _)| want.is_empty() || id.as_str() == want)
        .collect()
}

/// Everything on the node a WIT may be kept for.
fn live(snap: &Snapshot) -> Vec<WitFor> {
    snap.tasks
        .iter()
        .map(|t| WitFor::Task(t.id().to_owned(), t.exe_sha256.clone()))
        .chain(snap.entries.iter().map(|e| WitFor::Entry(e.id.to_string())))
        .collect()
}

fn response(wits: &[(Arc<Wit>, String)]) -> WitsvidResponse {
    let mut hints = HashSet::new();
    WitsvidResponse {
        svids: wits
            .iter()
            .map(|(w, hint)| Witsvid {
                spiffe_id: w.spiffe_id.to_string(),
                wit_svid: w.token.clone(),
                wit_svid_key: w.key_jwk.clone(),
                hint: if hint.is_empty() || hints.insert(hint.as_str()) {
                    hint.clone()
                } else {
                    String::new()
                },
            })
            .collect(),
    }
}

/// The `FetchWITSVID` stream of `caller` (only `want` when not empty).
pub(crate) fn wit_svids(
    source: StreamSource,
    caller: Caller,
    want: String,
    wits: Arc<WitCache>,
) -> Streamed<WitsvidResponse> {
    struct State {
        src: StreamSource,
        caller: Caller,
        want: String,
        wits: Arc<WitCache>,
        /// The `jti`s last sent.
        last: Option<Vec<String>>,
        /// Wait before looking again (nothing to send yet, or sent).
        wait: bool,
        sleep: Duration,
        done: bool,
    }
    let state = State {
        src: source,
        caller,
        want,
        wits,
        last: None,
        wait: false,
        sleep: LONGEST_SLEEP,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if std::mem::take(&mut st.wait) {
                let stop = &mut st.src.stop;
                tokio::select! {
                    r = st.src.cache.changed() => if r.is_err() { return None },
                    () = tokio::time::sleep(st.sleep) => {}
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        st.done = true;
                        return Some((Err(WorkloadError::ShuttingDown.into()), st));
                    }
                }
            }
            let snap = st.src.cache.borrow_and_update().clone();
            if let Some(q) =
                snap.quarantine_of(&st.caller.selectors, st.caller.conn.instance.as_deref())
            {
                st.done = true;
                let e = WorkloadError::Quarantined(q.reason.clone());
                return Some((Err(e.into()), st));
            }
            let mine = identities(&snap, &st.caller, &st.want);
            if mine.is_empty() {
                if snap.synced {
                    st.done = true;
                    let e = if st.want.is_empty() {
                        st.caller.no_identity()
                    } else {
                        WorkloadError::NotYours(st.want.clone())
                    };
                    return Some((Err(e.into()), st));
                }
                (st.wait, st.sleep) = (true, LONGEST_SLEEP);
                continue;
            }
            st.wits.retain(&live(&snap));
            let now = st.src.clock.now();
            let mut got = Vec::with_capacity(mine.len());
            let mut sleep = LONGEST_SLEEP;
            for (of, spiffe_id, hint) in &mine {
                match st.wits.get(of, spiffe_id).await {
                    Ok(w) => {
                        sleep = sleep.min(w.refresh_at.duration_since(now).unwrap_or(RETRY));
                        got.push((w, hint.clone()));
                    }
                    Err(err) if st.last.is_none() && got.is_empty() => {
                        st.done = true;
                        let msg = format!("cannot obtain a WIT-SVID for {spiffe_id}: {err}");
                        return Some((Err(Status::unavailable(msg)), st));
                    }
                    Err(err) => {
                        tracing::warn!(%spiffe_id, %err, "cannot obtain a WIT-SVID");
                        sleep = RETRY;
                    }
                }
            }
            (st.wait, st.sleep) = (true, sleep.max(Duration::from_millis(100)));
            let key: Vec<String> = got.iter().map(|(w, _)| w.jti.clone()).collect();
            if st.last.as_ref() == Some(&key) {
                continue;
            }
            // The first send follows the attestation by microseconds;
            // every later one checks the process again.
            if st.last.is_some()
                && let Err(e) = st.caller.recheck()
            {
                st.done = true;
                return Some((Err(e.into()), st));
            }
            st.last = Some(key);
            return Some((Ok(response(&got)), st));
        }
    }))
}

/// `FetchWITBundles`: the trust domain's WIT authorities as a JWKS.
pub(crate) const WIT_BUNDLES: Build<Shared<Vec<JwtAuthority>>, WitBundlesResponse> = Build {
    key: |snap, _| Shared(snap.wit_authorities.clone()),
    message: |snap, _| WitBundlesResponse {
        bundles: HashMap::from([(
            snap.trust_domain.id_string(),
            lanyard_core::jwt::wit_jwks_for_workloads(&snap.wit_authorities).unwrap_or_default(),
        )]),
        more: false,
    },
};
