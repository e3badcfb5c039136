//! The owner's side of enforcement: the revocation set and CRLs pushed by
//! the server, quarantines (the server's, and those this agent decided on
//! its own while deciding tool calls), and the reports that go back: denied
//! calls, and the SVIDs of a quarantined workload to revoke.

use std::sync::Arc;

use lanyard_core::clock::{from_unix_secs, unix_secs};
use lanyard_core::revocation::{CredentialRef, Revocation, RevocationSet, RevokedKind};
use lanyard_core::x509::BACKDATE;
use lanyard_proto::server::{Denial, ReportEnforcementRequest, RevokeHeldRequest, SyncUpdate};
use lanyard_proto::types;

use super::manager::{CALL_TIMEOUT, Event, Manager};
use super::parts::Failure;
use crate::cache::Quarantined;
use crate::workload_scope::WorkloadScope;

/// Most denials sent in one report.
const REPORT_BATCH: usize = 500;
/// Most reports kept while the server is unreachable.
const MAX_PENDING: usize = 100_000;

/// What a quarantine record from the server means on this node.
fn from_server(q: types::Quarantine, me: &str) -> Quarantined {
    let entry = q.scope == "entry";
    let here = q.node.is_empty() || q.node == me;
    Quarantined {
        whole_id: entry || (q.task_id.is_empty() && here),
        scope_entry: entry,
        id: q.id,
        spiffe_id: q.spiffe_id,
        task_id: Some(q.task_id).filter(|t| !t.is_empty()),
        instances: Vec::new(),
        workloads: Vec::new(),
        reason: q.reason,
    }
}

impl Manager {
    /// Sends SIGSTOP to quarantined processes (`quarantine.freeze`).
    pub fn freeze_quarantined(mut self, on: bool) -> Self {
        self.enforce.freeze = on;
        self
    }

    /// Applies the revocations, CRLs and quarantines of a sync update.
    pub(super) fn apply_enforcement(&mut self, update: &mut SyncUpdate) {
        let now = self.clock.now();
        // The set is copied only when this update changes it: most
        // updates (entries, bundle, CRLs re-signed) do not, and copying
        // thousands of revocations per update was most of the agent's CPU
        // under load.
        let mut changed = false;
        let mut next_set = None;
        if update.revocations_reset
            || !update.revocations.is_empty()
            || self.enforce.revocations.has_expired(now)
        {
            let mut set = if update.revocations_reset {
                RevocationSet::new()
            } else {
                (*self.enforce.revocations).clone()
            };
            changed = update.revocations_reset && !self.enforce.revocations.is_empty();
            for r in std::mem::take(&mut update.revocations) {
                match Revocation::try_from(r) {
                    Ok(r) => changed |= set.insert(r),
                    Err(e) => tracing::warn!(err = %e, "ignoring invalid revocation from server"),
                }
            }
            changed |= set.prune(now) > 0;
            next_set = Some(set);
        }
        let crls = std::mem::take(&mut update.crls);
        if *self.enforce.crls != crls {
            self.enforce.crls = Arc::new(crls);
            changed = true;
        }
        if changed {
            if let Some(set) = next_set {
                self.enforce.revocations = Arc::new(set);
            }
            self.enforce.generation += 1;
            tracing::info!(
                revocations = self.enforce.revocations.len(),
                crls = self.enforce.crls.len(),
                "revocations updated"
            );
            self.drop_revoked();
        }
        let me = self
            .creds
            .identity()
            .map(|i| i.spiffe_id.to_string())
            .unwrap_or_default();
        let mut next: Vec<Quarantined> = std::mem::take(&mut update.quarantines)
            .into_iter()
            .map(|q| from_server(q, &me))
            .collect();
        let restored = std::mem::take(&mut self.enforce.restored);
        for q in &mut next {
            // Keep the instances resolved when it was first seen (before a
            // restart too: acted on then, so not again).
            if let Some(old) = self.enforce.server.iter().find(|o| o.id == q.id) {
                q.instances = old.instances.clone();
                q.workloads = old.workloads.clone();
            } else if let Some(old) = restored.iter().find(|o| o.id == q.id) {
                q.instances = old.instances.clone();
                q.workloads = old.workloads.clone();
                self.enforce.acted.insert(q.id.clone());
            }
            // The server's record replaces a local one for the same task.
            if let Some(pos) = self
                .enforce
                .local
                .iter()
                .position(|l| l.task_id.is_some() && l.task_id == q.task_id)
            {
                let local = self.enforce.local.remove(pos);
                q.instances.extend(local.instances);
                q.workloads.extend(local.workloads);
                self.enforce.acted.insert(q.id.clone());
            }
        }
        let released: Vec<String> = self
            .enforce
            .server
            .iter()
            .filter(|o| !next.iter().any(|q| q.id == o.id))
            .map(|o| o.id.clone())
            .collect();
        for id in released {
            tracing::info!(quarantine = %id, "quarantine released");
            self.enforce.acted.remove(&id);
        }
        self.enforce.server = next;
        self.act_on_quarantines();
        self.save_quarantines();
    }

