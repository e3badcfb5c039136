//! The one writer of the chain: a thread of its own (file writes and
//! fsync block), taking every command queued since its last write as one
//! group: it seals each record after the previous one, writes the group
//! with one `write` and one `fdatasync`, and only then answers — so an
//! acknowledged record is on disk, and many records share each fsync.
//! It also signs checkpoints (every `checkpoint_every` records, or after
//! `checkpoint_interval` with records uncovered), rolls segments and
//! applies retention.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_core::audit::{AuditKey, Checkpoint, Event, Line, Origin, classify, seal};
use lanyard_core::clock::{Clock, format_rfc3339_millis, parse_rfc3339};
use tokio::sync::{mpsc, oneshot, watch};

use super::segments::{self, Tail, segment_name};
use super::{AuditLogError, AuditSettings};

/// What the writer is asked to do.
pub(super) enum Cmd {
    /// Append server events; answers with the last sequence number.
    Append {
        events: Vec<Event>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Append records shipped by an agent, skipping those already in the
    /// chain; answers with the highest agent sequence number now held.
    Remote {
        origin_agent: String,
        epoch: String,
        records: Vec<(u64, Event)>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Sign a checkpoint of the current head (not written: an export's
    /// closing line).
    Sign { reply: oneshot::Sender<Checkpoint> },
    /// Apply retention now; answers with the records pruned.
    Prune {
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Time passed: a checkpoint if one is due.
    Tick,
}

/// Where a command's answer goes.
type Reply = oneshot::Sender<Result<u64, String>>;

/// How often retention runs on its own.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most commands taken as one group.
const MAX_GROUP: usize = 4096;

pub(super) struct Writer {
    pub dir: PathBuf,
    pub chain: String,
    pub key: Arc<AuditKey>,
    pub clock: Arc<dyn Clock>,
    pub settings: AuditSettings,
    pub head: watch::Sender<u64>,
    file: Option<(File, PathBuf, u64)>,
    last_seq: u64,
    last_hash: [u8; 32],
    since_checkpoint: u64,
    last_checkpoint: Instant,
    shipped: HashMap<(String, String), u64>,
    /// When each (agent, epoch) last shipped (a counter), to keep the
    /// newest epochs.
    epoch_seen: HashMap<(String, String), u64>,
    tick: u64,
    /// Records by kind (the writer's own anomaly records are counted here).
    events: lanyard_metrics::CounterFamily,
}

/// Epochs of one agent kept in the shipping index.
const EPOCHS_KEPT: usize = 2;

/// Where the writer publishes what it did: the head of the chain, and
/// records by kind (its own anomaly records are counted there).
pub struct Published {
    pub head: watch::Sender<u64>,
    pub events: lanyard_metrics::CounterFamily,
}

impl Writer {
    pub fn new(
        dir: PathBuf,
        chain: String,
        key: Arc<AuditKey>,
        clock: Arc<dyn Clock>,
        settings: AuditSettings,
        tail: Tail,
        published: Published,
    ) -> Result<Self, AuditLogError> {
        let Published { head, events } = published;
        let file = match tail.current {
            Some((path, size)) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| AuditLogError::io(&path, e))?;
                Some((f, path, size))
            }
            None => None,
        };
        head.send_replace(tail.last_seq);
        Ok(Self {
            dir,
            chain,
            key,
            clock,
            settings,
            head,
            file,
            last_seq: tail.last_seq,
            last_hash: tail.last_hash,
            since_checkpoint: tail.since_checkpoint,
            last_checkpoint: Instant::now(),
            shipped: tail.shipped,
            epoch_seen: HashMap::new(),
            tick: 0,
            events,
        })
    }

    /// Runs until every sender is gone, then signs a last checkpoint.
    /// Waits on the channel without the runtime's timers (a runtime
    /// shutting down cannot stop it halfway); time-based checkpoints and
    /// retention run when [`Cmd::Tick`] (sent every second) or any other
    /// command arrives.
    pub fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut next_prune = Instant::now();
        loop {
            if Instant::now() >= next_prune {
                if let Err(e) = self.prune() {
                    tracing::warn!(%e, "audit retention failed");
                }
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            self.group(group);
        }
        // The last records are covered before the log closes.
        if self.since_checkpoint > 0 {
            let line = self.sign(false).to_line() + "\n";
            if let Err(e) = self.write(self.last_seq + 1, line.as_bytes()) {
                tracing::error!(%e, "the closing audit checkpoint could not be written");
            }
        }
    }

    fn checkpoint_if_due(&mut self, by_time: bool) {
        let due = self.since_checkpoint >= self.settings.checkpoint_every
            || (by_time
                && self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval);
        if !due {
            return;
        }
        let line = self.sign(false).to_line() + "\n";
        match self.write(self.last_seq + 1, line.as_bytes()) {
            Ok(()) => {
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
            Err(e) => tracing::error!(%e, "audit checkpoint could not be written"),
        }
    }

    fn sign(&self, pruned: bool) -> Checkpoint {
        Checkpoint::sign(
            &self.key,
            &self.chain,
            self.last_seq,
            &self.last_hash,
            format_rfc3339_millis(self.clock.now()),
            pruned,
        )
    }

    /// Seals, writes and syncs one group, then answers it.
    fn group(&mut self, group: Vec<Cmd>) {
        let (seq0, hash0, since0) = (self.last_seq, self.last_hash, self.since_checkpoint);
        // High-water marks this group moves, with their values before it
        // (put back if the write fails).
        let mut shipped0: Vec<((String, String), Option<u64>)> = vec![];
        let mut buf = String::new();
        let mut answers: Vec<(Reply, Result<u64, String>)> = vec![];
        let mut signs = vec![];
        let mut prunes = vec![];
        for cmd in group {
            match cmd {
                Cmd::Append { events, reply } => {
                    let r = events
                        .iter()
                        .try_for_each(|e| self.push(&mut buf, e))
                        .map(|()| self.last_seq);
                    answers.push((reply, r));
                }
                Cmd::Remote {
                    origin_agent,
                    epoch,
                    mut records,
                    reply,
                } => {
                    if records.is_empty() {
                        // Nothing to place: no mark to keep either.
                        let high = self
                            .shipped
                            .get(&(origin_agent.clone(), epoch.clone()))
                            .copied()
                            .unwrap_or(0);
                        answers.push((reply, Ok(high)));
                        continue;
                    }
                    let key = (origin_agent.clone(), epoch.clone());
                    let mut high = self.shipped.get(&key).copied().unwrap_or(0);
                    records.sort_by_key(|(s, _)| *s);
                    let mut r = Ok(());
                    for (seq, mut e) in records {
                        if seq <= high {
                            continue;
                        }
                        if seq > high + 1 {
                            // Records the agent numbered were never shipped:
                            // the chain says so where they would have been.
                            r = self.push(
                                &mut buf,
                                &self.gap(&origin_agent, &epoch, high + 1, seq - 1),
                            );
                            if r.is_err() {
                                break;
                            }
                        }
                        e.origin = Some(Origin {
                            agent: origin_agent.clone(),
                            epoch: epoch.clone(),
                            seq,
                        });
                        r = self.push(&mut buf, &e);
                        if r.is_err() {
                            break;
                        }
                        high = seq;
                    }
                    let before = self.shipped.insert(key.clone(), high);
                    shipped0.push((key, before));
                    self.forget_old_epochs(&origin_agent, &epoch, &mut shipped0);
                    answers.push((reply, r.map(|()| high)));
                }
                Cmd::Sign { reply } => signs.push(reply),
                Cmd::Prune { reply } => prunes.push(reply),
                Cmd::Tick => {}
            }
            if self.since_checkpoint >= self.settings.checkpoint_every {
                buf.push_str(&self.sign(false).to_line());
                buf.push('\n');
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
        }
        if !buf.is_empty()
            && let Err(e) = self.write(seq0 + 1, buf.as_bytes())
        {
            tracing::error!(%e, "audit log write failed; records refused");
            (self.last_seq, self.last_hash, self.since_checkpoint) = (seq0, hash0, since0);
            for (key, before) in shipped0.into_iter().rev() {
                match before {
                    Some(v) => self.shipped.insert(key, v),
                    None => self.shipped.remove(&key),
                };
            }
            for (reply, _) in answers {
                let _ = reply.send(Err(format!("audit log unavailable: {e}")));
            }
            return;
        }
        self.head.send_replace(self.last_seq);
        for (reply, r) in answers {
            let _ = reply.send(r);
        }
        for reply in signs {
            let _ = reply.send(self.sign(false));
        }
        for reply in prunes {
            let _ = reply.send(self.prune().map_err(|e| e.to_string()));
        }
        self.checkpoint_if_due(true);
    }

    /// The anomaly record for an agent's records `from..=to` of `epoch`
    /// that never arrived.
    fn gap(&self, agent: &str, epoch: &str, from: u64, to: u64) -> Event {
        tracing::warn!(agent, epoch, from, to, "agent audit records missing");
        let e = Event::new(
            lanyard_core::audit::Kind::AuditGap,
            format_rfc3339_millis(self.clock.now()),
        )
        .actor("server")
        .node(agent.to_owned())
        .reason(format!(
            "agent records {from} to {to} of epoch {epoch} never arrived"
        ))
        .details(serde_json::json!({"epoch": epoch, "from": from, "to": to}));
        super::count(&self.events, &e);
        e
    }

    /// Keeps at most [`EPOCHS_KEPT`] epochs of `agent` in the shipping
    /// index (an agent's queue starts a new epoch when its queue is made
    /// anew; the older ones are done), the most recently shipped ones,
    /// remembering what it drops in `undo`.
    fn forget_old_epochs(
        &mut self,
        agent: &str,
        current: &str,
        undo: &mut Vec<((String, String), Option<u64>)>,
    ) {
        self.tick += 1;
        self.epoch_seen
            .insert((agent.to_owned(), current.to_owned()), self.tick);
        let mut others: Vec<(u64, (String, String))> = self
            .shipped
            .keys()
            .filter(|(a, e)| a == agent && e != current)
            .map(|k| (self.epoch_seen.get(k).copied().unwrap_or(0), k.clone()))
            .collect();
        if others.len() < EPOCHS_KEPT {
            return;
        }
        others.sort();
        let drop = others.len() + 1 - EPOCHS_KEPT;
        for (_, key) in others.into_iter().take(drop) {
            if let Some(v) = self.shipped.remove(&key) {
                undo.push((key.clone(), Some(v)));
            }
            self.epoch_seen.remove(&key);
        }
    }

    fn push(&mut self, buf: &mut String, e: &Event) -> Result<(), String> {
        let s =
            seal(&self.chain, self.last_seq + 1, &self.last_hash, e).map_err(|e| e.to_string())?;
        buf.push_str(&s.line);
        buf.push('\n');
        self.last_seq += 1;
        self.last_hash = s.hash;
        self.since_checkpoint += 1;
        Ok(())
    }

    /// Appends and syncs `bytes`, whose first record (if any) is
    /// `first_seq`; on failure the file is cut back to where it was.
    fn write(&mut self, first_seq: u64, bytes: &[u8]) -> Result<(), AuditLogError> {
        if self
            .file
            .as_ref()
            .is_none_or(|(_, _, size)| *size >= self.settings.segment_bytes)
        {
            self.roll(first_seq)?;
        }
        let Some((f, path, size)) = self.file.as_mut() else {
            return Err(AuditLogError::io(
                &self.dir,
                std::io::Error::other("no segment open"),
            ));
        };
        let r = f.write_all(bytes).and_then(|()| f.sync_data());
        match r {
            Ok(()) => {
                *size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = f.set_len(*size);
                Err(AuditLogError::io(path, e))
            }
        }
    }

    /// Starts a new segment whose first record is `first_seq`.
    fn roll(&mut self, first_seq: u64) -> Result<(), AuditLogError> {
        let path = self.dir.join(segment_name(first_seq));
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuditLogError::io(&path, e))?;
        sync_dir(&self.dir)?;
        self.file = Some((f, path, 0));
        Ok(())
    }

    /// Removes whole segments no longer kept (older than `retention`, or
    /// beyond the newest `max_records`), after writing the signed
    /// checkpoint of the last record they held. Never the open segment.
    fn prune(&mut self) -> Result<u64, AuditLogError> {
        let segs = segments::list(&self.dir)?;
        let now = self.clock.now();
        let mut pruned = 0;
        for pair in segs.windows(2) {
            let ((first, path), (next_first, _)) = (&pair[0], &pair[1]);
            let last = next_first.saturating_sub(1);
            let by_count = self
                .settings
                .max_records
                .is_some_and(|max| self.last_seq.saturating_sub(last) >= max);
            let Some((time, hash)) = last_record(path)? else {
                continue;
            };
            let by_age = self.settings.retention.is_some_and(|keep| {
                parse_rfc3339(&time)
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > keep)
            });
            if !(by_count || by_age) {
                break;
            }
            let c = Checkpoint::sign(
                &self.key,
                &self.chain,
                last,
                &hash,
                format_rfc3339_millis(now),
                true,
            );
            write_synced(&self.dir.join(segments::PRUNED), c.to_line().as_bytes())?;
            std::fs::remove_file(path).map_err(|e| AuditLogError::io(path, e))?;
            sync_dir(&self.dir)?;
            pruned += last + 1 - first;
            tracing::info!(through = last, "audit records pruned by retention");
        }
        Ok(pruned)
    }
}

/// The time and hash of a segment's last record.
fn last_record(path: &Path) -> Result<Option<(String, [u8; 32])>, AuditLogError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuditLogError::io(path, e))?;
    for line in text.lines().rev() {
        if let Ok(Line::Record { time, value, .. }) = classify(line) {
            let hash = value
                .get("hash")
                .and_then(|h| h.as_str())
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| <[u8; 32]>::try_from(h).ok());
            return Ok(hash.map(|h| (time, h)));
        }
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> Result<(), AuditLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditLogError::io(dir, e))
}

/// Writes a small file in place of another: temp file, fsync, rename.
pub(super) fn write_synced(path: &Path, data: &[u8]) -> Result<(), AuditLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    r.map_err(|e| AuditLogError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}
