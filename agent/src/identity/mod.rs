//! The agent's identity state and its one owner.
//!
//! [`Manager`] is a single task that owns everything the agent holds: the
//! server connection and sync stream, the entries and bundle, the standing
//! SVIDs, the agent's own SVID, and the task SVIDs. Everything else talks
//! to it through an [`IdentityHandle`] (cheap `Clone`): commands go in over
//! a channel, state comes out as immutable [`Snapshot`]s through a `watch`,
//! so readers never lock. Server calls run as in-flight futures polled by
//! the owner's loop, never awaited inside it, so a slow signing round does
//! not hold up sync updates, task commands or shutdown.
//!
//! - `manager`: the loop (session, sync stream, deadlines, commands).
//! - `reconcile`: standing SVIDs: which are due, the CSR batch, accepting
//!   the signed result (`accept_signed`, shared with task SVIDs).
//! - `tasks`: what a held task is (holder, task SVID, persisted binding)
//!   and the checks on a task SVID the server signed.
//! - `task_life`: the owner's side of tasks: begin, rotate inside the
//!   task's window, end on EndTask, expiry, revocation or process exit;
//!   bindings kept across restarts.

mod agent_svid;
mod enforce;
mod enforce_state;
mod manager;
mod parts;
mod reconcile;
mod signed;
mod task_life;
mod tasks;

use std::sync::Arc;

use lanyard_proto::server::node_client::NodeClient;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

/// A server call the owner runs (see [`Command::Call`]).
pub(crate) type ServerCall = Box<
    dyn FnOnce(
            Option<NodeClient<Channel>>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

pub use manager::Manager;
pub use signed::jitter_sample;
pub use tasks::{ActiveTask, BeginRequest, BegunTask, TaskOwner};

use crate::cache::Snapshot;

/// Why a command to the identity owner failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The agent is not connected to the server.
    #[error("the agent is not connected to the server; retry")]
    NotConnected,
    /// The agent is shutting down (or the owner stopped).
    #[error("the agent is shutting down")]
    Stopped,
    /// The server answered with an error (its code and message are kept).
    #[error("{}", .0.message())]
    Server(tonic::Status),
    /// The server's answer failed the agent's checks.
    #[error("the server's answer was refused: {0}")]
    BadAnswer(String),
    /// No such task for this caller.
    #[error("task {0} not found")]
    NoTask(String),
}

/// A signed JWT-SVID: token, issued-at and expiry (Unix seconds).
#[derive(Debug, Clone)]
pub struct SignedJwt {
    /// The compact JWS.
    pub token: String,
    /// Issue time.
    pub issued_at: u64,
    /// Expiry.
    pub expires_at: u64,
}

/// What a JWT-SVID is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwtSubject {
    /// A standing identity (an entry).
    Entry(String),
    /// A task's identity.
    Task(String),
}