    /// Reads the quarantines in force before a restart: local ones apply
    /// again at once; the server's keep their instances until its list
    /// arrives (a process quarantined before the restart stays refused).
    pub(super) fn restore_quarantines(&mut self) {
        let Some(bytes) = self.storage.load_quarantined() else {
            return;
        };
        match serde_json::from_slice::<Vec<Quarantined>>(&bytes) {
            Ok(all) => {
                for q in all {
                    self.enforce.acted.insert(q.id.clone());
                    if q.id.starts_with("local:") {
                        self.enforce.local.push(q);
                    } else {
                        self.enforce.restored.push(q);
                    }
                }
                tracing::info!(
                    local = self.enforce.local.len(),
                    server = self.enforce.restored.len(),
                    "quarantined instances restored"
                );
            }
            Err(e) => tracing::error!(%e, "quarantine file does not parse; ignored"),
        }
    }

    /// Writes the quarantines in force (with their instances).
    fn save_quarantines(&mut self) {
        let all = self.enforce.all();
        match serde_json::to_vec(&all) {
            Ok(b) if b == self.enforce.saved => {}
            Ok(b) => {
                if let Err(e) = self.storage.save_quarantined(&b) {
                    tracing::error!(%e, "cannot persist quarantined instances");
                }
                self.enforce.saved = b;
            }
            Err(e) => tracing::error!(%e, "cannot encode quarantined instances"),
        }
    }

    /// Prunes expired revocations (called from the task watch).
    pub(super) fn prune_revocations(&mut self) {
        let now = self.clock.now();
        if self
            .enforce
            .revocations
            .items()
            .iter()
            .any(|r| r.expires_at <= unix_secs(now))
        {
            let mut set = (*self.enforce.revocations).clone();
            set.prune(now);
            self.enforce.revocations = Arc::new(set);
            self.enforce.generation += 1;
            self.publish_snapshot();
        }
    }

    /// Standing SVIDs a revocation names are dropped and signed again;
    /// tasks whose ID is revoked end.
    fn drop_revoked(&mut self) {
        let set = self.enforce.revocations.clone();
        let revoked: Vec<(lanyard_core::EntryId, Option<u64>)> = self
            .standing
            .svids
            .iter()
            .filter_map(|(id, s)| {
                let r = set.check(&CredentialRef {
                    spiffe_id: s.spiffe_id.as_str(),
                    issued_at: s.not_before + BACKDATE,
                    serial: Some(&s.serial),
                    jwt_id: None,
                    task_id: None,
                })?;
                Some((
                    id.clone(),
                    (r.kind == RevokedKind::SpiffeId).then_some(r.revoked_at),
                ))
            })
            .collect();
        for (id, revoked_at) in revoked {
            tracing::info!(entry_id = %id, "standing SVID revoked; signing a new one");
            self.standing.svids.remove(&id);
            // A SPIFFE ID revocation covers what was issued up to its
            // second: the new SVID is issued after it.
            let next_try = revoked_at.map_or(self.clock.now(), |t| from_unix_secs(t + 1));
            self.standing.failures.insert(
                id,
                Failure {
                    attempts: 0,
                    next_try,
                },
            );
        }
        let ended: Vec<String> = self
            .held
            .tasks
            .iter()
            .filter(|t| set.get(RevokedKind::Task, t.id()).is_some())
            .map(|t| t.id().to_owned())
            .collect();
        for id in ended {
            self.end_task(&id, "revoked", false);
        }
    }

