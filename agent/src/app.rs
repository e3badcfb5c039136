//! Composition root of the agent: identity, its owner task, the Workload
//! API and the TaskIdentity service
//! built from a validated [`Config`].

use std::path::PathBuf;
use std::sync::Arc;

use lanyard_core::clock::{Clock, SystemClock};
use lanyard_proto::task::task_identity_server::TaskIdentityServer;
use lanyard_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use lanyard_uds::{SocketError, bind_unix_listener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::api::{Callers, ExpiryTicker, TaskApi, WorkloadApi};
use crate::attestor::{UnixAttestor, WorkloadAttestor};
use crate::cache::Snapshot;
use crate::config::Config;
use crate::identity::Manager;
use crate::jwt_cache::JwtCache;
use crate::storage::{AgentStorage, StorageError};
use crate::upstream::bootstrap::{BootstrapError, ensure_identity};
use crate::upstream::creds::Credentials;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The data directory is unusable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No identity could be obtained.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The socket could not be bound.
    #[error("workload API socket")]
    Socket(#[from] SocketError),
    /// The audit queue could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit_queue::QueueError),
    /// The metrics address could not be bound.
    #[error("{0}")]
    Metrics(String),
}

/// A running agent.
pub struct Bound {
    /// The Workload API socket.
    pub socket: PathBuf,
    /// Where Prometheus metrics are served, when they are.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The agent's published state.
    pub state: watch::Receiver<Arc<Snapshot>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Bound {
    /// Stops serving and waits for every part to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Builds and starts the agent.
pub async fn build(config: Config) -> Result<Bound, AppError> {
    let unix: Arc<dyn WorkloadAttestor> = Arc::new(UnixAttestor::new(config.limits.max_hash_bytes));
    if config.k8s.as_ref().is_some_and(|k| k.insecure_kubelet) {
        tracing::warn!(
            "the kubelet's certificate is not verified (kubelet_insecure_skip_verify): a local process that binds the kubelet's port can read the agent's token and forge pod lists; development only (pin the node's certificate with kubelet_cert_file)"
        );
    }
    let attestor: Arc<dyn WorkloadAttestor> = match &config.k8s {
        Some(k8s) => Arc::new(crate::attestor::K8sAttestor::new(
            unix,
            k8s.clone(),
            tokio::runtime::Handle::current(),
        )),
        None => unix,
    };
    build_with(config, Arc::new(SystemClock), attestor).await
}

/// [`build`] with explicit clock and attestor.
pub async fn build_with(
    config: Config,
    clock: Arc<dyn Clock>,
    attestor: Arc<dyn WorkloadAttestor>,
) -> Result<Bound, AppError> {
    let storage = AgentStorage::open(&config.data_dir)?;
    let queue = crate::audit_queue::AuditQueue::open(&config.data_dir, config.audit)?;
    let creds = Arc::new(Credentials::default());
    ensure_identity(&config, &storage, &creds, clock.as_ref()).await?;
    let listener =
        bind_unix_listener(&config.socket, 0o777, lanyard_uds::SocketDir::Shared).await?;

    let (publish, state) = watch::channel(Arc::new(Snapshot::empty(config.trust_domain.clone())));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (identity, commands) = crate::identity::channel(state.clone());
    let manager = Manager::new(
        config.server.clone(),
        config.trust_domain.clone(),
        creds,
        storage,
        clock.clone(),
        publish,
        commands,
    )
    .freeze_quarantined(config.quarantine.freeze)
    .resolver(config.resolver.clone());
    let limits = config.limits;
    let callers = Arc::new(Callers::new(attestor));
    let metrics = Arc::new(crate::metrics::AgentMetrics::default());
    let jwt_cache = Arc::new(JwtCache::new(
        identity.clone(),
        limits.jwt_cache_bytes,
        limits.jwt_signings_per_caller_per_second,
    ));
    let expiry = ExpiryTicker::new(state.clone(), clock.clone());
    let mut api = WorkloadApi::new(
        state.clone(),
        callers.clone(),
        clock.clone(),
        shutdown_rx.clone(),
        jwt_cache.clone(),
        expiry.subscribe(),
    );
    if config.wit_svids {
        api = api.with_wit(Arc::new(crate::wit_cache::WitCache::new(
            identity.clone(),
            clock.clone(),
        )));
    }
    let pdp = Arc::new(crate::pdp::Pdp::new(
        identity.clone(),
        clock.clone(),
        config.quarantine.trigger,
        Arc::new(crate::metrics::CountingSink::new(
            Arc::new(crate::pdp::QueueSink(queue.clone())),
            metrics.decisions.clone(),
        )),
    ));
    pdp.precompile(shutdown_rx.clone());
    let broker_api =
        crate::api::BrokerApi::new(identity.clone(), callers.clone(), Some(queue.clone()));
    let task_api = TaskApi::new(identity, callers, pdp);
    let admission = crate::listener::Admission {
        limits: lanyard_uds::ConnLimiter::new(
            limits.max_connections,
            limits.max_connections_per_caller,
        ),
        use_pidfd: config.use_pidfd,
        boundaries: crate::listener::Boundaries {
            kubelet: config.k8s.as_ref().map(|k| k.cgroups.clone()),
            ..Default::default()
        },
        shim: lanyard_uds::ShimLimits {
            header_timeout: limits.header_timeout,
            budget: lanyard_uds::HeaderBudget::new(limits.max_buffered_header_bytes),
        },
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_serving::<SpiffeWorkloadApiServer<WorkloadApi>>()
        .await;
    health.set_serving::<TaskIdentityServer<TaskApi>>().await;
    health
        .set_serving::<lanyard_proto::broker::credential_broker_server::CredentialBrokerServer<
            crate::api::BrokerApi,
        >>()
        .await;
    health
        .set_service_status(AUDIT_HEALTH_SERVICE, ServingStatus::Serving)
        .await;
    let audit_health = watch_audit_health(health.clone(), queue.full(), shutdown_rx.clone());
    let shipper = queue
        .clone()
        .run_ship(manager.clients(), shutdown_rx.clone());
    let syncer = queue.clone().run_sync(shutdown_rx.clone());
    let metrics_addr = match config.metrics_bind {
        Some(bind) => Some(
            lanyard_metrics::serve(bind, metrics.registry.clone(), shutdown_rx.clone())
                .await
                .map_err(|e| AppError::Metrics(format!("metrics address {bind}: {e}")))?,
        ),
        None => None,
    };
    let sampler = metrics.clone().sample(
        state.clone(),
        jwt_cache,
        queue.clone(),
        admission.shim.budget.clone(),
        shutdown_rx.clone(),
    );
    let mut stop = shutdown_rx.clone();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        // A peer that stops answering PINGs is dropped (quiet streams are
        // not: clients answer them).
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(lanyard_metrics::CallsLayer::new(metrics.calls.clone()))
        .add_service(health_service)
        .add_service(SpiffeWorkloadApiServer::new(api))
        .add_service(TaskIdentityServer::new(task_api))
        .add_service(
            lanyard_proto::broker::credential_broker_server::CredentialBrokerServer::new(
                broker_api,
            ),
        )
        .serve_with_incoming_shutdown(crate::listener::incoming(listener, admission), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tracing::info!(socket = %config.socket.display(), server = %config.server, "lanyard-agent started");
    let socket = config.socket.clone();
    let task = tokio::spawn(async move {
        let owner = tracing::Instrument::instrument(
            manager.run(shutdown_rx),
            tracing::info_span!("identity"),
        );
        let (r, (), (), (), (), (), ()) = tokio::join!(
            server,
            owner,
            shipper,
            syncer,
            audit_health,
            sampler,
            expiry.run()
        );
        if let Err(e) = r {
            tracing::error!(?e, "workload API stopped");
        }
        let _ = std::fs::remove_file(&socket);
    });
    Ok(Bound {
        metrics_addr,
        socket: config.socket,
        state,
        shutdown,
        task,
    })
}

/// The health service that reports the audit queue: NOT_SERVING while it
/// is full (tool-call decisions are denied then).
pub const AUDIT_HEALTH_SERVICE: &str = "lanyard.audit.v1.AuditQueue";

/// Follows the queue's fullness into the health service.
async fn watch_audit_health(
    health: tonic_health::server::HealthReporter,
    mut full: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let is_full = *full.borrow_and_update();
        let status = if is_full {
            tracing::error!(
                "audit queue full: tool-call decisions are denied until the server takes queued records"
            );
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        health
            .set_service_status(AUDIT_HEALTH_SERVICE, status)
            .await;
        tokio::select! {
            r = full.changed() => if r.is_err() { return },
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}