/// A command to the owner.
pub(crate) enum Command {
    BeginTask(
        Box<BeginRequest>,
        oneshot::Sender<Result<BegunTask, CommandError>>,
    ),
    EndTask {
        task_id: String,
        reason: &'static str,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// A unary call to the server over the owner's connection (`None`
    /// when there is none); the call answers its caller itself.
    Call(ServerCall),
    SignJwt {
        subject: JwtSubject,
        audience: Vec<String>,
        exe_sha256: String,
        reply: oneshot::Sender<Result<SignedJwt, CommandError>>,
    },
    /// A denied tool call to report to the server.
    ReportDenial(Box<lanyard_proto::server::Denial>),
    /// Quarantine a task's holder on this node's decision.
    LocalQuarantine {
        spiffe_id: String,
        task_id: String,
        reason: String,
    },
}

/// The handle to the identity owner.
#[derive(Clone)]
pub struct IdentityHandle {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<Arc<Snapshot>>,
}

/// Commands queued before senders wait.
const COMMAND_QUEUE: usize = 1024;

impl IdentityHandle {
    /// The published state.
    pub fn state(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.state.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    /// Begins a task (the server decides and mints).
    pub async fn begin_task(&self, req: BeginRequest) -> Result<BegunTask, CommandError> {
        self.ask(|reply| Command::BeginTask(Box::new(req), reply))
            .await
    }

    /// Ends a task: its credentials leave the snapshot before this returns.
    pub async fn end_task(&self, task_id: &str, reason: &'static str) -> Result<(), CommandError> {
        self.ask(|reply| Command::EndTask {
            task_id: task_id.to_owned(),
            reason,
            reply,
        })
        .await
    }

    /// Asks the server for a delegation token; returns it with its expiry.
    pub async fn delegate_task(
        &self,
        request: lanyard_proto::server::DelegateTaskRequest,
    ) -> Result<(String, i64), CommandError> {
        let r = self
            .call(move |mut c| async move { c.delegate_task(request).await })
            .await?;
        Ok((r.token, r.expires_at))
    }

    /// Asks the server for a credential for a task this agent holds.
    pub async fn get_credential(
        &self,
        request: lanyard_proto::server::GetCredentialRequest,
    ) -> Result<lanyard_proto::server::GetCredentialResponse, CommandError> {
        self.call(move |mut c| async move { c.get_credential(request).await })
            .await
    }

    /// Asks the server about a call a policy holds for approval; the
    /// server may hold the answer up to the request's `wait_ms`.
    pub async fn request_approval(
        &self,
        request: lanyard_proto::server::RequestApprovalRequest,
    ) -> Result<lanyard_proto::server::RequestApprovalResponse, CommandError> {
        let limit =
            manager::CALL_TIMEOUT + std::time::Duration::from_millis(u64::from(request.wait_ms));
        self.call_within(limit, move |mut c| async move {
            c.request_approval(request).await
        })
        .await
    }

    /// A WIT-SVID for an entry or a task, bound to `public_jwk` (the
    /// public half of a key this agent generated for the workload).
    pub async fn sign_wit(
        &self,
        request: lanyard_proto::server::SignWitSvidRequest,
    ) -> Result<lanyard_proto::server::SignWitSvidResponse, CommandError> {
        self.call(move |mut c| async move { c.sign_wit_svid(request).await })
            .await
    }

    /// Runs one unary server call on the owner's connection, within the
    /// owner's call timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, CommandError>
    where
        T: Send + 'static,
        F: FnOnce(NodeClient<Channel>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>
            + Send
            + 'static,
    {
        self.call_within(manager::CALL_TIMEOUT, f).await
    }

    /// Runs one unary server call on the owner's connection, within `limit`.
    async fn call_within<T, F, Fut>(
        &self,
        limit: std::time::Duration,
        f: F,
    ) -> Result<T, CommandError>
    where
        T: Send + 'static,
        F: FnOnce(NodeClient<Channel>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>
            + Send
            + 'static,
    {
        self.ask(|reply| {
            Command::Call(Box::new(move |client| {
                Box::pin(async move {
                    let r = match client {
                        None => Err(CommandError::NotConnected),
                        Some(c) => match tokio::time::timeout(limit, f(c)).await {
                            Err(_) => Err(CommandError::Server(tonic::Status::unavailable(
                                "the server did not answer in time",
                            ))),
                            Ok(Err(s)) => Err(CommandError::Server(s)),
                            Ok(Ok(r)) => Ok(r.into_inner()),
                        },
                    };
                    let _ = reply.send(r);
                })
            }))
        })
        .await
    }

    /// Reports a denied tool call (queued; never waits for the server).
    pub fn report_denial(&self, d: lanyard_proto::server::Denial) {
        if self
            .commands
            .try_send(Command::ReportDenial(Box::new(d)))
            .is_err()
        {
            tracing::warn!("identity owner busy; a denial report was dropped");
        }
    }

    /// Quarantines a task's holder on this node's own decision, at once,
    /// whether or not the server is reachable.
    pub async fn local_quarantine(&self, spiffe_id: String, task_id: String, reason: String) {
        let _ = self
            .commands
            .send(Command::LocalQuarantine {
                spiffe_id,
                task_id,
                reason,
            })
            .await;
    }

    /// Signs a JWT-SVID through the server.
    pub async fn sign_jwt(
        &self,
        subject: JwtSubject,
        audience: Vec<String>,
        exe_sha256: String,
    ) -> Result<SignedJwt, CommandError> {
        self.ask(|reply| Command::SignJwt {
            subject,
            audience,
            exe_sha256,
            reply,
        })
        .await
    }
}

/// A handle and the receiving end for a new owner.
pub(crate) fn channel(
    state: watch::Receiver<Arc<Snapshot>>,
) -> (IdentityHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    (
        IdentityHandle {
            commands: tx,
            state,
        },
        rx,
    )
}

/// A handle over an empty state, and its command receiver, for tests.
#[cfg(test)]
pub(crate) fn test_handle() -> (IdentityHandle, mpsc::Receiver<Command>) {
    let td = lanyard_core::TrustDomain::new("td").unwrap_or_else(|_| unreachable!());
    let (_, state) = watch::channel(Arc::new(Snapshot::empty(td)));
    channel(state)
}

/// Answers a command as an owner without a server connection would.
#[cfg(test)]
pub(crate) fn refuse(cmd: Command) {
    match cmd {
        Command::BeginTask(_, r) => drop(r.send(Err(CommandError::NotConnected))),
        Command::EndTask { reply, .. } => drop(reply.send(Err(CommandError::NotConnected))),
        Command::Call(call) => drop(call(None)),
        Command::SignJwt { reply, .. } => drop(reply.send(Err(CommandError::NotConnected))),
        Command::ReportDenial(_) | Command::LocalQuarantine { .. } => {}
    }
}
