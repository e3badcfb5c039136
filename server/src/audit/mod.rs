//! The server's audit log: this server's own hash chain (its ID names the
//! chain), kept in append-only segment files in the data dir, checkpoints
//! signed by an audit key of its own, records from every part of the
//! server and from agents (shipped over the node API, exactly once).
//!
//! [`Audit`] is the cheap handle every part holds; [`Audit::record`]
//! returns once the record is on disk (group commit: one fsync for every
//! record queued meanwhile).

mod events;
mod segments;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::audit::{AuditKey, AuditPublicKey, Checkpoint, Event, Kind};
use lanyard_core::clock::{Clock, format_rfc3339_millis};
use tokio::sync::{mpsc, oneshot, watch};

pub use events::Actor;
use writer::{Cmd, Writer};

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    /// A file could not be read or written.
    #[error("audit log {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A file holds something that is not part of a chain.
    #[error(
        "audit log {0} line {1} is corrupt ({2}); run `lanyard-server audit verify --file` on a copy and move the damaged segment aside to start"
    )]
    Corrupt(PathBuf, u64, String),
    /// The audit key file is unusable.
    #[error("audit key {0}: {1}")]
    Key(PathBuf, String),
    /// The writer refused or is gone.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

impl AuditLogError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Self::Io(path.to_owned(), e)
    }
    pub(crate) fn corrupt(path: &Path, line: u64, what: impl Into<String>) -> Self {
        Self::Corrupt(path.to_owned(), line, what.into())
    }
}

/// Retention and checkpoint settings.
#[derive(Debug, Clone, Copy)]
pub struct AuditSettings {
    /// A checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or this long after the last one, if records are uncovered.
    pub checkpoint_interval: Duration,
    /// A new segment file once the current one reaches this size.
    pub segment_bytes: u64,
    /// Segments whose newest record is older than this are removed.
    pub retention: Option<Duration>,
    /// Segments are removed while at least this many newer records remain.
    pub max_records: Option<u64>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            segment_bytes: 64 << 20,
            retention: Some(Duration::from_secs(90 * 86_400)),
            max_records: None,
        }
    }
}

/// Where a part of the server that changes state finds the audit log: set
/// once by the composition root (unit tests of a part may leave it unset).
#[derive(Default)]
pub struct AuditHook(std::sync::OnceLock<Audit>);

impl AuditHook {
    /// Connects the log.
    pub fn set(&self, audit: Audit) {
        let _ = self.0.set(audit);
    }

    /// Records the event `build` makes (after the change it describes was
    /// made; a failure is logged).
    pub async fn note(&self, build: impl FnOnce(&Audit) -> Event) {
        if let Some(a) = self.0.get() {
            a.note(build(a)).await;
        }
    }
}

/// Most commands waiting for the writer (producers wait beyond it).
const QUEUE: usize = 8192;
/// The audit key's file in the audit directory.
const KEY_FILE: &str = "key.pk8";

/// The handle to this server's audit log.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Cmd>,
    head: watch::Receiver<u64>,
    dir: PathBuf,
    chain: String,
    public: AuditPublicKey,
    key: Arc<AuditKey>,
    clock: Arc<dyn Clock>,
    /// Turns true once the writer thread has written its last line.
    stopped: watch::Receiver<bool>,
    /// Records by kind (and decision), for the metrics endpoint.
    events: lanyard_metrics::CounterFamily,
}

fn count(events: &lanyard_metrics::CounterFamily, e: &Event) {
    let decision = if e.decision.is_empty() {
        "-"
    } else {
        e.decision.as_str()
    };
    let decision = if matches!(decision, "allow" | "deny" | "-") {
        decision
    } else {
        "other"
    };
    events
        .get_or_create(&lanyard_metrics::labels(&[
            ("kind", e.kind.as_str()),
            ("decision", decision),
        ]))
        .inc();
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("chain", &self.chain)
            .field("key", &self.public.id())
            .finish_non_exhaustive()
    }
}

/// The audit directory of a data dir.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// Loads the audit key, creating it (0600) on first start.
pub fn load_or_create_key(dir: &Path) -> Result<AuditKey, AuditLogError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(der) => AuditKey::from_pkcs8(&der).map_err(|e| AuditLogError::Key(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, pkcs8) = AuditKey::generate()
                .map_err(|e| AuditLogError::Key(path.clone(), e.to_string()))?;
            writer::write_synced(&path, &pkcs8)?;
            tracing::info!(key_id = %key.public().id(), "created the audit key");
            Ok(key)
        }
        Err(e) => Err(AuditLogError::io(&path, e)),
    }
}

/// Reads the public audit key of a data dir (for `audit key` and offline
/// tools), without starting anything.
pub fn public_key(data_dir: &Path) -> Result<AuditPublicKey, AuditLogError> {
    let path = audit_dir(data_dir).join(KEY_FILE);
    let der = std::fs::read(&path).map_err(|e| AuditLogError::io(&path, e))?;
    AuditKey::from_pkcs8(&der)
        .map(|k| k.public())
        .map_err(|e| AuditLogError::Key(path, e.to_string()))
}

