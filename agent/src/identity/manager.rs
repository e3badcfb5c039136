//! The owner loop: one task that holds the server connection, applies the
//! pushed entries, bundle, policy and task revocations, keeps standing and
//! task SVIDs fresh, renews the agent's own SVID, answers commands from
//! the handle, and publishes [`Snapshot`]s. Server calls run as in-flight
//! futures polled here; when the server is unreachable the agent keeps
//! serving what it holds and retries with backoff.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lanyard_core::backoff::retry_delay;
use lanyard_core::clock::{Clock, from_unix_secs};
use lanyard_core::rotation::renew_at;
use lanyard_core::tls::SpiffeServerVerifier;
use lanyard_core::x509::{CertInfo, SvidKey};
use lanyard_core::{EntryId, RegistrationEntry, TrustDomain};
use lanyard_proto::server::node_client::NodeClient;
use lanyard_proto::server::{SyncRequest, SyncUpdate};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::parts::{HeldTasks, Standing, Trust};
use super::signed::{Batch, jitter_sample};
use super::{Command, CommandError};
use crate::cache::{EntrySet, Snapshot};
use crate::storage::AgentStorage;
use crate::upstream::client::{node_client_with, tls_config};
use crate::upstream::creds::{ClientCert, Credentials};

/// First retry delay after a failure.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Deadline for one server call.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How often task holders are checked for exit.
pub(super) const TASK_WATCH: Duration = Duration::from_millis(250);

/// What an in-flight server call reports back to the loop.
pub(super) enum Event {
    /// A batch of standing SVIDs was signed (or not).
    Signed(
        Batch,
        Result<lanyard_proto::server::SignX509SvidsResponse, String>,
    ),
    /// The server answered a BeginTask.
    Begun(Box<super::tasks::PendingBegin>),
    /// The server signed a task SVID (rotation or after a restart).
    TaskSigned {
        task_id: String,
        key: SvidKey,
        result: Result<lanyard_proto::server::SignTaskSvidResponse, CommandError>,
    },
    /// The server recorded (or failed to record) a task's end.
    Ended {
        task_id: String,
        reason: &'static str,
        ok: bool,
    },
    /// An enforcement report finished; what failed is to be sent again.
    Reported {
        denials: Vec<lanyard_proto::server::Denial>,
        revoke: Vec<(Vec<u8>, String)>,
    },
    /// Nothing for the loop to do (the future answered its caller itself).
    Done,
}

pub(super) type InFlight = FuturesUnordered<Pin<Box<dyn Future<Output = Event> + Send>>>;

/// The identity owner.
pub struct Manager {
    pub(crate) server: String,
    /// Resolves server names.
    pub(crate) resolver: Arc<crate::upstream::dns::ServerResolver>,
    pub(crate) td: TrustDomain,
    pub(crate) creds: Arc<Credentials>,
    pub(crate) storage: AgentStorage,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) publish: watch::Sender<Arc<Snapshot>>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) inflight: InFlight,
    /// The server's refusal of this agent was logged (once until the next
    /// connection).
    refusal_logged: bool,
    /// The current server client (set while a session is up).
    pub(super) client: Option<NodeClient<Channel>>,
    /// The current client, for parts that call the server on their own
    /// (the audit shipper).
    client_watch: watch::Sender<Option<NodeClient<Channel>>>,
    /// The entries and their standing SVIDs.
    pub(super) standing: Standing,
    /// The tasks held.
    pub(super) held: HeldTasks,
    /// Bundles, policies and levels from the server.
    pub(super) trust: Trust,
    pub(super) agent_renew_at: Option<SystemTime>,
    pub(super) agent_failures: u32,
    /// Revocations, CRLs, quarantines and pending reports.
    pub(super) enforce: super::enforce_state::EnforceState,
}

enum Next {
    /// Connect again after a backoff.
    Reconnect,
    /// Connect again at once (the agent SVID was renewed).
    Renewed,
    /// Shut down.
    Stop,
}

impl Manager {
    /// An owner publishing into `publish` and answering `commands`.
    pub(crate) fn new(
        server: String,
        td: TrustDomain,
        creds: Arc<Credentials>,
        storage: AgentStorage,
        clock: Arc<dyn Clock>,
        publish: watch::Sender<Arc<Snapshot>>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let bundle = lanyard_core::tls::X509BundleSource::x509_authorities(creds.as_ref());
        let mut m = Self {
            server,
            resolver: crate::upstream::dns::ServerResolver::system(),
            td,
            creds,
            storage,
            clock,
            publish,
            commands,
            inflight: FuturesUnordered::new(),
            refusal_logged: false,
            client: None,
            client_watch: watch::channel(None).0,
            standing: Standing::default(),
            held: HeldTasks::default(),
            trust: Trust::new(bundle),
            agent_renew_at: None,
            agent_failures: 0,
            enforce: super::enforce_state::EnforceState::default(),
        };
        m.restore_tasks();
        m.restore_quarantines();
        m
    }

