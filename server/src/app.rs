//! Composition root: builds every part of the server from a validated
//! [`Config`], binds its listeners and returns a [`Bound`] handle.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::clock::{Clock, SystemClock};
use lanyard_proto::admin::admin_server::AdminServer;
use lanyard_proto::server::node_server::NodeServer;
use lanyard_uds::{SocketError, bind_unix_listener};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use crate::agents::Agents;
use crate::api::admin::{AdminApi, check_peer_uid};
use crate::api::node::{Metrics, NodeApi};
use crate::attestation::JoinTokens;
use crate::audit::Audit;
use crate::ca::IssuanceSettings;
use crate::ca::{Ca, CaError};
use crate::config::{Config, Datastore};
use crate::enforce::{Enforcement, Quarantines, Revocations};
use crate::policy::Policies;
use crate::registry::{Registry, RegistryError};
use crate::store::{PgStore, SledStore, Store, StoreError};
use crate::tasks::Tasks;
use crate::tls::{ServerIdentity, incoming, server_config};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The data directory could not be prepared.
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA could not be loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Entries could not be loaded.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The server API address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The admin socket could not be bound.
    #[error("admin socket: {0}")]
    Socket(#[from] SocketError),
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A stored policy set no longer loads.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicySetError),
    /// Tasks could not be loaded.
    #[error("tasks: {0}")]
    Tasks(#[from] crate::tasks::TaskServiceError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditLogError),
    /// The credential key file could not be read or created.
    #[error(transparent)]
    CredentialKey(#[from] crate::credentials::SealError),
    /// The CA file for authorization servers is unusable.
    #[error("credential_ca_file: {0}")]
    CredentialCa(String),
    /// Approval webhooks are configured and no HTTPS client can be made.
    #[error("{0}")]
    WebhookCa(String),
    /// The operator console could not be served.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    /// OpenID Connect discovery could not be served.
    #[error(transparent)]
    Oidc(#[from] crate::api::oidc::OidcError),
}

/// A running server.
pub struct Bound {
    /// Where the server API listens.
    pub server_addr: SocketAddr,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// The CA, for callers embedding the server (tests, tools).
    pub ca: Ca,
    /// What the server signed.
    pub metrics: Arc<Metrics>,
    /// The audit log.
    pub audit: Audit,
    /// Where Prometheus metrics are served, when they are.
    pub metrics_addr: Option<SocketAddr>,
    /// Where OpenID Connect discovery is served, when it is.
    pub oidc_addr: Option<SocketAddr>,
    /// Where the operator console is served, when it is.
    pub console_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Bound {
    /// Stops accepting, ends open streams and waits until every part has
    /// stopped (the database is closed when this returns).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        // Every part has stopped: the audit writer signs its last
        // checkpoint and closes the log.
        self.audit.close(Duration::from_secs(10)).await;
    }

    /// Waits until the server stops by itself (it does not, unless a
    /// listener fails) or `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// The client for authorization servers' token and revocation endpoints:
/// trusting the configured CA file (which must be readable), else the
/// system's roots. Without any root, `oauth-exchange` providers answer
/// with the reason.
fn authorization_server_client(
    ca_file: Option<&std::path::Path>,
) -> Result<crate::credentials::broker::AsClient, AppError> {
    let timeout = Duration::from_secs(10);
    let max = crate::credentials::oauth::MAX_ANSWER;
    match ca_file {
        Some(path) => lanyard_fetch::Client::with_ca_file(path, timeout, max)
            .map(Ok)
            .map_err(|e| AppError::CredentialCa(e.to_string())),
        None => Ok(
            lanyard_fetch::Client::new(lanyard_fetch::Trust::System, timeout, max).map_err(|e| {
                format!("no TLS trust for authorization servers ({e}); set credential_ca_file")
            }),
        ),
    }
}

/// Builds and starts the server.
pub async fn build(config: Config) -> Result<Bound, AppError> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// [`build`] with an explicit clock.
pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Bound, AppError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| AppError::DataDir(dir.clone(), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| AppError::DataDir(dir.clone(), e))?;
    let store = open_store(&config).await?;
    let sealing = crate::credentials::SealingKeys::load_or_create(&config.credential_key_file)?;
    tracing::info!(key_file = %config.credential_key_file.display(), keys = ?sealing.ids(), "credential secrets sealed with the key file");
    let server_id = server_id(dir)?;
    let audit = Audit::open(dir, &server_id, clock.clone(), config.audit)?;
    // The feed position is read before anything is loaded: every change
    // after it is applied again (idempotently) by the follower.
    let feed_from = store.last_change().await?;
    let td = config.trust_domain.clone();
    // With a shared database this server's private keys stay in its own
    // data dir unless configured otherwise; sled's database is in the data
    // dir already.
    let key_dir = match &config.datastore {
        Datastore::Postgres(_) if !config.ca_keys_in_datastore => Some(dir.join("keys")),
        _ => None,
    };
    let ca = Ca::load_or_create(
        &td,
        &server_id,
        key_dir.as_deref(),
        store.clone(),
        clock.clone(),
        config.ca_ttl,
    )
    .await?;
    let registry = Registry::load(td.clone(), store.clone()).await?;
    let tokens = JoinTokens::new(td.clone(), store.clone(), clock.clone());
    let identity = ServerIdentity::new(&ca, clock.as_ref())?;
    let tls = Arc::new(server_config(&ca, identity.clone())?);

    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|e| AppError::Bind(config.bind, e))?;
    let server_addr = listener
        .local_addr()
        .map_err(|e| AppError::Bind(config.bind, e))?;
    let admin_listener =
        bind_unix_listener(&config.admin_socket, 0o600, lanyard_uds::SocketDir::Private).await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (agent_changes, _) = watch::channel(0u64);
    let agents = Agents::new(store.clone(), clock.clone(), agent_changes);
    let prom = lanyard_metrics::Metrics::default();
    let metrics = Arc::new(Metrics::new(&prom));
    prom.add(
        "lanyard_server_events",
        "Audit records written, by kind and decision: attestations, renewals, SVIDs and JWTs issued, tasks begun/denied/ended, tool-call decisions shipped by agents, revocations, quarantines, authority rotations",
        audit.events(),
    );
    let node_calls = prom.counters(
        "lanyard_server_node_calls",
        "Node API calls from agents, by method and status",
    );
    let settings = IssuanceSettings {
        default_x509_svid_ttl: config.default_x509_svid_ttl,
        default_jwt_svid_ttl: config.default_jwt_svid_ttl,
        agent_svid_ttl: config.agent_svid_ttl,
        jwt_issuer: config.oidc.issuer.as_str().into(),
    };
    let policies = Policies::load(store.clone(), clock.clone()).await?;
    let revocations = Revocations::load(store.clone(), clock.clone()).await?;
    let quarantines = Quarantines::load(store.clone(), clock.clone(), config.quarantine).await?;
    let tasks = Tasks::load(
        store.clone(),
        crate::tasks::TaskParts {
            registry: registry.clone(),
            ca: ca.clone(),
            policies: policies.clone(),
            revocations: revocations.clone(),
        },
        clock.clone(),
        config.sensitivity_levels.clone(),
        settings.clone(),
    )
    .await?;
    let approvals = crate::approvals::Approvals::load(
        store.clone(),
        clock.clone(),
        config.approval.clone(),
        tasks.clone(),
        quarantines.clone(),
        crate::approvals::webhook_client(&config.approval).map_err(AppError::WebhookCa)?,
    )
    .await?;
    approvals.set_audit(audit.clone());
    approvals.run_sweeper(shutdown_rx.clone());
    let enforce = Enforcement::new(
        revocations.clone(),
        quarantines,
        tasks.clone(),
        registry.clone(),
        clock.clone(),
    );
    tasks.set_audit(audit.clone());
    enforce.set_audit(audit.clone());
    let mut attestors = crate::node_attest::NodeAttestors::default().with(Arc::new(
        crate::node_attest::JoinTokenAttestor(tokens.clone()),
    ));
    if !config.psat_clusters.is_empty() {
        let psat = crate::node_attest::PsatAttestor::new(
            config.trust_domain.clone(),
            clock.clone(),
            config.psat_clusters.clone(),
        );
        psat.preload().await;
        attestors = attestors.with(Arc::new(psat));
    }
    let credentials =
        crate::credentials::Credentials::new(store.clone(), Arc::new(sealing), clock.clone());
    let broker = crate::credentials::Broker::new(
        credentials.clone(),
        crate::credentials::Leases::new(store.clone(), clock.clone()),
        tasks.clone(),
        revocations.clone(),
        clock.clone(),
        authorization_server_client(config.credential_ca_file.as_deref())?,
    );
    broker.set_audit(audit.clone());
    let node = NodeApi {
        approvals: approvals.clone(),
        broker: broker.clone(),
        ca: ca.clone(),
        registry: registry.clone(),
        agents: agents.clone(),
        attestors,
        tasks: tasks.clone(),
        policies: policies.clone(),
        enforce: enforce.clone(),
        clock: clock.clone(),
        settings,
        shutdown: shutdown_rx.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
    };
    let pruner = prune(tasks.clone(), store.clone(), shutdown_rx.clone());
    let follower = crate::follow::run(
        store.clone(),
        crate::follow::Views {
            registry: registry.clone(),
            agents: agents.clone(),
            ca: ca.clone(),
            policies: policies.clone(),
            tasks: tasks.clone(),
            enforce: enforce.clone(),
            approvals: approvals.clone(),
        },
        feed_from,
        shutdown_rx.clone(),
    );
    // After a key rotation (a new first line in the key file), secrets
    // sealed with an older key are sealed again with the new one.
    match credentials.reseal().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            providers = n,
            "credential secrets sealed again with the key file's first key"
        ),
        Err(e) => {
            tracing::warn!(err = %lanyard_core::error::report(&e), "credential secrets could not be sealed again with the key file's first key")
        }
    }
    let console = config.console.clone().map(|c| {
        crate::console::Console::new(
            c,
            approvals.clone(),
            tasks.clone(),
            enforce.clone(),
            audit.clone(),
        )
    });
    let console_addr = match &console {
        Some(c) => Some(c.serve(shutdown_rx.clone()).await?),
        None => None,
    };
    let admin = AdminApi {
        console,
        approvals,
        leases: broker.leases().clone(),
        credentials,
        ca: ca.clone(),
        registry,
        agents,
        tokens,
        tasks,
        policies,
        enforce,
        clock: clock.clone(),
        default_token_ttl: config.join_token_ttl,
        audit: audit.clone(),
        shutdown: shutdown_rx.clone(),
    };

    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_addr = match config.metrics_bind {
        Some(bind) => Some(
            lanyard_metrics::serve(bind, prom.clone(), shutdown_rx.clone())
                .await
                .map_err(|e| AppError::Bind(bind, e))?,
        ),
        None => None,
    };
    let oidc_addr = match &config.oidc.serve {
        Some(serve) => Some(
            crate::api::oidc::serve(serve, &config.oidc.issuer, ca.clone(), shutdown_rx.clone())
                .await?,
        ),
        None => None,
    };
    let node_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(lanyard_metrics::CallsLayer::new(node_calls))
        .add_service(NodeServer::new(node))
        .serve_with_incoming_shutdown(
            incoming(listener, tls, config.net),
            stop(shutdown_rx.clone()),
        );
    let admin_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(AdminServer::with_interceptor(admin, check_peer_uid))
        .serve_with_incoming_shutdown(admin_incoming(admin_listener), stop(shutdown_rx.clone()));
    let renewer = renew_identity(identity, ca.clone(), clock, shutdown_rx.clone());
    let rotator = crate::ca::rotator::run(ca.clone(), Some(audit.clone()), shutdown_rx.clone());
    // The record of signed SVIDs is written in batches, off the signing path.
    let issued_writer = revocations.issued().run(shutdown_rx.clone());
    let crl_signer = revocations.run(ca.clone(), shutdown_rx.clone());
    let lease_ender = broker.run(shutdown_rx.clone());

    tracing::info!(
        trust_domain = %td,
        server_id = %server_id,
        datastore = store.kind(),
        %server_addr,
        jwt_issuer = %config.oidc.issuer,
        admin_socket = %config.admin_socket.display(),
        data_dir = %config.data_dir.display(),
        "lanyard-server started"
    );
    let admin_path = config.admin_socket.clone();
    let task = tokio::spawn(async move {
        let (a, b, (), (), (), (), (), (), ()) = tokio::join!(
            node_server,
            admin_server,
            renewer,
            rotator,
            pruner,
            follower,
            crl_signer,
            issued_writer,
            lease_ender
        );
        if let Err(e) = a {
            tracing::error!(?e, "server API stopped");
        }
        if let Err(e) = b {
            tracing::error!(?e, "admin API stopped");
        }
        let _ = std::fs::remove_file(&admin_path);
    });
    Ok(Bound {
        server_addr,
        admin_socket: config.admin_socket,
        ca,
        metrics,
        audit,
        metrics_addr,
        oidc_addr,
        console_addr,
        shutdown,
        task,
    })
}

