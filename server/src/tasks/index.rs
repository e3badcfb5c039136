//! The task indexes the server keeps beside the store: revoked, not yet
//! expired tasks per agent (pushed to agents) and the active descendants
//! of each task (so an end cascades without scanning the store); kept
//! current from the change feed, rebuilt after a gap, pruned by age.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::task::{TaskRecord, TaskState};
use lanyard_core::{SpiffeId, TaskId};

use super::error::TaskServiceError;
use super::service::Tasks;
use crate::store::Store;

type Indexes = (
    HashMap<SpiffeId, BTreeMap<TaskId, u64>>,
    HashMap<TaskId, Vec<TaskId>>,
);

/// How much the task indexes hold in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskFootprint {
    /// Agents with revoked, unexpired tasks listed.
    pub agents_with_ended: usize,
    /// Revoked, unexpired tasks listed for their agents.
    pub ended: usize,
    /// Active tasks with delegated descendants.
    pub ancestors: usize,
    /// Links from those ancestors to their descendants.
    pub descendants: usize,
}

/// Adds one stored task to the indexes (again: each ancestor lists a
/// descendant once).
fn index_one(
    t: &TaskRecord,
    now: u64,
    ended: &mut HashMap<SpiffeId, BTreeMap<TaskId, u64>>,
    descendants: &mut HashMap<TaskId, Vec<TaskId>>,
) {
    if t.state_at(now) == TaskState::Active {
        for a in &t.grant.chain {
            let list = descendants.entry(a.task_id.clone()).or_default();
            if !list.contains(&t.grant.task_id) {
                list.push(t.grant.task_id.clone());
            }
        }
    }
    if t.state == TaskState::Revoked && t.grant.not_after > now {
        ended
            .entry(t.agent_id.clone())
            .or_default()
            .insert(t.grant.task_id.clone(), t.grant.not_after);
    }
}

impl Tasks {
    /// The ended-task and descendant indexes, built from the store.
    pub(super) async fn indexes(
        store: &dyn Store,
        clock: &dyn Clock,
    ) -> Result<Indexes, TaskServiceError> {
        let now = unix_secs(clock.now());
        let mut ended: HashMap<SpiffeId, BTreeMap<TaskId, u64>> = HashMap::new();
        let mut descendants: HashMap<TaskId, Vec<TaskId>> = HashMap::new();
        for t in store.list_tasks().await? {
            index_one(&t, now, &mut ended, &mut descendants);
        }
        Ok((ended, descendants))
    }

    /// Rebuilds the indexes (after a gap in the change feed).
    pub async fn reload(&self) -> Result<(), TaskServiceError> {
        let (ended, descendants) =
            Self::indexes(self.inner.store.as_ref(), self.inner.clock.as_ref()).await?;
        *self.inner.ended.lock().unwrap_or_else(|p| p.into_inner()) = ended;
        *self
            .inner
            .descendants
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = descendants;
        self.inner.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// After a change to task `id` on the feed (possibly made through
    /// another server): indexes a new delegated task under its ancestors
    /// and a revoked one for its agent's stream.
    pub async fn refresh(&self, id: &str) -> Result<(), TaskServiceError> {
        let Ok(id) = TaskId::new(id) else {
            return Ok(());
        };
        let Some(t) = self.inner.store.get_task(&id).await? else {
            return Ok(());
        };
        let now = unix_secs(self.inner.clock.now());
        // A delegated task made through another server while an ancestor
        // ended: it goes with the ancestor.
        if !t.grant.chain.is_empty()
            && t.state_at(now) == TaskState::Active
            && self.revoke_if_orphaned(&t).await?.is_some()
        {
            return Ok(());
        }
        let revoked_before = self.is_indexed_revoked(&t);
        {
            let mut ended = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
            let mut descendants = self
                .inner
                .descendants
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            index_one(&t, now, &mut ended, &mut descendants);
        }
        if !revoked_before && self.is_indexed_revoked(&t) {
            self.inner.changes.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Revokes the delegated task `t` when one of its ancestors is no
    /// longer active in the store; returns that ancestor. A child inserted
    /// while its parent ended (on this server or another) cannot outlive
    /// it: its begin sees the end here, or the end's cascade finds it (or,
    /// across servers, the feed brings it here and this check runs again).
    pub(super) async fn revoke_if_orphaned(
        &self,
        t: &TaskRecord,
    ) -> Result<Option<TaskId>, TaskServiceError> {
        let now = unix_secs(self.inner.clock.now());
        for a in &t.grant.chain {
            let live = self
                .inner
                .store
                .get_task(&a.task_id)
                .await?
                .is_some_and(|p| p.state_at(now) == TaskState::Active);
            if !live {
                match self
                    .set_state(
                        "server",
                        &t.grant.task_id,
                        TaskState::Revoked,
                        &format!("ancestor task {} ended", a.task_id),
                    )
                    .await
                {
                    Ok(_) | Err(TaskServiceError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                self.inner.changes.send_modify(|v| *v += 1);
                return Ok(Some(a.task_id.clone()));
            }
        }
        Ok(None)
    }

    pub(super) fn is_indexed_revoked(&self, t: &TaskRecord) -> bool {
        self.inner
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&t.agent_id)
            .is_some_and(|m| m.contains_key(&t.grant.task_id))
    }

    /// Revoked tasks held by `agent` that have not expired.
    pub fn ended_for(&self, agent: &SpiffeId) -> Vec<String> {
        let now = unix_secs(self.inner.clock.now());
        let mut ended = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tasks) = ended.get_mut(agent) else {
            return vec![];
        };
        tasks.retain(|_, exp| *exp > now);
        tasks.keys().map(ToString::to_string).collect()
    }

    /// What the indexes hold: it returns to zero once every task has
    /// expired and [`Tasks::prune`] has run, however many tasks came and
    /// went.
    pub fn footprint(&self) -> TaskFootprint {
        let ended = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
        let descendants = self
            .inner
            .descendants
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        TaskFootprint {
            agents_with_ended: ended.len(),
            ended: ended.values().map(BTreeMap::len).sum(),
            ancestors: descendants.len(),
            descendants: descendants.values().map(Vec::len).sum(),
        }
    }

    /// Removes tasks that ended more than `retention` ago and expired
    /// delegation tokens, and drops expired tasks from the in-memory
    /// indexes; returns how many records went.
    pub async fn prune(&self, retention: Duration) -> Result<usize, TaskServiceError> {
        let now = unix_secs(self.inner.clock.now());
        let cutoff = now.saturating_sub(retention.as_secs());
        let mut n = 0;
        let mut active = std::collections::HashSet::new();
        for t in self.inner.store.list_tasks().await? {
            if t.grant.not_after < cutoff {
                self.inner.store.delete_task(&t.grant.task_id).await?;
                n += 1;
            } else if t.state_at(now) == TaskState::Active {
                active.insert(t.grant.task_id);
            }
        }
        self.inner
            .descendants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|ancestor, _| active.contains(ancestor));
        // Revoked tasks stay listed for their agent only until they expire
        // (an agent that never asks again must not keep them forever).
        self.inner
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, tasks| {
                tasks.retain(|_, exp| *exp > now);
                !tasks.is_empty()
            });
        for d in self.inner.store.list_delegations().await? {
            if d.expires_at <= now
                && self
                    .inner
                    .store
                    .take_delegation(&d.token_hash)
                    .await?
                    .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }
}
