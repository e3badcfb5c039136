//! The owner's side of tasks: begin (forward, check, hold), rotate task
//! SVIDs inside the task's window, end on EndTask, expiry, revocation or
//! holder exit, and keep the bindings in the data directory so that they
//! survive an agent restart (re-checked against the live process, SVIDs
//! minted again).

use std::sync::Arc;

use lanyard_core::backoff::retry_delay;
use lanyard_core::task::TaskRecord;
use lanyard_core::x509::SvidKey;
use lanyard_proto::server::{
    BeginTaskRequest, EndTaskRequest, SignTaskSvidRequest, SignTaskSvidResponse,
};
use tokio::sync::oneshot;

use super::CommandError;
use super::manager::{BACKOFF_BASE, BACKOFF_MAX, CALL_TIMEOUT, Event, Manager};
use super::tasks::{
    ActiveTask, BeginRequest, BegunTask, PendingBegin, PersistedTask, TaskOwner, TaskWork,
    accept_task_svid,
};

fn timed_out() -> CommandError {
    CommandError::Server(tonic::Status::unavailable(
        "the server did not answer in time",
    ))
}

impl Manager {
    /// Loads the task bindings kept across a restart; tasks whose holder
    /// is gone are ended (reported to the server once connected).
    pub(super) fn restore_tasks(&mut self) {
        let Some(bytes) = self.storage.load_tasks() else {
            return;
        };
        let stored: Vec<PersistedTask> = match serde_json::from_slice(&bytes) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(%e, "task bindings file does not parse; moved aside, tasks dropped");
                self.storage.quarantine_tasks_file();
                return;
            }
        };
        let now = lanyard_core::clock::unix_secs(self.clock.now());
        for p in stored {
            let owner = TaskOwner {
                pid: p.pid,
                start_time: p.start_time,
                instance: None,
                scope: p.scope.clone(),
            };
            let id = p.record.grant.task_id.to_string();
            if p.record.grant.not_after <= now {
                continue;
            }
            if !owner.alive() {
                tracing::info!(task_id = %id, pid = p.pid, "task holder exited while the agent was down");
                self.held.pending_ends.push((id, "process exited"));
                continue;
            }
            tracing::info!(task_id = %id, pid = p.pid, "task binding restored");
            self.held.tasks.push(Arc::new(ActiveTask {
                record: p.record,
                owner,
                svid: None,
                exe_sha256: p.exe_sha256,
            }));
        }
        self.held
            .tasks
            .sort_by_key(|t| std::cmp::Reverse(t.record.created_at));
    }

    /// Hands the current bindings to the writer task (which coalesces
    /// bursts and writes off the owner's loop).
    fn save_tasks(&self) {
        let stored: Vec<PersistedTask> = self
            .held
            .tasks
            .iter()
            .map(|t| PersistedTask {
                record: t.record.clone(),
                pid: t.owner.pid,
                start_time: t.owner.start_time,
                exe_sha256: t.exe_sha256.clone(),
                scope: t.owner.scope.clone(),
            })
            .collect();
        match serde_json::to_vec(&stored) {
            Ok(b) => {
                self.held.task_file.send_replace(Some(Arc::new(b)));
            }
            Err(e) => tracing::error!(%e, "cannot encode task bindings"),
        }
    }

    /// Forwards a BeginTask to the server as an in-flight call.
    pub(super) fn start_begin(
        &mut self,
        req: BeginRequest,
        reply: oneshot::Sender<Result<BegunTask, CommandError>>,
    ) {
        let Some(mut client) = self.client.clone() else {
            let _ = reply.send(Err(CommandError::NotConnected));
            return;
        };
        let Some(first) = req.entries.first() else {
            let _ = reply.send(Err(CommandError::BadAnswer(
                "no entry to begin under".into(),
            )));
            return;
        };
        // The server signs the key, not the CSR's name: any candidate's ID
        // will do here.
        let made = SvidKey::generate().and_then(|k| Ok((k.csr(&first.spiffe_id)?, k)));
        let (csr, key) = match made {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(CommandError::BadAnswer(format!("key generation: {e}"))));
                return;
            }
        };
        let msg = BeginTaskRequest {
            entry_id: first.id.to_string(),
            candidate_entry_ids: if req.entries.len() > 1 {
                req.entries.iter().map(|e| e.id.to_string()).collect()
            } else {
                vec![]
            },
            spec: Some(lanyard_proto::types::TaskSpec::from(&req.spec)),
            csr,
            jwt_audiences: req.jwt_audiences.clone(),
            selectors: req.selectors.clone(),
            exe_path: req.exe_path.clone(),
            exe_sha256: req.exe_sha256.clone(),
        };
        self.inflight.push(Box::pin(async move {
            let result = match tokio::time::timeout(CALL_TIMEOUT, client.begin_task(msg)).await {
                Err(_) => Err(timed_out()),
                Ok(Err(s)) => Err(CommandError::Server(s)),
                Ok(Ok(r)) => Ok(r.into_inner()),
            };
            Event::Begun(Box::new(PendingBegin {
                req,
                key,
                reply,
                result,
            }))
        }));
    }

    /// Checks the server's answer to a BeginTask and holds the task.
    pub(super) fn finish_begin(&mut self, p: PendingBegin) {
        let PendingBegin {
            req,
            key,
            reply,
            result,
        } = p;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let now = self.clock.now();
        let checked = (|| {
            let record = TaskRecord::try_from(resp.task.ok_or("no task in the answer")?)
                .map_err(|e| e.to_string())?;
            let entry = req
                .entries
                .iter()
                .find(|e| e.id == record.entry_id && e.spiffe_id == record.grant.spiffe_id)
                .ok_or("the task is for an entry the caller did not ask under")?;
            let chain = resp.svid.ok_or("no SVID in the answer")?.cert_chain;
            let svid = accept_task_svid(&record, entry.revision, &key, chain, now)?;
            Ok::<_, String>((record, svid))
        })();
        let (record, svid) = match checked {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(err = %e, "refused the server's task answer");
                let _ = reply.send(Err(CommandError::BadAnswer(e)));
                return;
            }
        };
        let task = Arc::new(ActiveTask {
            record,
            owner: req.owner,
            svid: Some(Arc::new(svid)),
            exe_sha256: req.exe_sha256,
        });
        tracing::info!(task_id = %task.id(), pid = task.owner.pid, spiffe_id = %task.record.grant.spiffe_id, "task begun");
        self.held.task_work.insert(
            task.id().to_owned(),
            TaskWork {
                signing: false,
                attempts: 0,
                next_try: now,
            },
        );
        self.held.tasks.insert(0, task.clone());
        self.save_tasks();
        self.publish_snapshot();
        let jwt = Some(resp.jwt).filter(|j| !j.is_empty());
        if reply.send(Ok(BegunTask { task, jwt })).is_err() {
            tracing::debug!("BeginTask caller went away; the task stays with its process");
        }
    }

    /// Ends a held task: its credentials leave the snapshot now; with
    /// `notify` the server records the end. False when not held.
    pub(super) fn end_task(&mut self, task_id: &str, reason: &'static str, notify: bool) -> bool {
        let Some(pos) = self.held.tasks.iter().position(|t| t.id() == task_id) else {
            return false;
        };
        let task = self.held.tasks.remove(pos);
        self.enforce.task_ended(task_id, &task.owner);
        // Its SVID dies with it: the serial goes into the CRLs, so peers
        // that read them refuse it too (an expired one needs nothing).
        if reason != "expired"
            && let Some(leaf) = task.svid.as_ref().and_then(|s| s.chain.first())
        {
            self.queue_revoke(leaf.clone(), format!("task {task_id} {reason}"));
        }
        self.held.task_work.remove(task_id);
        tracing::info!(task_id, reason, "task ended");
        if notify {
            self.report_end(task_id.to_owned(), reason);
        }
        self.save_tasks();
        self.publish_snapshot();
        true
    }

    fn report_end(&mut self, task_id: String, reason: &'static str) {
        let Some(mut client) = self.client.clone() else {
            self.held.pending_ends.push((task_id, reason));
            return;
        };
        self.inflight.push(Box::pin(async move {
            let call = client.end_task(EndTaskRequest {
                task_id: task_id.clone(),
                reason: reason.to_owned(),
            });
            let ok = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => true,
                // Unknown or already ended: nothing left to report.
                Ok(Err(s)) => matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ),
                Err(_) => false,
            };
            Event::Ended {
                task_id,
                reason,
                ok,
            }
        }));
    }

    /// Reports the task ends noted while disconnected.
    pub(super) fn flush_pending_ends(&mut self) {
        for (id, reason) in std::mem::take(&mut self.held.pending_ends) {
            self.report_end(id, reason);
        }
    }

    /// Ends expired tasks and tasks whose holder exited; mints task SVIDs
    /// that are missing or due.
    pub(super) fn task_upkeep(&mut self) {
        if self.held.tasks.is_empty() {
            return;
        }
        let now = self.clock.now();
        let ended: Vec<(String, &'static str, bool)> = self
            .held
            .tasks
            .iter()
            .filter_map(|t| {
                if t.not_after() <= now {
                    Some((t.id().to_owned(), "expired", false))
                } else if !t.owner.alive() {
                    Some((t.id().to_owned(), "process exited", true))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason, notify) in ended {
            self.end_task(&id, reason, notify);
        }
        let due: Vec<Arc<ActiveTask>> = self
            .held
            .tasks
            .iter()
            .filter(|t| match &t.svid {
                None => true,
                Some(s) => now >= s.renew_at || !self.trust.issuer_ok(s.issuer_id.as_deref()),
            })
            .filter(|t| {
                self.held
                    .task_work
                    .get(t.id())
                    .is_none_or(|w| !w.signing && now >= w.next_try)
            })
            .cloned()
            .collect();
        for t in due {
            self.start_task_signing(&t);
        }
    }

    fn start_task_signing(&mut self, task: &ActiveTask) {
        let Some(mut client) = self.client.clone() else {
            return;
        };
        let made = SvidKey::generate().and_then(|k| Ok((k.csr(&task.record.grant.spiffe_id)?, k)));
        let Ok((csr, key)) = made else {
            tracing::error!("task key generation failed");
            return;
        };
        let now = self.clock.now();
        let work = self
            .held
            .task_work
            .entry(task.id().to_owned())
            .or_insert(TaskWork {
                signing: false,
                attempts: 0,
                next_try: now,
            });
        work.signing = true;
        let task_id = task.id().to_owned();
        let exe_sha256 = task.exe_sha256.clone();
        self.inflight.push(Box::pin(async move {
            let call = client.sign_task_svid(SignTaskSvidRequest {
                task_id: task_id.clone(),
                csr,
                jwt_audiences: vec![],
                exe_sha256,
            });
            let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Err(_) => Err(timed_out()),
                Ok(Err(s)) => Err(CommandError::Server(s)),
                Ok(Ok(r)) => Ok(r.into_inner()),
            };
            Event::TaskSigned {
                task_id,
                key,
                result,
            }
        }));
    }

    /// Applies a task SVID signing result: a task the server no longer
    /// holds active is ended here too.
    pub(super) fn finish_task_signing(
        &mut self,
        task_id: &str,
        key: SvidKey,
        result: Result<SignTaskSvidResponse, CommandError>,
    ) {
        let now = self.clock.now();
        let Some(pos) = self.held.tasks.iter().position(|t| t.id() == task_id) else {
            return;
        };
        let task = self.held.tasks[pos].clone();
        let outcome = match result {
            Ok(r) => r
                .svid
                .ok_or_else(|| "no SVID in the answer".to_owned())
                .and_then(|s| {
                    let revision = self
                        .standing
                        .entries
                        .iter()
                        .find(|e| e.id == task.record.entry_id)
                        .map_or(0, |e| e.revision);
                    accept_task_svid(&task.record, revision, &key, s.cert_chain, now)
                }),
            Err(CommandError::Server(s))
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::NotFound
                        | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::info!(
                    task_id,
                    reason = s.message(),
                    "server no longer holds the task"
                );
                self.end_task(task_id, "ended by the server", false);
                return;
            }
            Err(e) => Err(e.to_string()),
        };
        let work = self
            .held
            .task_work
            .entry(task_id.to_owned())
            .or_insert(TaskWork {
                signing: false,
                attempts: 0,
                next_try: now,
            });
        work.signing = false;
        match outcome {
            Ok(svid) => {
                work.attempts = 0;
                self.held.tasks[pos] = Arc::new(ActiveTask {
                    record: task.record.clone(),
                    owner: task.owner.clone(),
                    svid: Some(Arc::new(svid)),
                    exe_sha256: task.exe_sha256.clone(),
                });
                self.publish_snapshot();
            }
            Err(err) => {
                let expires = task.svid.as_ref().map_or(task.not_after(), |s| s.not_after);
                work.next_try =
                    now + retry_delay(work.attempts, BACKOFF_BASE, BACKOFF_MAX, now, expires);
                work.attempts = work.attempts.saturating_add(1);
                tracing::warn!(task_id, %err, "task SVID signing failed; keeping the current one");
            }
        }
    }
}