impl Audit {
    /// Opens (recovering) the log in `data_dir/audit` and starts its
    /// writer thread, which stops once every handle is dropped.
    pub fn open(
        data_dir: &Path,
        chain: &str,
        clock: Arc<dyn Clock>,
        settings: AuditSettings,
    ) -> Result<Self, AuditLogError> {
        let dir = audit_dir(data_dir);
        create_private_dir(&dir)?;
        let key = Arc::new(load_or_create_key(&dir)?);
        let tail = segments::recover(&dir)?;
        let (head_tx, head) = watch::channel(tail.last_seq);
        let public = key.public();
        let events = lanyard_metrics::CounterFamily::default();
        let writer = Writer::new(
            dir.clone(),
            chain.to_owned(),
            key.clone(),
            clock.clone(),
            settings,
            tail,
            writer::Published {
                head: head_tx,
                events: events.clone(),
            },
        )?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stopped_tx, stopped) = watch::channel(false);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                writer.run(rx);
                let _ = stopped_tx.send(true);
            })
            .map_err(|e| AuditLogError::io(&dir, e))?;
        // Time-based checkpoints: a tick while any handle lives (the
        // ticker holds no handle of its own, so it never keeps the log
        // open).
        let weak = tx.downgrade();
        let every = settings.checkpoint_interval.min(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tx) = weak.upgrade() else { return };
                let _ = tx.try_send(Cmd::Tick);
            }
        });
        tracing::info!(chain, key_id = %public.id(), last_seq = *head.borrow(), "audit log open");
        Ok(Self {
            tx,
            head,
            dir,
            chain: chain.to_owned(),
            public,
            key,
            clock,
            stopped,
            events,
        })
    }

    /// The counter of records by kind, to register with the metrics.
    pub fn events(&self) -> lanyard_metrics::CounterFamily {
        self.events.clone()
    }

    /// A new event of `kind`, timed now.
    pub fn event(&self, kind: Kind) -> Event {
        Event::new(kind, format_rfc3339_millis(self.clock.now()))
    }

    async fn ask<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, AuditLogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(cmd(reply))
            .await
            .map_err(|_| AuditLogError::Unavailable("the writer stopped".into()))?;
        rx.await
            .map_err(|_| AuditLogError::Unavailable("the writer stopped".into()))
    }

    /// Appends events; returns once they are on disk, with the last
    /// record's sequence number.
    pub async fn record_all(&self, events: Vec<Event>) -> Result<u64, AuditLogError> {
        for e in &events {
            count(&self.events, e);
        }
        self.ask(|reply| Cmd::Append { events, reply })
            .await?
            .map_err(AuditLogError::Unavailable)
    }

    /// Appends one event (see [`Audit::record_all`]).
    pub async fn record(&self, event: Event) -> Result<u64, AuditLogError> {
        self.record_all(vec![event]).await
    }

    /// Appends an event and logs (rather than returns) a failure: for
    /// changes already made, where refusing the answer would not undo them.
    pub async fn note(&self, event: Event) {
        let kind = event.kind;
        if let Err(e) = self.record(event).await {
            tracing::error!(kind = kind.as_str(), %e, "audit record lost");
        }
    }

    /// Appends records an agent shipped (its queue `epoch`, each with its
    /// sequence number there); those already in the chain are skipped.
    /// Returns the highest of that queue's numbers now in the chain.
    pub async fn append_shipped(
        &self,
        agent: &str,
        epoch: &str,
        records: Vec<(u64, Event)>,
    ) -> Result<u64, AuditLogError> {
        for (_, e) in &records {
            count(&self.events, e);
        }
        self.ask(|reply| Cmd::Remote {
            origin_agent: agent.to_owned(),
            epoch: epoch.to_owned(),
            records,
            reply,
        })
        .await?
        .map_err(AuditLogError::Unavailable)
    }

    /// A checkpoint of the current head, signed now.
    pub async fn sign_head(&self) -> Result<Checkpoint, AuditLogError> {
        self.ask(|reply| Cmd::Sign { reply }).await
    }

    /// Signs a checkpoint for record `seq` with hash `hash`, as read from
    /// this server's own log (an export's anchor and closing line).
    pub fn sign_at(&self, seq: u64, hash: &[u8; 32]) -> Checkpoint {
        Checkpoint::sign(
            &self.key,
            &self.chain,
            seq,
            hash,
            format_rfc3339_millis(self.clock.now()),
            false,
        )
    }

    /// Applies retention now; returns the number of records pruned.
    pub async fn prune(&self) -> Result<u64, AuditLogError> {
        self.ask(|reply| Cmd::Prune { reply })
            .await?
            .map_err(AuditLogError::Unavailable)
    }

    /// Drops this handle and waits (at most `limit`) until the writer has
    /// stopped, which it does once every other handle is gone too: a
    /// server restarted in the same process must not find the old writer
    /// still appending.
    pub async fn close(self, limit: Duration) {
        let mut stopped = self.stopped.clone();
        drop(self);
        if tokio::time::timeout(limit, stopped.wait_for(|s| *s))
            .await
            .is_err()
        {
            tracing::warn!("the audit writer did not stop in time");
        }
    }

    /// This chain's name (the server ID).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The public audit key.
    pub fn public_key(&self) -> &AuditPublicKey {
        &self.public
    }

    /// The last sequence number written, as it changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Reads every line on disk, in order, until `each` returns false.
    pub fn read(&self, each: impl FnMut(&str) -> bool) -> Result<(), AuditLogError> {
        segments::read_all(&self.dir, each)
    }

    /// Reads from the segment holding record `after + 1` on (see
    /// [`Audit::read`]; earlier lines of that segment are passed too).
    pub fn read_after(
        &self,
        after: u64,
        each: impl FnMut(&str) -> bool,
    ) -> Result<(), AuditLogError> {
        segments::read_after(&self.dir, after, each)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), AuditLogError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| AuditLogError::io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| AuditLogError::io(dir, e))
}

#[cfg(test)]
mod tests;