    /// Resolves server names with `resolver` (default: the system's).
    pub fn resolver(mut self, resolver: Arc<crate::upstream::dns::ServerResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The server client while a session is up.
    pub fn clients(&self) -> watch::Receiver<Option<NodeClient<Channel>>> {
        self.client_watch.subscribe()
    }

    fn new_client(&self) -> Option<NodeClient<Channel>> {
        let server_id = self.td.id_with_segments(["lanyard", "server"]).ok()?;
        let verifier = Arc::new(SpiffeServerVerifier::new(server_id, self.creds.clone()));
        let tls = tls_config(verifier, Some(Arc::new(ClientCert(self.creds.clone())))).ok()?;
        node_client_with(&self.server, tls, self.resolver.clone()).ok()
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let writer = tokio::spawn(super::tasks::write_task_bindings(
            self.storage.clone(),
            self.held.task_file.subscribe(),
        ));
        self.run_loop(&mut shutdown).await;
        // The last bindings are on disk before the agent stops.
        drop(self.held.task_file);
        let _ = writer.await;
    }

    /// Says why the sync stream failed: a refusal of this agent (evicted,
    /// banned, its SVID revoked) once, with what to do; anything else at
    /// each attempt.
    fn sync_failed(&mut self, status: &tonic::Status, what: &str) {
        if matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ) {
            if !self.refusal_logged {
                self.refusal_logged = true;
                tracing::error!(
                    message = status.message(),
                    server = %self.server,
                    "evicted: the server refuses this agent (evicted, banned, or its SVID revoked); cached SVIDs are served until they expire; restart it with a new join token (--join-token)"
                );
            }
            return;
        }
        tracing::warn!(code = ?status.code(), message = status.message(), server = %self.server, "{what}; serving cached SVIDs");
    }

