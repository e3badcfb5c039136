//! The admin API's audit calls: reading the log (tail, follow, export)
//! and the public audit key.
//!
//! An export is a contiguous part of the chain: from the first record at
//! or after `since` to the last one before the first record past `until`
//! (records follow the chain's order; an agent's clock may differ a little
//! from the server's). It is anchored by a checkpoint signed now for the
//! record before it (unless it starts at record 1 or at the pruning
//! checkpoint) and closed by one for its last record, so that it verifies
//! offline on its own.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_core::audit::{Line, Verifier, classify};
use lanyard_core::clock::parse_rfc3339;
use lanyard_proto::admin::{AuditKeyResponse, AuditLine, ReadAuditRequest};
use tokio::sync::mpsc;
use tonic::Status;

use super::AdminApi;
#[allow(clippy::wildcard_imports)]
use super::*;
use crate::audit::Audit;

/// Lines buffered towards a slow reader.
const BUFFER: usize = 1024;
/// Shortest time between two reads of a followed log.
const FOLLOW_PASS: Duration = Duration::from_millis(200);

/// The time bounds of a read.
#[derive(Clone, Copy)]
struct Window {
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl Window {
    fn from_ms(since: i64, until: i64) -> Result<Self, Status> {
        let at = |ms: i64| -> Result<Option<SystemTime>, Status> {
            match ms {
                0 => Ok(None),
                m if m < 0 => Err(Status::invalid_argument("times are Unix milliseconds")),
                m => Ok(Some(UNIX_EPOCH + Duration::from_millis(m.unsigned_abs()))),
            }
        };
        Ok(Self {
            since: at(since)?,
            until: at(until)?,
        })
    }

    fn before(&self, t: Option<SystemTime>) -> bool {
        matches!((self.since, t), (Some(s), Some(t)) if t < s)
    }

    fn after(&self, t: Option<SystemTime>) -> bool {
        matches!((self.until, t), (Some(u), Some(t)) if t >= u)
    }
}

/// Where a read has got to in the chain.
#[derive(Default)]
struct Cursor {
    /// The last line sent was a record: its seq and hash.
    open: Option<(u64, [u8; 32])>,
    /// Something was sent (the window started).
    started: bool,
    /// Highest record seq seen.
    seen: u64,
}

fn hash_of(v: &serde_json::Value, key: &str) -> Option<[u8; 32]> {
    let raw = hex::decode(v.get(key)?.as_str()?).ok()?;
    raw.try_into().ok()
}

/// Reads the export lines into `out`; false if the reader went away.
///
/// Every line from the chain's start is verified (its hash, its link to
/// the one before, and checkpoints against this server's key) before the
/// export signs anything over it: a log edited on disk is refused, never
/// vouched for with a fresh checkpoint.
fn export(
    audit: &Audit,
    w: Window,
    out: &mpsc::Sender<Result<AuditLine, Status>>,
) -> Result<bool, Status> {
    let mut cur = Cursor::default();
    let mut alive = true;
    let mut verifier = Verifier::new(vec![audit.public_key().clone()]);
    let mut broken = None;
    let send = |line: String| out.blocking_send(Ok(AuditLine { line })).is_ok();
    audit
        .read(|text| {
            if let Err(e) = verifier.feed(text) {
                broken = Some(e);
                return false;
            }
            match classify(text) {
                Ok(Line::Checkpoint(c)) => {
                    // Before the window, only the pruning anchor at the
                    // very start counts (it is the chain's start).
                    if cur.started || (c.pruned && w.since.is_none()) {
                        cur.started = true;
                        cur.open = None;
                        alive = send(text.to_owned());
                    }
                }
                Ok(Line::Record {
                    seq, time, value, ..
                }) => {
                    let t = parse_rfc3339(&time);
                    cur.seen = seq;
                    if !cur.started && w.before(t) {
                        return true;
                    }
                    if w.after(t) {
                        return false;
                    }
                    if !cur.started {
                        cur.started = true;
                        if seq > 1 {
                            let Some(prev) = hash_of(&value, "prev") else {
                                return false;
                            };
                            alive = send(audit.sign_at(seq - 1, &prev).to_line());
                        }
                    }
                    cur.open = hash_of(&value, "hash").map(|h| (seq, h));
                    alive = alive && send(text.to_owned());
                }
                Err(e) => {
                    tracing::error!(%e, "audit log line unreadable during export");
                    alive = send(text.to_owned());
                }
            }
            alive
        })
        .map_err(|e| Status::internal(e.to_string()))?;
    if let Some(e) = broken {
        tracing::error!(err = %e, "audit log does not verify; export refused");
        return Err(Status::data_loss(format!(
            "the audit log does not verify ({e}); no checkpoint was signed over it: inspect it with `lanyard-server audit verify --file` on a copy of the segment files"
        )));
    }
    if let (true, Some((seq, hash))) = (alive, cur.open) {
        alive = send(audit.sign_at(seq, &hash).to_line());
    }
    Ok(alive)
}

/// Sends the records after `after` in the window (the last `last` of
/// them, if set); returns the highest record seq read, or `None` if the
/// reader went away.
fn records(
    audit: &Audit,
    after: u64,
    w: Window,
    last: u64,
    out: &mpsc::Sender<Result<AuditLine, Status>>,
) -> Result<Option<u64>, Status> {
    let mut seen = after;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut alive = true;
    audit
        .read_after(after, |text| {
            let Ok(Line::Record { seq, time, .. }) = classify(text) else {
                return true;
            };
            if seq <= after {
                return true;
            }
            seen = seq;
            let t = parse_rfc3339(&time);
            if w.before(t) || w.after(t) {
                return true;
            }
            if last > 0 {
                tail.push_back(text.to_owned());
                if tail.len() as u64 > last {
                    tail.pop_front();
                }
                true
            } else {
                alive = out
                    .blocking_send(Ok(AuditLine {
                        line: text.to_owned(),
                    }))
                    .is_ok();
                alive
            }
        })
        .map_err(|e| Status::internal(e.to_string()))?;
    for line in tail {
        alive = alive && out.blocking_send(Ok(AuditLine { line })).is_ok();
    }
    Ok(alive.then_some(seen))
}

impl AdminApi {
    pub(crate) fn read_audit_impl(
        &self,
        r: ReadAuditRequest,
    ) -> Result<mpsc::Receiver<Result<AuditLine, Status>>, Status> {
        let w = Window::from_ms(r.since_ms, r.until_ms)?;
        if r.export && (r.follow || r.last > 0) {
            return Err(Status::invalid_argument(
                "an export is a fixed part of the chain: no follow or last",
            ));
        }
        let (tx, rx) = mpsc::channel(BUFFER);
        let audit = self.audit.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut head = audit.subscribe();
            let a = audit.clone();
            let out = tx.clone();
            let first = tokio::task::spawn_blocking(move || {
                if r.export {
                    export(&a, w, &out).map(|alive| alive.then_some(0))
                } else {
                    records(&a, 0, w, r.last, &out)
                }
            })
            .await;
            let mut seen = match first {
                Ok(Ok(Some(seen))) if r.follow => seen,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                _ => return,
            };
            loop {
                // A follower re-reads the current segment from where it
                // was: at most a few passes a second, however busy.
                tokio::time::sleep(FOLLOW_PASS).await;
                tokio::select! {
                    c = head.changed() => if c.is_err() { return },
                    () = tx.closed() => return,
                    () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                }
                let (a, out) = (audit.clone(), tx.clone());
                match tokio::task::spawn_blocking(move || records(&a, seen, w, 0, &out)).await {
                    Ok(Ok(Some(s))) => seen = s,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    _ => return,
                }
            }
        });
        Ok(rx)
    }

    pub(crate) fn audit_key_impl(&self) -> AuditKeyResponse {
        let k = self.audit.public_key();
        AuditKeyResponse {
            public_key_pem: k.to_pem(),
            key_id: k.id(),
            chain: self.audit.chain().to_owned(),
            head: *self.audit.subscribe().borrow(),
        }
    }
}

impl AdminApi {
    pub(super) async fn read_audit_rpc(
        &self,
        req: Request<ReadAuditRequest>,
    ) -> Result<Response<ReadAuditStream>, Status> {
        let rx = self.read_audit_impl(req.into_inner())?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    pub(super) async fn get_audit_key_rpc(
        &self,
        _req: Request<GetAuditKeyRequest>,
    ) -> Result<Response<AuditKeyResponse>, Status> {
        Ok(Response::new(self.audit_key_impl()))
    }
}