/// Opens the configured datastore.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    Ok(match &config.datastore {
        Datastore::Sled => Arc::new(SledStore::open(&config.data_dir.join("db"))?),
        Datastore::Postgres(opts) => Arc::new(PgStore::connect(opts).await?),
    })
}

/// This server's ID, made at first start and kept in the data dir: it
/// names the authorities the server owns in a shared database.
pub(crate) fn server_id(dir: &std::path::Path) -> Result<String, AppError> {
    let path = dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if is_server_id(id.trim()) => return Ok(id.trim().to_owned()),
        Ok(_) => {
            return Err(AppError::DataDir(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a server ID (16 lowercase hex digits); remove it to make a new one",
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AppError::DataDir(path, e)),
    }
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::fill(&mut raw)
        .map_err(|_| AppError::DataDir(path.clone(), std::io::Error::other("no randomness")))?;
    let id = hex::encode(raw);
    write_server_id(dir, &id)?;
    tracing::info!(server_id = %id, "created server ID");
    Ok(id)
}

/// Writes the server ID file (restore gives a new data dir the ID of the
/// server it was backed up from).
pub(crate) fn write_server_id(dir: &std::path::Path, id: &str) -> Result<(), AppError> {
    let path = dir.join("server-id");
    if !is_server_id(id) {
        return Err(AppError::DataDir(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a server ID"),
        ));
    }
    let tmp = dir.join("server-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| AppError::DataDir(path.clone(), e))
}

fn is_server_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Re-mints the server's TLS identity at half its lifetime, and as soon as
/// the CA that signed it is no longer the active one.
async fn renew_identity(
    identity: Arc<ServerIdentity>,
    ca: Ca,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = ca.subscribe();
    let mut attempt = 0u32;
    loop {
        let now = clock.now();
        if identity.due(&ca, now) {
            match identity.renew(&ca, clock.as_ref()) {
                Ok(()) => {
                    attempt = 0;
                    tracing::debug!("server TLS identity renewed");
                }
                Err(e) => {
                    attempt += 1;
                    tracing::error!(?e, "server TLS identity renewal failed");
                }
            }
        }
        let wait = if attempt > 0 {
            Duration::from_secs(1 << attempt.min(5))
        } else {
            identity
                .renew_at()
                .duration_since(clock.now())
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(300))
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = changes.changed() => if r.is_err() { return },
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// How long ended and expired tasks stay listed (`task list --all`).
const TASK_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often old task records and expired delegation tokens are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Removes old task records, expired delegation tokens and old changes
/// of a persistent change feed periodically.
async fn prune(tasks: Tasks, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PRUNE_EVERY) => {}
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
        match tasks.prune(TASK_RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "pruned old tasks and delegation tokens"),
            Err(e) => tracing::warn!(%e, "pruning tasks failed"),
        }
        match store
            .prune_changes(crate::store::pg::CHANGE_RETENTION)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(changes = n, "pruned the change feed"),
            Err(e) => tracing::warn!(%e, "pruning the change feed failed"),
        }
    }
}

/// Most admin connections open at once, and per uid.
const ADMIN_MAX_CONNECTIONS: usize = 256;
const ADMIN_MAX_PER_UID: usize = 64;

type AdminConn = lanyard_uds::Limited<lanyard_uds::AuthorityShim<tokio::net::UnixStream>, u32>;

/// Admin socket connections: any `:authority` accepted (see
/// `lanyard_uds::authority`), capped in number per uid and in total.
fn admin_incoming(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AdminConn>> {
    let limits = lanyard_uds::ConnLimiter::new(ADMIN_MAX_CONNECTIONS, ADMIN_MAX_PER_UID);
    let shim = lanyard_uds::ShimLimits::default();
    tokio_stream::StreamExt::filter_map(UnixListenerStream::new(listener), move |conn| match conn {
        Err(e) => Some(Err(e)),
        Ok(stream) => {
            let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
            match limits.try_acquire(uid) {
                Ok(permit) => Some(Ok(lanyard_uds::Limited::new(
                    lanyard_uds::AuthorityShim::new(stream, &shim),
                    permit,
                ))),
                Err(e) => {
                    tracing::warn!(uid, %e, "admin connection refused");
                    None
                }
            }
        }
    })
}
