//! Follows the store's change feed and brings this server's in-memory
//! views (entries, authorities, policies, task indexes, agent bans) in step
//! with it, which wakes the agents' sync streams. With one server on sled
//! the feed only repeats its own changes; with several servers on one
//! PostgreSQL database it is how a change made through one reaches the
//! agents of every other.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::error::{BoxError, report};
use tokio::sync::watch;

use crate::agents::Agents;
use crate::ca::Ca;
use crate::policy::Policies;
use crate::registry::Registry;
use crate::store::{ChangeKind, Feed, Store};
use crate::tasks::Tasks;

/// Longest wait between reads of the feed when no wake-up arrives (a
/// wake-up lost with a database connection costs at most this).
const POLL: Duration = Duration::from_secs(2);
/// Changes read at once.
const BATCH: usize = 1000;

/// Whether a change moves the bundle (any authority, or its sequence).
fn moves_bundle(kind: ChangeKind, key: &str) -> bool {
    kind == ChangeKind::Authority || (kind == ChangeKind::Counter && key == crate::ca::SEQUENCE)
}

/// The views a change can touch.
#[derive(Clone)]
pub struct Views {
    /// Entries.
    pub registry: Registry,
    /// Agent records.
    pub agents: Agents,
    /// Authorities and bundle.
    pub ca: Ca,
    /// Policy sets.
    pub policies: Policies,
    /// Task indexes.
    pub tasks: Tasks,
    /// Revocations, CRLs and quarantines.
    pub enforce: crate::enforce::Enforcement,
    /// Calls held for approval.
    pub approvals: crate::approvals::Approvals,
}

impl Views {
    async fn apply(&self, kind: ChangeKind, key: &str) -> Result<(), BoxError> {
        let revocations = &self.enforce.revocations;
        match kind {
            ChangeKind::Entry => self.registry.refresh(key).await?,
            ChangeKind::Agent => self.agents.refresh(key).await?,
            _ if moves_bundle(kind, key) => self.ca.refresh().await?,
            ChangeKind::Authority | ChangeKind::Counter => {}
            ChangeKind::Policy => self.policies.refresh().await?,
            ChangeKind::Task => self.tasks.refresh(key).await?,
            ChangeKind::Revocation => revocations.refresh(key).await?,
            ChangeKind::Issued => {
                revocations.issued_arrived(key).await?;
            }
            ChangeKind::Crl => revocations.refresh_crls().await?,
            ChangeKind::Quarantine => self.enforce.quarantines.reload().await?,
            ChangeKind::Approval => self.approvals.refresh(key).await?,
        }
        Ok(())
    }

    async fn reload(&self) -> Result<(), BoxError> {
        self.registry.reload().await?;
        self.ca.refresh().await?;
        self.policies.refresh().await?;
        self.tasks.reload().await?;
        self.enforce.revocations.reload().await?;
        self.enforce.quarantines.reload().await?;
        self.approvals.reload().await?;
        self.agents.wake();
        Ok(())
    }
}

/// Follows the feed from `from` (read before the views were loaded) until
/// `shutdown` turns true.
pub async fn run(
    store: Arc<dyn Store>,
    views: Views,
    from: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wake = store.wake();
    let mut pos = from;
    let mut failures = 0u32;
    loop {
        match catch_up(store.as_ref(), &views, &mut pos).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %report(e.as_ref()), position = pos, "following the change feed failed; retrying");
            }
        }
        let wait = if failures > 0 {
            Duration::from_millis(100 << failures.min(5))
        } else {
            POLL
        };
        tokio::select! {
            r = wake.changed() => if r.is_err() { return },
            () = tokio::time::sleep(wait) => {}
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// Applies every change after `pos`, moving `pos`; a change is applied by
/// reading the record's current state, so a batch applies each key once.
async fn catch_up(store: &dyn Store, views: &Views, pos: &mut u64) -> Result<(), BoxError> {
    loop {
        match store.changes_since(*pos, BATCH).await? {
            Feed::Changes(changes) if changes.is_empty() => return Ok(()),
            Feed::Changes(changes) => {
                let last = changes.last().map_or(*pos, |c| c.seq);
                let keys: BTreeSet<(ChangeKind, String)> =
                    changes.into_iter().map(|c| (c.kind, c.key)).collect();
                let mut authority_done = false;
                for (kind, key) in keys {
                    if moves_bundle(kind, &key) && std::mem::replace(&mut authority_done, true) {
                        continue;
                    }
                    views.apply(kind, &key).await?;
                }
                *pos = last;
            }
            Feed::Gap { last } => {
                tracing::info!(
                    position = *pos,
                    last,
                    "change feed gap: reloading every view"
                );
                views.reload().await?;
                *pos = last;
                return Ok(());
            }
        }
    }
}