    async fn run_loop(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let mut attempt = 0u32;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let next = self.session(shutdown, &mut attempt).await;
            self.client = None;
            self.client_watch.send_replace(None);
            match next {
                Next::Stop => return,
                Next::Renewed => continue,
                Next::Reconnect => {}
            }
            let delay = retry_delay(
                attempt,
                BACKOFF_BASE,
                BACKOFF_MAX,
                SystemTime::UNIX_EPOCH,
                from_unix_secs(u64::MAX / 4),
            );
            attempt = attempt.saturating_add(1);
            if self.idle(delay, shutdown).await {
                return;
            }
        }
    }

    /// Waits `delay` while disconnected, still answering commands, finishing
    /// in-flight calls and watching task holders. True on shutdown.
    async fn idle(&mut self, delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let tick = TASK_WATCH.min(until.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                () = tokio::time::sleep(tick) => {
                    self.task_upkeep();
                    self.prune_revocations();
                    if tokio::time::Instant::now() >= until {
                        return false;
                    }
                }
                Some(ev) = self.inflight.next(), if !self.inflight.is_empty() => self.handle(ev),
                Some(cmd) = self.commands.recv() => self.command(cmd),
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return true,
            }
        }
    }

    /// One connection to the server: sync stream plus SVID upkeep.
    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>, attempt: &mut u32) -> Next {
        let Some(identity) = self.creds.identity() else {
            tracing::error!("agent has no SVID; restart it with a new --join-token");
            return Next::Reconnect;
        };
        if self.agent_renew_at.is_none() {
            self.agent_renew_at = Some(renew_at(
                self.clock
                    .now()
                    .clamp(identity.not_before, identity.not_after),
                identity.not_after,
                jitter_sample(),
            ));
        }
        let Some(mut client) = self.new_client() else {
            return Next::Reconnect;
        };
        let mut stream = match client.sync(SyncRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(status) => {
                self.sync_failed(&status, "cannot open sync stream");
                return Next::Reconnect;
            }
        };
        self.refusal_logged = false;
        self.client = Some(client.clone());
        self.client_watch.send_replace(Some(client.clone()));
        tracing::info!(server = %self.server, agent_id = %identity.spiffe_id, "connected to server");
        self.flush_pending_ends();
        self.flush_reports();
        loop {
            let deadline = self.next_deadline();
            let wait = deadline
                .duration_since(self.clock.now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(update)) => {
                        *attempt = 0;
                        self.apply(update);
                        self.upkeep();
                    }
                    Ok(None) => {
                        tracing::warn!("server closed the sync stream");
                        return Next::Reconnect;
                    }
                    Err(status) => {
                        self.sync_failed(&status, "sync stream failed");
                        return Next::Reconnect;
                    }
                },
                Some(ev) = self.inflight.next(), if !self.inflight.is_empty() => self.handle(ev),
                Some(cmd) = self.commands.recv() => self.command(cmd),
                () = tokio::time::sleep(wait) => {
                    if self.agent_renew_at.is_some_and(|t| self.clock.now() >= t)
                        && self.renew_agent(&mut client).await
                    {
                        // Reconnect so the server sees the new SVID.
                        *attempt = 0;
                        return Next::Renewed;
                    }
                    // The task watch wakes the loop every 250 ms; standing
                    // SVIDs are looked at only when one of them is due.
                    if self.clock.now() >= self.standing_deadline() {
                        self.start_reconcile();
                    }
                    self.task_upkeep();
                    self.prune_revocations();
                    self.flush_reports();
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return Next::Stop,
            }
        }
    }

    /// Everything time-driven: standing SVIDs due, task holders, task SVIDs.
    fn upkeep(&mut self) {
        self.start_reconcile();
        self.task_upkeep();
    }

    /// When the next standing SVID is due for renewal or retry.
    fn standing_deadline(&self) -> SystemTime {
        let far = self.clock.now() + Duration::from_secs(3600);
        let svids = self.standing.svids.values().map(|s| s.renew_at);
        let failures = self.standing.failures.values().map(|f| f.next_try);
        svids.chain(failures).fold(far, SystemTime::min)
    }

    fn next_deadline(&self) -> SystemTime {
        let tasks = (!self.held.tasks.is_empty()).then(|| self.clock.now() + TASK_WATCH);
        self.agent_renew_at
            .into_iter()
            .chain(tasks)
            .fold(self.standing_deadline(), SystemTime::min)
    }

    /// Handles a finished in-flight call.
    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Signed(batch, result) => self.finish_reconcile(batch, result),
            Event::Begun(pending) => self.finish_begin(*pending),
            Event::TaskSigned {
                task_id,
                key,
                result,
            } => self.finish_task_signing(&task_id, key, result),
            Event::Ended {
                task_id,
                reason,
                ok,
            } => {
                if !ok {
                    self.held.pending_ends.push((task_id, reason));
                }
            }
            Event::Reported { denials, revoke } => self.finish_report(denials, revoke),
            Event::Done => {}
        }
    }

    /// Handles a command from the handle.
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::BeginTask(req, reply) => self.start_begin(*req, reply),
            Command::EndTask {
                task_id,
                reason,
                reply,
            } => {
                let r = if self.end_task(&task_id, reason, true) {
                    Ok(())
                } else {
                    Err(CommandError::NoTask(task_id))
                };
                let _ = reply.send(r);
            }
            Command::Call(call) => {
                let fut = call(self.client.clone());
                self.inflight.push(Box::pin(async move {
                    fut.await;
                    Event::Done
                }));
            }
            Command::SignJwt {
                subject,
                audience,
                exe_sha256,
                reply,
            } => self.start_jwt(subject, audience, exe_sha256, reply),
            Command::ReportDenial(d) => self.queue_denial(*d),
            Command::LocalQuarantine {
                spiffe_id,
                task_id,
                reason,
            } => self.local_quarantine(spiffe_id, task_id, reason),
        }
    }

    fn start_jwt(
        &mut self,
        subject: super::JwtSubject,
        audience: Vec<String>,
        exe_sha256: String,
        reply: tokio::sync::oneshot::Sender<Result<super::SignedJwt, CommandError>>,
    ) {
        let Some(mut client) = self.client.clone() else {
            let _ = reply.send(Err(CommandError::NotConnected));
            return;
        };
        let issued_at = lanyard_core::clock::unix_secs(self.clock.now());
        self.inflight.push(Box::pin(async move {
            let r = match subject {
                super::JwtSubject::Entry(entry_id) => client
                    .sign_jwt_svid(lanyard_proto::server::SignJwtSvidRequest { entry_id, audience })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        super::SignedJwt {
                            token: r.token,
                            issued_at: u64::try_from(r.issued_at).unwrap_or(0),
                            expires_at: u64::try_from(r.expires_at).unwrap_or(0),
                        }
                    }),
                super::JwtSubject::Task(task_id) => client
                    .sign_task_svid(lanyard_proto::server::SignTaskSvidRequest {
                        task_id,
                        csr: vec![],
                        jwt_audiences: audience,
                        exe_sha256,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        super::SignedJwt {
                            token: r.jwt,
                            issued_at,
                            expires_at: u64::try_from(r.jwt_expires_at).unwrap_or(0),
                        }
                    }),
            };
            let _ = reply.send(r.map_err(CommandError::Server));
            Event::Done
        }));
    }

    fn apply(&mut self, mut update: SyncUpdate) {
        let mut enforcement = SyncUpdate {
            revocations: std::mem::take(&mut update.revocations),
            revocations_reset: update.revocations_reset,
            crls: std::mem::take(&mut update.crls),
            quarantines: std::mem::take(&mut update.quarantines),
            ..SyncUpdate::default()
        };
        let mut entries = Vec::with_capacity(update.entries.len());
        for msg in update.entries {
            let id = msg.id.clone();
            match RegistrationEntry::try_from(msg) {
                Ok(e) => entries.push(e),
                Err(err) => {
                    tracing::warn!(entry_id = %id, %err, "ignoring invalid entry from server")
                }
            }
        }
        self.standing.entries = Arc::new(EntrySet::new(entries));
        if let Some(b) = update.bundle.filter(|b| {
            b.sequence != self.trust.bundle_sequence || *self.trust.bundle != b.x509_authorities
        }) {
            self.trust.bundle_sequence = b.sequence;
            self.trust.bundle_ids = b
                .x509_authorities
                .iter()
                .filter_map(|c| CertInfo::parse(c).ok())
                .map(|i| i.subject_key_id)
                .collect();
            self.trust.tainted = Arc::new(b.tainted_key_ids);
            self.trust.bundle = Arc::new(b.x509_authorities);
            self.trust.jwt_authorities =
                Arc::new(b.jwt_authorities.into_iter().map(Into::into).collect());
            self.trust.wit_authorities =
                Arc::new(b.wit_authorities.into_iter().map(Into::into).collect());
            self.creds.set_bundle(self.trust.bundle.clone());
            if let Err(err) = self.storage.save_bundle(&self.trust.bundle) {
                tracing::warn!(%err, "cannot persist trust bundle");
            }
            tracing::info!(
                sequence = self.trust.bundle_sequence,
                authorities = self.trust.bundle.len(),
                "trust bundle updated"
            );
        }
        self.trust
            .set_levels(std::mem::take(&mut update.sensitivity_levels));
        if update.policy_version != self.trust.policy_version {
            self.trust.policy_version = update.policy_version;
            self.trust.policy_text = Arc::from(std::mem::take(&mut update.policy_text));
            tracing::info!(version = self.trust.policy_version, "policy set updated");
        }
        for id in &update.ended_task_ids {
            if self.end_task(id, "revoked", false) {
                tracing::info!(task_id = %id, "task revoked by the server");
            }
        }
        // The agent's own SVID follows the same rule as the workloads': one
        // signed by a tainted CA (or one that left the bundle) is renewed at
        // once, before the CA is revoked and the server refuses it.
        if let Some(id) = self.creds.identity()
            && !self.trust.issuer_ok(id.issuer_id.as_deref())
        {
            tracing::warn!(issuer = ?id.issuer_id, "agent SVID signed by a tainted or removed CA; renewing now");
            self.agent_renew_at = Some(self.clock.now());
        }
        self.trust.synced = true;
        let live: std::collections::HashSet<&EntryId> =
            self.standing.entries.iter().map(|e| &e.id).collect();
        self.standing.svids.retain(|id, _| live.contains(id));
        self.standing.failures.retain(|id, _| live.contains(id));
        self.apply_enforcement(&mut enforcement);
        self.publish_snapshot();
    }

    pub(super) fn publish_snapshot(&self) {
        let mut snap = Snapshot::empty(self.td.clone());
        snap.entries = self.standing.entries.clone();
        snap.svids = self.standing.svids.clone();
        snap.tasks = Arc::new(self.held.tasks.clone());
        snap.bundle = self.trust.bundle.clone();
        snap.jwt_authorities = self.trust.jwt_authorities.clone();
        snap.wit_authorities = self.trust.wit_authorities.clone();
        snap.tainted = self.trust.tainted.clone();
        snap.bundle_sequence = self.trust.bundle_sequence;
        snap.policy_version = self.trust.policy_version;
        snap.policy_text = self.trust.policy_text.clone();
        snap.levels = self.trust.levels.clone();
        snap.synced = self.trust.synced;
        snap.revocations = self.enforce.revocations.clone();
        snap.revocation_generation = self.enforce.generation;
        snap.crls = self.enforce.crls.clone();
        snap.quarantines = Arc::new(self.enforce.all());
        self.publish.send_replace(Arc::new(snap));
    }
}