    /// A quarantine this agent decided (too many denials, or a
    /// `@quarantine` policy) before the server knows of it.
    pub(super) fn local_quarantine(&mut self, spiffe_id: String, task_id: String, reason: String) {
        let exists = self
            .enforce
            .all()
            .iter()
            .any(|q| q.task_id.as_deref() == Some(task_id.as_str()));
        if exists {
            return;
        }
        tracing::warn!(%spiffe_id, %task_id, %reason, "quarantined by this node's decisions");
        self.enforce.local.push(Quarantined {
            id: format!("local:{task_id}"),
            spiffe_id,
            task_id: Some(task_id),
            whole_id: false,
            scope_entry: false,
            instances: Vec::new(),
            workloads: Vec::new(),
            reason,
        });
        self.act_on_quarantines();
        self.save_quarantines();
    }

    /// For each quarantine not yet acted on: the instances it holds on
    /// this node lose their tasks; their SVIDs are reported for revocation
    /// (standing ones are signed afresh for everyone else); optionally the
    /// processes are stopped.
    fn act_on_quarantines(&mut self) {
        let pending: Vec<(bool, usize)> = self
            .enforce
            .server
            .iter()
            .enumerate()
            .map(|(i, _)| (true, i))
            .chain(
                self.enforce
                    .local
                    .iter()
                    .enumerate()
                    .map(|(i, _)| (false, i)),
            )
            .collect();
        for (server, i) in pending {
            let q = if server {
                self.enforce.server.get(i)
            } else {
                self.enforce.local.get(i)
            };
            let Some(q) = q.filter(|q| !self.enforce.acted.contains(&q.id)).cloned() else {
                continue;
            };
            self.enforce.acted.insert(q.id.clone());
            let held: Vec<_> = self
                .held
                .tasks
                .iter()
                .filter(|t| {
                    q.task_id.as_deref() == Some(t.id())
                        || (q.whole_id && t.record.grant.spiffe_id.as_str() == q.spiffe_id)
                })
                .cloned()
                .collect();
            let mut instances: Vec<(i32, u64)> = held
                .iter()
                .map(|t| (t.owner.pid, t.owner.start_time))
                .collect();
            // The workloads those processes belong to: their forks and
            // restarts are refused the quarantined identity too.
            let mut workloads: Vec<WorkloadScope> =
                held.iter().filter_map(|t| t.owner.scope.clone()).collect();
            if let Some(t) = &q.task_id
                && instances.is_empty()
                && let Some((_, owner, scope)) =
                    self.enforce.recent_owners.iter().find(|(id, ..)| id == t)
            {
                instances.push(*owner);
                workloads.extend(scope.clone());
            }
            // Every task of those instances goes, whatever its entry.
            let doomed: Vec<_> = self
                .held
                .tasks
                .iter()
                .filter(|t| instances.contains(&(t.owner.pid, t.owner.start_time)))
                .cloned()
                .collect();
            let reason = format!("quarantined: {}", q.reason);
            // Ending each task reports its SVID for revocation.
            for t in &doomed {
                self.end_task(t.id(), "quarantined", true);
            }
            if !instances.is_empty() || q.whole_id {
                let standing: Vec<_> = self
                    .standing
                    .svids
                    .iter()
                    .filter(|(_, s)| s.spiffe_id.as_str() == q.spiffe_id)
                    .map(|(id, s)| (id.clone(), s.chain.first().cloned()))
                    .collect();
                for (id, leaf) in standing {
                    if let Some(leaf) = leaf {
                        self.enforce.revoke.push((leaf, reason.clone()));
                    }
                    self.standing.svids.remove(&id);
                    tracing::info!(entry_id = %id, "standing SVID of a quarantined workload revoked; signing a new one");
                }
            }
            instances.sort_unstable();
            instances.dedup();
            if self.enforce.freeze {
                for (pid, _) in &instances {
                    let r = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGSTOP,
                    );
                    tracing::warn!(
                        pid,
                        ok = r.is_ok(),
                        "quarantined process stopped (quarantine.freeze)"
                    );
                }
            }
            let slot = if server {
                self.enforce.server.get_mut(i)
            } else {
                self.enforce.local.get_mut(i)
            };
            workloads.sort_unstable();
            workloads.dedup();
            if !workloads.is_empty() {
                let scopes: Vec<String> = workloads.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    quarantine = %q.id,
                    spiffe_id = %q.spiffe_id,
                    workloads = %scopes.join(", "),
                    "quarantine holds these workloads on this node"
                );
            }
            if let Some(slot) = slot {
                slot.instances.extend(instances);
                slot.workloads.extend(workloads);
            }
        }
        self.publish_snapshot();
        self.start_reconcile();
        self.flush_reports();
    }

    /// Queues a held certificate for revocation.
    pub(super) fn queue_revoke(&mut self, leaf: Vec<u8>, reason: String) {
        if self.enforce.revoke.len() < MAX_PENDING {
            self.enforce.revoke.push((leaf, reason));
        }
        self.flush_reports();
    }

    /// Queues a denied call for the server.
    pub(super) fn queue_denial(&mut self, d: Denial) {
        if self.enforce.denials.len() < MAX_PENDING {
            self.enforce.denials.push(d);
        }
        self.flush_reports();
    }

    /// Sends queued denials and revocations when connected and idle.
    pub(super) fn flush_reports(&mut self) {
        if self.enforce.reporting
            || (self.enforce.denials.is_empty() && self.enforce.revoke.is_empty())
        {
            return;
        }
        let Some(mut client) = self.client.clone() else {
            return;
        };
        let n = self.enforce.denials.len().min(REPORT_BATCH);
        let denials: Vec<Denial> = self.enforce.denials.drain(..n).collect();
        let m = self.enforce.revoke.len().min(REPORT_BATCH);
        let revoke: Vec<(Vec<u8>, String)> = self.enforce.revoke.drain(..m).collect();
        self.enforce.reporting = true;
        self.inflight.push(Box::pin(async move {
            let mut failed_denials = Vec::new();
            let mut failed_revoke = Vec::new();
            if !denials.is_empty() {
                let call = client.report_enforcement(ReportEnforcementRequest {
                    denials: denials.clone(),
                });
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(_)) => {}
                    // An older server: the server-wide denial count is off
                    // (this node's own trigger still quarantines).
                    Ok(Err(s)) if crate::upstream::client::server_lacks(&s, "ReportEnforcement") => {}
                    _ => failed_denials = denials,
                }
            }
            // One call per reason keeps each reason with its certificates.
            let mut by_reason: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
            for (cert, reason) in revoke {
                match by_reason.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, certs)) => certs.push(cert),
                    None => by_reason.push((reason, vec![cert])),
                }
            }
            for (reason, certs) in by_reason {
                let call = client.revoke_held(RevokeHeldRequest {
                    certs: certs.clone(),
                    reason: reason.clone(),
                });
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) if crate::upstream::client::server_lacks(&s, "RevokeHeld") => {}
                    // Refused (expired, not ours): nothing to retry.
                    Ok(Err(s)) if s.code() != tonic::Code::Unavailable => {
                        tracing::warn!(code = ?s.code(), message = s.message(), "server refused to revoke held SVIDs");
                    }
                    _ => failed_revoke.extend(certs.into_iter().map(|c| (c, reason.clone()))),
                }
            }
            Event::Reported {
                denials: failed_denials,
                revoke: failed_revoke,
            }
        }));
    }

    /// A report finished; what failed is queued again.
    pub(super) fn finish_report(&mut self, denials: Vec<Denial>, revoke: Vec<(Vec<u8>, String)>) {
        self.enforce.reporting = false;
        let retry = !denials.is_empty() || !revoke.is_empty();
        self.enforce.denials.splice(0..0, denials);
        self.enforce.revoke.splice(0..0, revoke);
        if retry {
            tracing::warn!(
                pending = self.enforce.denials.len() + self.enforce.revoke.len(),
                "enforcement report failed; retrying after reconnect"
            );
            return;
        }
        self.flush_reports();
    }
}
