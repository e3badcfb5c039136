//! The agent's durable audit queue: every decision record is written to a
//! file in the data dir before the decision is answered (so it survives
//! a killed agent), synced in groups every few milliseconds (so a power
//! cut loses at most those), shipped to the server in batches over the
//! agent's mTLS channel, and removed only once the server acknowledged it.
//!
//! Files in `DATA_DIR/audit-queue/`: `epoch` (random, made with the
//! directory: a new data dir is a new epoch, so the server's
//! de-duplication by (agent, epoch, seq) gives exactly-once delivery),
//! `acked` (the highest sequence number the server holds), and segments
//! `q-<first seq>.jsonl` of `{"seq":N,"event":{...}}` lines.
//!
//! A full queue (`max_bytes` of records not yet acknowledged) refuses new
//! records: the decision point then denies ("audit unavailable") rather
//! than decide without a record, and the health check says so.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_core::audit::Event;
use lanyard_proto::server::node_client::NodeClient;
use lanyard_proto::server::{AppendAuditRequest, AuditItem};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

/// Queue settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Most bytes of records on disk waiting for the server.
    pub max_bytes: u64,
    /// How often written records are synced.
    pub sync_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            sync_interval: Duration::from_millis(5),
        }
    }
}

/// Why the queue could not be opened or take a record.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A file could not be read or written.
    #[error("audit queue {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The queue holds `max_bytes` of records the server has not taken.
    #[error("audit queue full ({0} bytes waiting for the server)")]
    Full(u64),
    /// A record could not be encoded.
    #[error("audit record: {0}")]
    Encode(String),
}

fn io(path: &Path, e: std::io::Error) -> QueueError {
    QueueError::Io(path.to_owned(), e)
}

const SEGMENT_BYTES: u64 = 16 << 20;
/// A segment whose every record is acknowledged is left for a fresh one
/// (and removed) once it holds this much, or a quarter of the queue's
/// room when that is less: not after every batch, which would cost a new
/// file and its directory sync each time.
const ROLL_ACKED: u64 = 1 << 20;
/// Most records per AppendAudit call, and most bytes.
const BATCH: usize = 1000;
const BATCH_BYTES: usize = 2 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A queue line is `SEQ<TAB>EVENT-JSON`: the shipper sends the event's
/// text as written, without parsing it again.
fn split_line(t: &str) -> Option<(u64, &str)> {
    let (seq, json) = t.split_once('\t')?;
    let seq = seq.parse().ok()?;
    // Well-formed JSON (cheap: nothing is built), so that a line damaged
    // on disk is skipped here rather than refused by the server forever.
    serde_json::from_str::<serde::de::IgnoredAny>(json).ok()?;
    Some((seq, json))
}

/// After a batch smaller than a full one, the shipper waits this long for
/// more records, so that a steady trickle of decisions is shipped in
/// batches rather than one call each.
const LINGER: Duration = Duration::from_millis(50);

struct Segment {
    first: u64,
    path: PathBuf,
    size: u64,
}

struct State {
    file: File,
    segments: VecDeque<Segment>,
    next_seq: u64,
    acked: u64,
    /// Bytes on disk in segments not yet removed.
    bytes: u64,
    dirty: bool,
}

struct Inner {
    dir: PathBuf,
    epoch: String,
    settings: QueueSettings,
    state: Mutex<State>,
    wake: Notify,
    full: watch::Sender<bool>,
    /// Where the last batch read ended: (segment's first seq, byte offset
    /// after its last line, its last seq), so the next batch reads on from
    /// there instead of parsing the segment again.
    cursor: Mutex<Option<(u64, u64, u64)>>,
}

/// The queue (cheap `Clone`).
#[derive(Clone)]
pub struct AuditQueue {
    inner: Arc<Inner>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("q-{first:020}.jsonl"))
}

fn new_epoch() -> Result<String, std::io::Error> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| std::io::Error::other("no randomness"))?;
    Ok(hex::encode(b))
}

