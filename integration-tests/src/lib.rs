//! Helpers for Lanyard's end-to-end tests: a real server and a real agent
//! running in this process over real sockets, in a temporary directory.
//! Test support panics on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_proto::admin::admin_client::AdminClient;
use lanyard_proto::admin::{CreateEntryRequest, CreateJoinTokenRequest};
use lanyard_proto::types;
use lanyard_uds::unix_channel;

pub mod dns;
pub mod h2raw;
pub mod python;
pub mod server_proc;
use tonic::transport::Channel;

/// The trust domain every test uses.
pub const TD: &str = "example.org";
/// The agent ID tests attest their agent as.
pub const NODE: &str = "spiffe://example.org/node/n1";

/// Installs the process-wide rustls provider (once) and test logging.
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 20 s) until the agent at `socket` serves an X.509-SVID to
/// this process, through the `spiffe` crate, and returns it.
pub async fn wait_for_svid(socket: &Path) -> spiffe::X509Svid {
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(socket))
        .await
        .expect("connect to the agent");
    eventually("an X.509-SVID", Duration::from_secs(20), || {
        let c = client.clone();
        async move { c.fetch_x509_svid().await.ok() }
    })
    .await
}

/// The uid of this process.
pub fn own_uid() -> u32 {
    lanyard_uds::own_uid().unwrap_or(0)
}

/// A server running in this process.
pub struct TestServer {
    /// Its handle.
    pub bound: lanyard_server::Bound,
    /// Its directory.
    pub dir: PathBuf,
}

impl TestServer {
    /// Starts a server in `dir` on `bind` (use port 0 for a free port).
    pub async fn start(dir: &Path, bind: &str) -> Self {
        Self::start_with(dir, bind, |_| {}).await
    }

    /// Starts a server after `tweak` adjusts its configuration.
    pub async fn start_with(
        dir: &Path,
        bind: &str,
        tweak: impl FnOnce(&mut lanyard_server::Config),
    ) -> Self {
        init();
        let mut cfg = lanyard_server::Config::for_dir(TD, dir).expect("config");
        cfg.bind = bind.parse().expect("bind address");
        tweak(&mut cfg);
        let bound = lanyard_server::build(cfg).await.expect("server starts");
        Self {
            bound,
            dir: dir.to_owned(),
        }
    }

    /// The server API address.
    pub fn addr(&self) -> SocketAddr {
        self.bound.server_addr
    }

    /// An admin client.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(unix_channel(&self.bound.admin_socket).expect("admin channel"))
    }

    /// A join token for `agent_id`.
    pub async fn token(&self, agent_id: &str) -> String {
        self.admin()
            .create_join_token(CreateJoinTokenRequest {
                agent_id: agent_id.to_owned(),
                ttl_seconds: 600,
            })
            .await
            .expect("token")
            .into_inner()
            .token
    }

    /// Creates an entry for this process's uid under `parent`.
    pub async fn entry_for_me(&self, spiffe_id: &str, parent: &str, x509_ttl: i64) -> types::Entry {
        self.admin()
            .create_entry(CreateEntryRequest {
                entry: Some(types::Entry {
                    spiffe_id: spiffe_id.to_owned(),
                    parent_id: parent.to_owned(),
                    selectors: vec![format!("unix:uid:{}", own_uid())],
                    x509_ttl_seconds: x509_ttl,
                    ..Default::default()
                }),
            })
            .await
            .expect("create entry")
            .into_inner()
    }

    /// Registers `spiffe_id` for this process under [`NODE`] and starts an
    /// agent attested as [`NODE`] in the server's directory.
    pub async fn agent_with_entry(&self, spiffe_id: &str, x509_ttl: i64) -> lanyard_agent::Bound {
        let token = self.token(NODE).await;
        self.entry_for_me(spiffe_id, NODE, x509_ttl).await;
        start_agent(&self.dir, self.addr(), Some(token))
            .await
            .expect("agent starts")
    }

    /// The subject key ID of the active X.509 CA.
    pub fn active_ca_id(&self) -> String {
        self.bound
            .ca
            .snapshot()
            .active
            .info()
            .subject_key_id
            .clone()
    }

    /// Every registered entry.
    pub async fn entries(&self) -> Vec<types::Entry> {
        self.admin()
            .list_entries(lanyard_proto::admin::ListEntriesRequest::default())
            .await
            .expect("list entries")
            .into_inner()
            .entries
    }

    /// The bundle's DER CA certificates.
    pub fn bundle(&self) -> Vec<Vec<u8>> {
        self.bound.ca.snapshot().authorities.to_vec()
    }

    /// Writes the bundle as PEM into the server's directory and returns the path.
    pub fn write_bundle_pem(&self) -> PathBuf {
        let pem = lanyard_core::x509::der_to_pem("CERTIFICATE", &self.bundle());
        let p = self.dir.join("bundle.pem");
        std::fs::write(&p, pem).expect("write bundle");
        p
    }

    /// Stops the server and closes its database.
    pub async fn stop(self) {
        self.bound.shutdown().await;
    }
}

