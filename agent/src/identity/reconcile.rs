//! Standing SVIDs: which entries are due (none yet, changed, half-life
//! reached, signed by a tainted CA), the CSR batch sent as an in-flight
//! call, and accepting what the server signed. On failure the still-valid
//! SVID is kept and the entry retried with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_core::backoff::retry_delay;
use lanyard_core::x509::SvidKey;
use lanyard_core::{EntryId, RegistrationEntry};
use lanyard_proto::server::{SignX509SvidsRequest, SignX509SvidsResponse, SvidCsr};

use super::manager::{BACKOFF_BASE, BACKOFF_MAX, CALL_TIMEOUT, Event, Manager};
use super::parts::Failure;
use super::signed::{Batch, accept_signed};

/// Most CSRs sent in one call.
const BATCH: usize = 500;
/// SVIDs due within this window of the one that triggered a renewal are
/// renewed in the same batch: one signing call and one snapshot instead of
/// many (jitter spreads renewals; this gathers them back into rounds).
const RENEW_BATCH_WINDOW: Duration = Duration::from_secs(1);

impl Manager {
    fn due(&self, now: SystemTime) -> Vec<RegistrationEntry> {
        self.standing
            .entries
            .iter()
            // Task-bound entries get SVIDs only inside a task.
            .filter(|e| !e.require_task)
            .filter(|e| match self.standing.svids.get(&e.id) {
                None => true,
                Some(s) => {
                    s.entry_revision != e.revision
                        || now + RENEW_BATCH_WINDOW >= s.renew_at
                        || !self.trust.issuer_ok(s.issuer_id.as_deref())
                }
            })
            .filter(|e| {
                self.standing
                    .failures
                    .get(&e.id)
                    .is_none_or(|f| now >= f.next_try)
            })
            .cloned()
            .collect()
    }

    fn fail(&mut self, id: &EntryId, now: SystemTime) {
        let expires = self
            .standing
            .svids
            .get(id)
            .map_or(now + BACKOFF_MAX, |s| s.not_after);
        let f = self.standing.failures.entry(id.clone()).or_insert(Failure {
            attempts: 0,
            next_try: now,
        });
        f.next_try = now + retry_delay(f.attempts, BACKOFF_BASE, BACKOFF_MAX, now, expires);
        f.attempts = f.attempts.saturating_add(1);
    }

    /// Sends the due entries' CSRs, unless a round is already in flight.
    pub(super) fn start_reconcile(&mut self) {
        if self.standing.signing > 0 {
            // Looked at again when the round in flight finishes.
            self.standing.reconcile_wanted = true;
            return;
        }
        self.standing.reconcile_wanted = false;
        let Some(client) = self.client.clone() else {
            return;
        };
        let now = self.clock.now();
        let due = self.due(now);
        for chunk in due.chunks(BATCH) {
            let mut keys = HashMap::new();
            let mut csrs = Vec::with_capacity(chunk.len());
            for e in chunk {
                let made = SvidKey::generate().and_then(|k| Ok((k.csr(&e.spiffe_id)?, k)));
                match made {
                    Ok((csr, key)) => {
                        csrs.push(SvidCsr {
                            entry_id: e.id.to_string(),
                            csr,
                        });
                        keys.insert(e.id.to_string(), (key, e.clone()));
                    }
                    Err(err) => tracing::error!(%err, "key or CSR generation failed"),
                }
            }
            let mut client = client.clone();
            let batch = Batch { keys, at: now };
            self.standing.signing += 1;
            self.inflight.push(Box::pin(async move {
                let call = client.sign_x509_svids(SignX509SvidsRequest { csrs });
                let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                    Err(_) => Err("timed out".to_owned()),
                };
                Event::Signed(batch, result)
            }));
        }
    }

    /// Applies a signing round's result.
    pub(super) fn finish_reconcile(
        &mut self,
        mut batch: Batch,
        result: Result<SignX509SvidsResponse, String>,
    ) {
        self.standing.signing = self.standing.signing.saturating_sub(1);
        let now = batch.at;
        match result {
            Err(err) => {
                tracing::warn!(%err, count = batch.keys.len(), "SVID signing failed; keeping current SVIDs");
                let ids: Vec<EntryId> = batch.keys.values().map(|(_, e)| e.id.clone()).collect();
                ids.iter().for_each(|id| self.fail(id, now));
            }
            Ok(resp) => {
                for r in resp.results {
                    let Some((key, entry)) = batch.keys.remove(&r.entry_id) else {
                        continue;
                    };
                    match r.svid.ok_or(r.error).and_then(|s| {
                        accept_signed(
                            &entry.id,
                            &entry.spiffe_id,
                            entry.revision,
                            entry.hint.clone(),
                            &key,
                            s.cert_chain,
                            self.clock.now(),
                        )
                    }) {
                        Ok(svid) => {
                            tracing::debug!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "SVID issued");
                            self.standing.failures.remove(&entry.id);
                            self.standing.svids.insert(entry.id.clone(), Arc::new(svid));
                        }
                        Err(err) => {
                            tracing::warn!(entry_id = %entry.id, %err, "server refused SVID");
                            self.fail(&entry.id, now);
                        }
                    }
                }
                let missing: Vec<EntryId> =
                    batch.keys.values().map(|(_, e)| e.id.clone()).collect();
                missing.iter().for_each(|id| self.fail(id, now));
            }
        }
        // Entries deleted while the round was in flight are not kept.
        let live: std::collections::HashSet<&EntryId> =
            self.standing.entries.iter().map(|e| &e.id).collect();
        self.standing.svids.retain(|id, _| live.contains(id));
        self.publish_snapshot();
        // A sync update that arrived meanwhile (new or changed entries) is
        // served now, not at the next deadline.
        if self.standing.signing == 0 && self.standing.reconcile_wanted {
            self.start_reconcile();
        }
    }
}
