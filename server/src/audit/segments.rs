//! The log on disk: `DATA_DIR/audit/seg-<first seq>.jsonl` files of lines
//! (records and checkpoints, each one canonical JSON line), appended to
//! and never rewritten; `pruned.json` holds the signed checkpoint of the
//! last record removed by retention; `key.pk8` the audit key (0600).
//!
//! Recovery at start: a last line without its newline is a write cut off
//! by a crash (never acknowledged) and is truncated away; any other line
//! that does not parse is corruption, and the server refuses to start
//! naming the file and line rather than chain past it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use lanyard_core::audit::{Checkpoint, GENESIS, Line, classify};

use super::AuditLogError;

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".jsonl";
/// The pruning checkpoint's file.
pub(super) const PRUNED: &str = "pruned.json";

/// A segment's file name for its first sequence number.
pub(super) fn segment_name(first: u64) -> String {
    format!("{PREFIX}{first:020}{SUFFIX}")
}

/// Segments in order, with their first sequence numbers.
pub(super) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditLogError> {
    let mut out = vec![];
    let rd = std::fs::read_dir(dir).map_err(|e| AuditLogError::io(dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| AuditLogError::io(dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The pruning checkpoint, if records were pruned.
pub(super) fn read_pruned(dir: &Path) -> Result<Option<Checkpoint>, AuditLogError> {
    let path = dir.join(PRUNED);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let v = serde_json::from_str(&text)
                .map_err(|e| AuditLogError::corrupt(&path, 1, e.to_string()))?;
            Checkpoint::from_value(v)
                .map(Some)
                .map_err(|e| AuditLogError::corrupt(&path, 1, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditLogError::io(&path, e)),
    }
}

/// What the log holds, read at start.
pub(super) struct Tail {
    /// Last record's sequence number (0: none).
    pub last_seq: u64,
    /// Its hash.
    pub last_hash: [u8; 32],
    /// Records since the last checkpoint.
    pub since_checkpoint: u64,
    /// Highest agent sequence number per (agent, epoch).
    pub shipped: HashMap<(String, String), u64>,
    /// The segment to append to and its size.
    pub current: Option<(PathBuf, u64)>,
}

/// Reads every segment: the chain's end, and what agents shipped (for
/// de-duplication). Truncates a torn last line.
pub(super) fn recover(dir: &Path) -> Result<Tail, AuditLogError> {
    let pruned = read_pruned(dir)?;
    let mut tail = Tail {
        last_seq: pruned.as_ref().map_or(0, |c| c.seq),
        last_hash: pruned
            .as_ref()
            .and_then(Checkpoint::hash_bytes)
            .unwrap_or(GENESIS),
        since_checkpoint: 0,
        shipped: HashMap::new(),
        current: None,
    };
    let segs = list(dir)?;
    let n = segs.len();
    for (i, (_, path)) in segs.into_iter().enumerate() {
        let size = scan(&path, i + 1 == n, &mut tail)?;
        tail.current = Some((path, size));
    }
    Ok(tail)
}

#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default)]
    origin: Option<lanyard_core::audit::Origin>,
    #[serde(default)]
    hash: Option<String>,
}

/// Reads one segment into `tail`; returns its (possibly truncated) size.
fn scan(path: &Path, last: bool, tail: &mut Tail) -> Result<u64, AuditLogError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(last)
        .open(path)
        .map_err(|e| AuditLogError::io(path, e))?;
    let mut r = BufReader::new(&mut f);
    let mut buf = Vec::new();
    let mut good: u64 = 0;
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| AuditLogError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            if last {
                tracing::warn!(file = %path.display(), line = line_no, "audit log: a write cut off by a crash was truncated (never acknowledged)");
                break;
            }
            return Err(AuditLogError::corrupt(
                path,
                line_no,
                "line without its newline",
            ));
        }
        let text = std::str::from_utf8(&buf[..n - 1])
            .map_err(|_| AuditLogError::corrupt(path, line_no, "not UTF-8"))?;
        match classify(text).map_err(|e| AuditLogError::corrupt(path, line_no, e))? {
            Line::Checkpoint(_) => tail.since_checkpoint = 0,
            Line::Record { seq, .. } => {
                let peek: Peek = serde_json::from_str(text)
                    .map_err(|e| AuditLogError::corrupt(path, line_no, e.to_string()))?;
                let hash = peek
                    .hash
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .ok_or_else(|| AuditLogError::corrupt(path, line_no, "no hash"))?;
                if seq != tail.last_seq + 1 {
                    return Err(AuditLogError::corrupt(
                        path,
                        line_no,
                        format!("record {seq} follows record {}", tail.last_seq),
                    ));
                }
                tail.last_seq = seq;
                tail.last_hash = hash;
                tail.since_checkpoint += 1;
                if let Some(o) = peek.origin {
                    let high = tail.shipped.entry((o.agent, o.epoch)).or_insert(0);
                    *high = (*high).max(o.seq);
                }
            }
        }
        good += n as u64;
    }
    drop(r);
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| AuditLogError::io(path, e))?;
    if last && size != good {
        f.set_len(good).map_err(|e| AuditLogError::io(path, e))?;
        f.sync_all().map_err(|e| AuditLogError::io(path, e))?;
    }
    Ok(good)
}

/// Reads the lines of every segment in order (for export, tail and
/// verification), starting with the pruning checkpoint if there is one.
/// Stops early when `each` returns false. A line still being written is
/// not returned.
pub(super) fn read_all(dir: &Path, each: impl FnMut(&str) -> bool) -> Result<(), AuditLogError> {
    read_after(dir, 0, each)
}

/// [`read_all`] from the segment that holds record `after + 1` on (lines
/// before it in that segment are still passed; callers skip them).
pub(super) fn read_after(
    dir: &Path,
    after: u64,
    mut each: impl FnMut(&str) -> bool,
) -> Result<(), AuditLogError> {
    if after == 0
        && let Some(c) = read_pruned(dir)?
        && !each(&c.to_line())
    {
        return Ok(());
    }
    let segs = list(dir)?;
    let start = segs
        .iter()
        .rposition(|(first, _)| *first <= after + 1)
        .unwrap_or(0);
    for (_, path) in segs.into_iter().skip(start) {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Pruned meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AuditLogError::io(&path, e)),
        };
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| AuditLogError::io(&path, e))?;
        let mut rest = text.as_str();
        while let Some(i) = rest.find('\n') {
            if !each(&rest[..i]) {
                return Ok(());
            }
            rest = &rest[i + 1..];
        }
    }
    Ok(())
}
