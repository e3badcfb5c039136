//! Leases end with their task: at once when this server ends or revokes
//! the task (quarantines and operator revocations end tasks too), and by
//! a sweep for tasks another server ended, tasks that expired, and
//! revocations an authorization server did not take the first time.

use std::time::Duration;

use lanyard_core::audit::Kind;
use lanyard_core::clock::unix_secs;
use lanyard_core::revocation::RevokedKind;
use tokio::sync::watch;

use super::broker::{ASSERTION_TTL, Broker};
use super::lease::Lease;
use super::oauth::revoke_token;
use super::provider::{ClientAuth, ProviderKind};

/// How often leases are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Broker {
    /// Ends one lease (once, whichever server gets there first), revokes
    /// its token where the provider can, and records the end.
    pub async fn end_lease(&self, lease_id: &str, reason: &str) {
        match self.inner.leases.end(lease_id, reason).await {
            Ok(Some(lease)) => {
                let revoked = self.revoke(&lease).await;
                tracing::info!(lease_id, task_id = %lease.task_id, provider = %lease.provider, reason, revoked, "credential lease ended");
                let mut ended = lease.clone();
                ended.end_reason = reason.to_owned();
                self.note(
                    Kind::CredentialLeaseEnded,
                    &ended,
                    &if lease.revoke.is_some() {
                        format!(
                            "{reason}; token {}",
                            if revoked {
                                "revoked"
                            } else {
                                "not revoked yet (retried)"
                            }
                        )
                    } else {
                        reason.to_owned()
                    },
                )
                .await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(lease_id, err = %lanyard_core::error::report(&e), "credential lease could not be ended");
            }
        }
    }

    /// Revokes a lease's token at its authorization server; true when done
    /// (or nothing to do). The sealed token is dropped once revoked, or
    /// once it has expired anyway.
    async fn revoke(&self, lease: &Lease) -> bool {
        let inner = &self.inner;
        let Some(r) = &lease.revoke else {
            return true;
        };
        let now = unix_secs(inner.clock.now());
        let done = match self.try_revoke(lease, r).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(lease_id = %lease.lease_id, provider = %lease.provider, err = %e, "token revocation failed; retried by the sweep");
                false
            }
        };
        if (done || lease.expires_at <= now)
            && let Err(e) = inner.leases.forget_token(&lease.lease_id).await
        {
            tracing::warn!(lease_id = %lease.lease_id, err = %lanyard_core::error::report(&e), "revoked token could not be dropped");
        }
        done
    }

    pub(super) async fn try_revoke(
        &self,
        lease: &Lease,
        r: &super::lease::Revocable,
    ) -> Result<(), String> {
        let inner = &self.inner;
        let http = inner.http.as_ref().map_err(Clone::clone)?;
        let token = inner
            .credentials
            .open_for_lease(&r.sealed, &lease.lease_id)
            .map_err(|e| e.to_string())?;
        let token = std::str::from_utf8(token.expose()).map_err(|e| e.to_string())?;
        // The client authenticates as the workload (its task has ended, so
        // no task JWT-SVID is minted for it any more).
        let provider = inner.credentials.get(&lease.provider).await.ok();
        let assertion = match provider.as_ref().map(|p| &p.kind) {
            Some(ProviderKind::OauthExchange {
                audience,
                client_auth: ClientAuth::JwtSpiffe,
                ..
            }) => {
                let id =
                    lanyard_core::SpiffeId::new(&lease.spiffe_id).map_err(|e| e.to_string())?;
                Some(
                    inner
                        .tasks
                        .workload_jwt(&id, audience, ASSERTION_TTL)
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => None,
        };
        revoke_token(
            http,
            &r.url,
            token,
            assertion.as_deref().map(|a| (a, lease.spiffe_id.as_str())),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Ends every open lease of `task_id`.
    pub async fn end_task_leases(&self, task_id: &str, reason: &str) {
        let leases = match self.inner.leases.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(task_id, err = %lanyard_core::error::report(&e), "credential leases could not be listed");
                return;
            }
        };
        for l in leases
            .iter()
            .filter(|l| l.task_id == task_id && l.ended_at.is_none())
        {
            self.end_lease(&l.lease_id, reason).await;
        }
    }

    /// One pass: leases whose task ended or whose workload was revoked
    /// end, and those past their expiry (a lease never outlives its task);
    /// revocations not done yet are retried; old records go.
    pub async fn sweep(&self) {
        let inner = &self.inner;
        let leases = match inner.leases.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(err = %lanyard_core::error::report(&e), "credential leases could not be listed");
                return;
            }
        };
        let now = unix_secs(inner.clock.now());
        for l in &leases {
            if l.ended_at.is_some() {
                if l.revoke.is_some() {
                    self.revoke(l).await;
                }
                continue;
            }
            // In memory, no store read per lease: every server holds the
            // revocation set (a task ended or revoked anywhere is in it until
            // its end), and a lease never outlives its task's end.
            let task_ended = inner.revocations.get(RevokedKind::Task, &l.task_id);
            let workload_revoked = inner
                .revocations
                .get(RevokedKind::SpiffeId, &l.spiffe_id)
                .is_some_and(|r| r.revoked_at >= l.issued_at);
            if let Some(r) = task_ended {
                self.end_lease(&l.lease_id, &r.reason).await;
            } else if workload_revoked {
                self.end_lease(&l.lease_id, "the workload's SVIDs were revoked")
                    .await;
            } else if l.expires_at <= now {
                self.end_lease(&l.lease_id, "expired").await;
            }
        }
        if let Err(e) = inner.leases.prune().await {
            tracing::warn!(err = %lanyard_core::error::report(&e), "credential leases could not be pruned");
        }
    }

    /// Ends leases as tasks end, and sweeps (at once when something is
    /// revoked, at most once a second), until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut ends = self.inner.tasks.ends();
        let mut revoked = self.inner.revocations.subscribe();
        let mut last_sweep = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = revoked.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if last_sweep.elapsed() >= Duration::from_secs(1) {
                        self.sweep().await;
                        last_sweep = tokio::time::Instant::now();
                    }
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                ended = ends.recv() => match ended {
                    Ok(id) => {
                        let reason = match self.inner.tasks.get(id.as_str()).await {
                            Ok(t) if t.end_reason.is_empty() => format!("task {}", t.state.as_str()),
                            Ok(t) => format!("task {}: {}", t.state.as_str(), t.end_reason),
                            Err(_) => "task ended".to_owned(),
                        };
                        self.end_task_leases(id.as_str(), &reason).await;
                    }
                    // Missed some: the sweep finds them.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.sweep().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    self.sweep().await;
                    last_sweep = tokio::time::Instant::now();
                }
            }
        }
    }
}