/// Agent configuration for tests.
pub fn agent_config(
    dir: &Path,
    server: SocketAddr,
    token: Option<String>,
) -> lanyard_agent::Config {
    lanyard_agent::config::RawConfig {
        server: Some(server.to_string()),
        trust_domain: Some(TD.into()),
        join_token: token,
        insecure_bootstrap: Some(true),
        socket: Some(dir.join("agent.sock")),
        data_dir: Some(dir.join("agent-data")),
        ..Default::default()
    }
    .validate()
    .expect("agent config")
}

/// Starts an agent in `dir`.
pub async fn start_agent(
    dir: &Path,
    server: SocketAddr,
    token: Option<String>,
) -> Result<lanyard_agent::Bound, lanyard_agent::app::AppError> {
    init();
    lanyard_agent::build(agent_config(dir, server, token)).await
}

/// The `unix://` endpoint of an agent socket, as SPIFFE clients take it.
pub fn endpoint(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// A node API client authenticated with the agent SVID stored in
/// `data_dir` (as a stolen or stale agent credential would be used).
pub fn node_client_from(
    data_dir: &Path,
    server: SocketAddr,
) -> lanyard_proto::server::node_client::NodeClient<Channel> {
    use lanyard_agent::storage::AgentStorage;
    use lanyard_agent::upstream::client::{node_client, tls_config};
    use lanyard_agent::upstream::creds::{AgentIdentity, ClientCert, Credentials};
    use lanyard_core::tls::SpiffeServerVerifier;
    use std::sync::Arc;
    let stored = AgentStorage::open(data_dir)
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    let creds = Arc::new(Credentials::default());
    creds.set_bundle(Arc::new(stored.bundle));
    creds.set_identity(Some(Arc::new(
        AgentIdentity::new(stored.chain, stored.key_pkcs8).unwrap(),
    )));
    let server_id = lanyard_core::TrustDomain::new(TD)
        .unwrap()
        .id_with_segments(["lanyard", "server"])
        .unwrap();
    let tls = tls_config(
        Arc::new(SpiffeServerVerifier::new(server_id, creds.clone())),
        Some(Arc::new(ClientCert(creds))),
    )
    .unwrap();
    node_client(&server.to_string(), tls).unwrap()
}

/// The audit export of the server behind `admin` (its whole chain, closed
/// by a signed checkpoint), verified with the server's public key; returns
/// the records (checkpoints left out) as JSON values.
pub async fn verified_audit(mut admin: AdminClient<Channel>) -> Vec<serde_json::Value> {
    let key = admin
        .get_audit_key(lanyard_proto::admin::GetAuditKeyRequest {})
        .await
        .expect("audit key")
        .into_inner();
    let mut s = admin
        .read_audit(lanyard_proto::admin::ReadAuditRequest {
            export: true,
            ..Default::default()
        })
        .await
        .expect("audit export")
        .into_inner();
    let keys = lanyard_core::audit::parse_public_keys(&key.public_key_pem).expect("key PEM");
    let mut v = lanyard_core::audit::Verifier::new(keys);
    let mut out = vec![];
    while let Some(line) = s.message().await.expect("export line") {
        v.feed(&line.line).expect("export verifies");
        let value: serde_json::Value = serde_json::from_str(&line.line).expect("JSON");
        if value.get("checkpoint").is_none() {
            out.push(value);
        }
    }
    v.finish().expect("export verifies to its end");
    out
}
