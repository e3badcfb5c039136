//! The shared store: PostgreSQL, for several servers on one database.
//!
//! - `tokio-postgres` with a `deadpool` pool: async all the way, no ORM or
//!   compile-time query checking to build (sqlx's macros need a live
//!   database or checked-in query data at build time), and rustls for TLS
//!   like the rest of Lanyard. Every query is parameterised; table names are
//!   constants.
//! - Records are JSON (`jsonb`) in one table per kind, keyed like sled's
//!   trees, so both stores hold the same documents and `datastore migrate`
//!   copies them unchanged.
//! - Schema migrations are numbered, applied at start under an advisory
//!   lock (several servers may start at once) and recorded in
//!   `lanyard_schema_migrations`; a database newer than this binary is
//!   refused.
//! - The change feed is the `lanyard_changes` table, written in the same
//!   transaction as the change. Its sequence comes from a one-row counter
//!   updated last in each transaction: the row lock orders writers, so
//!   sequence order is commit order and a follower reading `seq > N` never
//!   skips a change that commits later with a smaller number. `NOTIFY
//!   lanyard_changes` (sent at commit) only wakes followers; what they read
//!   is the table, so a server that was disconnected catches up. Changes
//!   older than [`CHANGE_RETENTION`] are pruned; a follower further behind
//!   is told to reload ([`Feed::Gap`]).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio::sync::watch;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, NoTls, Transaction};

use super::{Change, ChangeKind, Feed, Row, Store, StoreError, Swap, Table, Write};

mod records;

/// The NOTIFY channel.
const CHANNEL: &str = "lanyard_changes";
/// How long changes stay in the feed.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(3600);
/// Connections in the pool.
const POOL_SIZE: usize = 16;