/// Reads a segment's records; a torn last line is cut off when `repair`.
fn read_segment(path: &Path, repair: bool) -> Result<(Vec<(u64, String)>, u64), QueueError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(repair)
        .open(path)
        .map_err(|e| io(path, e))?;
    let mut out = vec![];
    let mut good = 0u64;
    let mut r = BufReader::new(&mut f);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).map_err(|e| io(path, e))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        good += n as u64;
        match std::str::from_utf8(&buf[..n - 1])
            .ok()
            .and_then(split_line)
            .map(|(seq, t)| (seq, t.to_owned()))
        {
            Some(rec) => out.push(rec),
            None => tracing::error!(file = %path.display(), "unreadable audit queue line skipped"),
        }
    }
    drop(r);
    if repair {
        let size = f.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
        if size != good {
            tracing::warn!(file = %path.display(), "audit queue: a write cut off by a crash was truncated");
            f.set_len(good).map_err(|e| io(path, e))?;
            f.sync_all().map_err(|e| io(path, e))?;
        }
    }
    Ok((out, good))
}

impl AuditQueue {
    /// Opens (creating) the queue in `data_dir/audit-queue`.
    pub fn open(data_dir: &Path, settings: QueueSettings) -> Result<Self, QueueError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = data_dir.join("audit-queue");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(&dir, e))?;
        let epoch_path = dir.join("epoch");
        let epoch = match std::fs::read_to_string(&epoch_path) {
            Ok(e) if !e.trim().is_empty() => e.trim().to_owned(),
            _ => {
                let e = new_epoch().map_err(|e| io(&epoch_path, e))?;
                crate::storage::write_atomic(&epoch_path, e.as_bytes(), 0o600)
                    .map_err(|e| io(&epoch_path, e))?;
                e
            }
        };
        let acked_path = dir.join("acked");
        let acked = std::fs::read_to_string(&acked_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut firsts = vec![];
        for ent in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let ent = ent.map_err(|e| io(&dir, e))?;
            let name = ent.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("q-"))
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(n);
            }
        }
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        let mut next_seq = acked + 1;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = segment_path(&dir, first);
            let (recs, size) = read_segment(&path, i + 1 == count)?;
            if let Some((last, _)) = recs.last() {
                next_seq = next_seq.max(last + 1);
            }
            segments.push_back(Segment { first, path, size });
        }
        let bytes = segments.iter().map(|s| s.size).sum();
        let file = match segments.back() {
            Some(s) => std::fs::OpenOptions::new()
                .append(true)
                .open(&s.path)
                .map_err(|e| io(&s.path, e))?,
            None => {
                let seg = Self::create_segment(&dir, next_seq)?;
                let f = seg.1;
                segments.push_back(seg.0);
                f
            }
        };
        let q = Self {
            inner: Arc::new(Inner {
                dir,
                epoch,
                settings,
                state: Mutex::new(State {
                    file,
                    segments,
                    next_seq,
                    acked,
                    bytes,
                    dirty: false,
                }),
                wake: Notify::new(),
                full: watch::channel(false).0,
                cursor: Mutex::new(None),
            }),
        };
        q.drop_acked();
        let waiting = next_seq.saturating_sub(acked + 1);
        tracing::info!(epoch = %q.inner.epoch, waiting, "audit queue open");
        Ok(q)
    }

    fn create_segment(dir: &Path, first: u64) -> Result<(Segment, File), QueueError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = segment_path(dir, first);
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
        Ok((
            Segment {
                first,
                path,
                size: 0,
            },
            f,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue's epoch.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// Whether the queue is full, as it changes.
    pub fn full(&self) -> watch::Receiver<bool> {
        self.inner.full.subscribe()
    }

    /// Records not yet acknowledged by the server.
    pub fn waiting(&self) -> u64 {
        let s = self.lock();
        s.next_seq.saturating_sub(s.acked + 1)
    }

    /// Writes one record (to the kernel: it survives the agent being
    /// killed; synced within `sync_interval`). Returns its number.
    pub fn append(&self, event: Event) -> Result<u64, QueueError> {
        let json = serde_json::to_string(&event).map_err(|e| QueueError::Encode(e.to_string()))?;
        let mut s = self.lock();
        let seq = s.next_seq;
        let line = format!("{seq}\t{json}\n");
        let len = line.len() as u64;
        if s.bytes + len > self.inner.settings.max_bytes {
            self.inner
                .full
                .send_if_modified(|f| !std::mem::replace(f, true));
            return Err(QueueError::Full(s.bytes));
        }
        if s.segments.back().is_some_and(|g| g.size >= SEGMENT_BYTES) {
            let (seg, f) = Self::create_segment(&self.inner.dir, seq)?;
            // The full segment's last records are synced before it is
            // left behind.
            let _ = s.file.sync_data();
            s.file = f;
            s.segments.push_back(seg);
        }
        if let Err(e) = s.file.write_all(line.as_bytes()) {
            // A short write leaves a torn line: cut it off.
            let size = s.segments.back().map_or(0, |g| g.size);
            let _ = s.file.set_len(size);
            return Err(io(&self.inner.dir, e));
        }
        if let Some(g) = s.segments.back_mut() {
            g.size += len;
        }
        s.bytes += len;
        s.next_seq += 1;
        s.dirty = true;
        drop(s);
        self.inner.wake.notify_one();
        Ok(seq)
    }

    /// Syncs written records every `sync_interval` until `stop`.
    pub async fn run_sync(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.settings.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    let _ = self.sync_now().await;
                    return;
                }
            }
            if let Err(e) = self.sync_now().await {
                tracing::error!(%e, "audit queue sync failed");
            }
        }
    }

    async fn sync_now(&self) -> Result<(), QueueError> {
        let f = {
            let mut s = self.lock();
            if !s.dirty {
                return Ok(());
            }
            s.dirty = false;
            s.file.try_clone().map_err(|e| io(&self.inner.dir, e))?
        };
        tokio::task::spawn_blocking(move || f.sync_data())
            .await
            .map_err(|e| io(&self.inner.dir, std::io::Error::other(e.to_string())))?
            .map_err(|e| io(&self.inner.dir, e))
    }

    /// Records after `after`, up to a batch, read from the segments (from
    /// where the last batch ended, when it ended at `after`).
    fn pending(&self, after: u64) -> Result<Vec<AuditItem>, QueueError> {
        let segs: Vec<(u64, PathBuf)> = {
            let s = self.lock();
            s.segments
                .iter()
                .map(|g| (g.first, g.path.clone()))
                .collect()
        };
        let cursor = *self.inner.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let (start, mut offset) = match cursor {
            Some((first, off, last)) if last == after => {
                (segs.iter().position(|(f, _)| *f == first), off)
            }
            _ => (None, 0),
        };
        let start = start.unwrap_or_else(|| {
            offset = 0;
            segs.iter()
                .rposition(|(first, _)| *first <= after + 1)
                .unwrap_or(0)
        });
        let mut out = vec![];
        let mut bytes = 0;
        let mut end = None;
        'segments: for (first, path) in segs.into_iter().skip(start) {
            let mut f = match File::open(&path) {
                Ok(f) => f,
                // Removed meanwhile (acknowledged).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    offset = 0;
                    continue;
                }
                Err(e) => return Err(io(&path, e)),
            };
            f.seek(SeekFrom::Start(offset)).map_err(|e| io(&path, e))?;
            let mut r = BufReader::new(f);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf).map_err(|e| io(&path, e))?;
                if n == 0 || buf.last() != Some(&b'\n') {
                    break;
                }
                offset += n as u64;
                let Some((seq, json)) =
                    std::str::from_utf8(&buf[..n - 1]).ok().and_then(split_line)
                else {
                    tracing::error!(file = %path.display(), "unreadable audit queue line skipped");
                    continue;
                };
                if seq <= after {
                    continue;
                }
                bytes += json.len();
                end = Some((first, offset, seq));
                out.push(AuditItem {
                    seq,
                    event_json: json.to_owned(),
                });
                if out.len() >= BATCH || bytes >= BATCH_BYTES {
                    break 'segments;
                }
            }
            offset = 0;
        }
        if end.is_some() {
            *self.inner.cursor.lock().unwrap_or_else(|p| p.into_inner()) = end;
        }
        Ok(out)
    }

    /// The server holds everything up to `through`: drops it.
    fn ack(&self, through: u64) -> Result<(), QueueError> {
        {
            let mut s = self.lock();
            if through <= s.acked {
                return Ok(());
            }
            s.acked = through.min(s.next_seq.saturating_sub(1));
            // Everything written is acknowledged: start a fresh segment so
            // the old one can go (a full queue recovers at once).
            let roll = ROLL_ACKED.min(self.inner.settings.max_bytes / 4).max(1);
            if s.acked + 1 == s.next_seq && s.segments.back().is_some_and(|g| g.size >= roll) {
                let (seg, f) = Self::create_segment(&self.inner.dir, s.next_seq)?;
                s.file = f;
                s.segments.push_back(seg);
            }
        }
        let acked = self.lock().acked;
        let path = self.inner.dir.join("acked");
        crate::storage::write_atomic(&path, acked.to_string().as_bytes(), 0o600)
            .map_err(|e| io(&path, e))?;
        self.drop_acked();
        Ok(())
    }

    /// Removes segments whose every record is acknowledged (never the one
    /// being written).
    fn drop_acked(&self) {
        let mut s = self.lock();
        while s.segments.len() > 1 {
            let next_first = s.segments.get(1).map_or(u64::MAX, |g| g.first);
            if next_first.saturating_sub(1) > s.acked {
                break;
            }
            if let Some(g) = s.segments.pop_front() {
                if let Err(e) = std::fs::remove_file(&g.path) {
                    tracing::warn!(file = %g.path.display(), %e, "cannot remove a shipped audit segment");
                }
                s.bytes = s.bytes.saturating_sub(g.size);
            }
        }
        let full = s.bytes >= self.inner.settings.max_bytes;
        drop(s);
        self.inner
            .full
            .send_if_modified(|f| std::mem::replace(f, full) != full);
    }

    /// Runs `f` on the queue on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let q = self.clone();
        tokio::task::spawn_blocking(move || f(&q))
            .await
            .map_err(|e| io(&self.inner.dir, std::io::Error::other(e.to_string())))?
    }

    /// Ships queued records whenever a server connection is up, until
    /// `stop`. Failures keep the records and retry with backoff.
    pub async fn run_ship(
        self,
        mut client: watch::Receiver<Option<NodeClient<Channel>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff =
            lanyard_core::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut linger = false;
        loop {
            if std::mem::take(&mut linger) {
                tokio::select! {
                    () = tokio::time::sleep(LINGER) => {}
                    () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            }
            let acked = self.lock().acked;
            let current = client.borrow_and_update().clone();
            // Reading the segments and storing acknowledgements (file
            // syncs) block: they run off the runtime's threads, which
            // answer decisions meanwhile.
            let batch = match &current {
                Some(_) => match self.blocking(move |q| q.pending(acked)).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(%e, "audit queue unreadable");
                        vec![]
                    }
                },
                None => vec![],
            };
            let mut wait = Duration::from_millis(500);
            if let (Some(mut c), false) = (current, batch.is_empty()) {
                let last = batch.last().map_or(0, |i| i.seq);
                let full = batch.len() >= BATCH;
                let req = AppendAuditRequest {
                    epoch: self.inner.epoch.clone(),
                    records: batch,
                };
                match tokio::time::timeout(CALL_TIMEOUT, c.append_audit(req)).await {
                    Ok(Ok(r)) => {
                        let through = r.into_inner().acked_through;
                        if through < last {
                            tracing::warn!(
                                through,
                                last,
                                "server acknowledged fewer audit records than sent"
                            );
                        }
                        if let Err(e) = self.blocking(move |q| q.ack(through)).await {
                            tracing::error!(%e, "audit queue acknowledgement not stored");
                        }
                        backoff.succeeded();
                        linger = !full;
                        continue;
                    }
                    // An older server: the records stay queued (on disk)
                    // until it is upgraded, retried quietly at the slowest
                    // pace.
                    Ok(Err(s)) if crate::upstream::client::server_lacks(&s, "AppendAudit") => {
                        backoff.failed();
                        wait = Duration::from_secs(5);
                    }
                    Ok(Err(s)) => {
                        tracing::warn!(code = ?s.code(), message = s.message(), "audit records not taken; retrying");
                        wait = backoff.failed();
                    }
                    Err(_) => {
                        tracing::warn!("audit shipping timed out; retrying");
                        wait = backoff.failed();
                    }
                }
            }
            tokio::select! {
                () = self.inner.wake.notified() => {}
                r = client.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