/// The schema, one step per version; never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: every record kind, the change feed and its counter.
    "CREATE TABLE lanyard_entries (id text PRIMARY KEY, identity text NOT NULL UNIQUE, data jsonb NOT NULL);
     CREATE TABLE lanyard_agents (id text PRIMARY KEY, data jsonb NOT NULL);
     CREATE TABLE lanyard_join_tokens (id text PRIMARY KEY, data jsonb NOT NULL);
     CREATE TABLE lanyard_ca_keys (id text PRIMARY KEY, owner text NOT NULL, data jsonb NOT NULL);
     CREATE TABLE lanyard_jwt_keys (id text PRIMARY KEY, owner text NOT NULL, data jsonb NOT NULL);
     CREATE TABLE lanyard_tasks (id text PRIMARY KEY, data jsonb NOT NULL);
     CREATE TABLE lanyard_policies (version bigint PRIMARY KEY, data jsonb NOT NULL);
     CREATE TABLE lanyard_delegations (id text PRIMARY KEY, data jsonb NOT NULL);
     CREATE TABLE lanyard_counters (name text PRIMARY KEY, value bigint NOT NULL);
     CREATE TABLE lanyard_changes (seq bigint PRIMARY KEY, kind text NOT NULL, key text NOT NULL,
                                   at timestamptz NOT NULL DEFAULT now());
     CREATE INDEX lanyard_changes_at ON lanyard_changes (at);
     CREATE TABLE lanyard_change_head (one boolean PRIMARY KEY DEFAULT true CHECK (one), seq bigint NOT NULL);
     INSERT INTO lanyard_change_head (one, seq) VALUES (true, 0);",
    // 2: small documents (revocations, quarantines, CRLs).
    "CREATE TABLE lanyard_docs (kind text NOT NULL, id text NOT NULL, data jsonb NOT NULL,
                                PRIMARY KEY (kind, id));",
];

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/db?sslmode=...` (or a libpq
    /// key=value string).
    pub url: String,
    /// PEM file of CA certificates that sign the database server's
    /// certificate; required when `sslmode=require`.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_password(&self.url))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The URL with any password replaced by `***` (for logs).
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let masked = if userinfo.contains(':') {
        format!("{user}:***@")
    } else if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    let tail = match tail.split_once('?') {
        None => tail.to_owned(),
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|kv| {
                    if kv.starts_with("password=") {
                        "password=***"
                    } else {
                        kv
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
    };
    format!("{scheme}://{masked}{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact_password("postgres://lanyard:s3cret@db:5432/l?sslmode=require"),
            "postgres://lanyard:***@db:5432/l?sslmode=require"
        );
        assert_eq!(
            redact_password("postgres://lanyard@db/l?password=s3cret&sslmode=require"),
            "postgres://lanyard@db/l?password=***&sslmode=require"
        );
        assert_eq!(redact_password("postgres://db/l"), "postgres://db/l");
        let o = PgOptions {
            url: "postgres://u:pw@h/d".into(),
            ca_file: None,
        };
        assert!(!format!("{o:?}").contains("pw"));
    }
}

impl PgOptions {
    /// Whether `url` names a PostgreSQL database.
    pub fn is_postgres_url(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }
}

/// [`Store`] on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    wake: Arc<watch::Sender<u64>>,
    _listener: Arc<Listener>,
}

/// The change listener's task, stopped with the last store handle.
struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::caused(format!("postgres: {}", d.message()), e),
        None => StoreError::caused(format!("postgres: {e}"), e),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::caused(format!("cannot reach the database: {e}"), e)
}

/// Column `i` of `row`, or a clear error (a schema that does not match
/// this binary must not panic the server).
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| StoreError::Corrupt {
        key: format!("column {i}"),
        reason: e.to_string(),
    })
}

fn i64_of(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::backend(format!("{v} does not fit a bigint")))
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The unique constraint a failed insert or update hit, if any.
fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let d = e.as_db_error()?;
    (d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        .then(|| d.constraint().unwrap_or(""))
}

/// Appends a change in `tx`; must be the transaction's last statement
/// before commit (it takes the feed's row lock).
async fn record(tx: &Transaction<'_>, kind: ChangeKind, key: &str) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "WITH h AS (UPDATE lanyard_change_head SET seq = seq + 1 RETURNING seq),
                  i AS (INSERT INTO lanyard_changes (seq, kind, key) SELECT seq, $1, $2 FROM h RETURNING seq)
             SELECT seq, pg_notify('lanyard_changes', seq::text) FROM i",
            &[&kind.as_str(), &key],
        )
        .await
        .map_err(db)?;
    Ok(u64_of(col(&row, 0)?))
}

fn tls_connector(
    opts: &PgOptions,
    mode: SslMode,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(path) = &opts.ca_file else {
        if mode == SslMode::Require {
            return Err(StoreError::backend(
                "the datastore URL asks for sslmode=require: give the CA that signs the database's certificate with --datastore-ca FILE",
            ));
        }
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| StoreError::caused(format!("datastore CA {}: {e}", path.display()), e))?;
    if certs.is_empty() {
        return Err(StoreError::backend(format!(
            "datastore CA {}: no certificate in it",
            path.display()
        )));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| StoreError::caused(format!("datastore CA {}: {e}", path.display()), e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::caused(format!("TLS: {e}"), e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

impl PgStore {
    /// Connects, applies pending migrations and starts listening for
    /// changes.
    pub async fn connect(opts: &PgOptions) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(&opts.url)
            .map_err(|e| StoreError::caused(format!("datastore URL: {e}"), e))?;
        let tls = tls_connector(opts, config.get_ssl_mode())?;
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(t) => Manager::from_config(config.clone(), t.clone(), mgr_config),
            None => Manager::from_config(config.clone(), NoTls, mgr_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::caused(format!("datastore pool: {e}"), e))?;
        let store = Self {
            pool,
            wake: Arc::new(watch::channel(0).0),
            _listener: Arc::new(Listener(tokio::spawn(async {}))),
        };
        store.migrate().await?;
        let head = store.last_change().await?;
        store.wake.send_replace(head);
        let listener = tokio::spawn(listen(config, tls, store.wake.clone()));
        Ok(Self {
            _listener: Arc::new(Listener(listener)),
            ..store
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Applies every migration newer than the database's version, under
    /// an advisory lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock(7316827041)", &[])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS lanyard_schema_migrations (
                 version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM lanyard_schema_migrations",
                &[],
            )
            .await
            .map_err(db)?;
        let current: i32 = col(&row, 0)?;
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if current > known {
            return Err(StoreError::backend(format!(
                "the database schema is version {current}, newer than this lanyard-server knows ({known}); upgrade the server"
            )));
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO lanyard_schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(db)?;
            tracing::info!(version, "applied datastore schema migration");
        }
        tx.commit().await.map_err(db)
    }

    /// Removes changes older than `age` (followers further behind reload).
    async fn prune_feed(&self, age: Duration) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let secs = age.as_secs_f64();
        c.execute(
            "DELETE FROM lanyard_changes WHERE at < now() - make_interval(secs => $1)
             AND seq < (SELECT seq FROM lanyard_change_head)",
            &[&secs],
        )
        .await
        .map_err(db)
    }
}

/// Holds a dedicated connection that LISTENs for change notifications and
/// turns them into wake-ups; reconnects with backoff, and wakes followers
/// after a reconnect so they read what they missed.
async fn listen(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    wake: Arc<watch::Sender<u64>>,
) {
    let mut backoff =
        lanyard_core::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        let outcome = match &tls {
            Some(t) => listen_once(&config, t.clone(), &wake).await,
            None => listen_once(&config, NoTls, &wake).await,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "datastore change listener disconnected; reconnecting");
        }
        if started.elapsed() > Duration::from_secs(30) {
            // It had been up for a while: a fresh outage starts fast.
            backoff.succeeded();
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    wake: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(Ok(n.payload().parse::<u64>().unwrap_or(0)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => return,
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Whatever committed while this connection was down.
        let head: i64 = client
            .query_one("SELECT seq FROM lanyard_change_head", &[])
            .await?
            .try_get(0)?;
        wake.send_modify(|v| *v = (*v).max(u64_of(head)));
        while let Some(msg) = rx.recv().await {
            let seq = msg?;
            wake.send_modify(|v| *v = (*v).max(seq));
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Value>, StoreError> {
        self.get_record(table, key).await
    }

    async fn list(&self, table: Table) -> Result<Vec<(String, Value)>, StoreError> {
        self.list_records(table).await
    }

    async fn write(&self, table: Table, row: &Row, how: Write) -> Result<(), StoreError> {
        self.write_record(table, row, how).await
    }

    async fn swap(
        &self,
        table: Table,
        key: &str,
        matches: &(dyn for<'v> Fn(Option<&'v Value>) -> bool + Send + Sync),
        new: Option<&Row>,
    ) -> Result<Swap<Value>, StoreError> {
        self.swap_record(table, key, matches, new).await
    }

    async fn take(
        &self,
        table: Table,
        key: &str,
        announce: bool,
    ) -> Result<Option<Value>, StoreError> {
        self.take_record(table, key, announce).await
    }

    async fn counter(&self, name: &str) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT value FROM lanyard_counters WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db)?;
        row.map_or(Ok(0), |r| col(&r, 0).map(u64_of))
    }

    async fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let row = tx
            .query_one(
                "INSERT INTO lanyard_counters (name, value) VALUES ($1, 1)
                 ON CONFLICT (name) DO UPDATE SET value = lanyard_counters.value + 1
                 RETURNING value",
                &[&name],
            )
            .await
            .map_err(db)?;
        record(&tx, ChangeKind::Counter, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(u64_of(col(&row, 0)?))
    }

    async fn raise_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let v = i64_of(value)?;
        tx.execute(
            "INSERT INTO lanyard_counters (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = GREATEST(lanyard_counters.value, EXCLUDED.value)",
            &[&name, &v],
        )
        .await
        .map_err(db)?;
        record(&tx, ChangeKind::Counter, name).await?;
        tx.commit().await.map_err(db)
    }

    async fn last_change(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT seq FROM lanyard_change_head", &[])
            .await
            .map_err(db)?;
        Ok(u64_of(col(&row, 0)?))
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Feed, StoreError> {
        // The head first: every change up to it has committed (the head
        // moves in the same transaction), so a missing one was pruned.
        let head = self.last_change().await?;
        if after >= head {
            return Ok(Feed::Changes(Vec::new()));
        }
        let c = self.client().await?;
        let (after_i, head_i, limit_i) = (
            i64_of(after)?,
            i64_of(head)?,
            i64::try_from(limit.max(1)).unwrap_or(i64::MAX),
        );
        let stmt = c
            .prepare_cached(
                "SELECT seq, kind, key FROM lanyard_changes WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            )
            .await
            .map_err(db)?;
        let rows = c
            .query(&stmt, &[&after_i, &head_i, &limit_i])
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let seq = u64_of(col(&r, 0)?);
            let kind: String = col(&r, 1)?;
            let key: String = col(&r, 2)?;
            let kind = ChangeKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
                key: format!("lanyard_changes/{seq}"),
                reason: format!("unknown change kind {kind:?}"),
            })?;
            out.push(Change { seq, kind, key });
        }
        Ok(match out.first() {
            Some(first) if first.seq == after + 1 => Feed::Changes(out),
            _ => Feed::Gap { last: head },
        })
    }

    async fn prune_changes(&self, age: Duration) -> Result<u64, StoreError> {
        self.prune_feed(age).await
    }

    fn wake(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}
