//! The change feed: every change a store makes is numbered and kept for a
//! while, so a follower that was busy (or, with PostgreSQL, disconnected)
//! reads what it missed instead of losing it.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

/// What kind of record changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// A registration entry (key: entry ID).
    Entry,
    /// An agent record (key: agent SPIFFE ID).
    Agent,
    /// A CA or JWT key of any server, or the bundle sequence (key: key ID).
    Authority,
    /// A policy version (key: version).
    Policy,
    /// A task (key: task ID).
    Task,
    /// A named counter, such as the bundle sequence (key: its name).
    Counter,
    /// A revocation (key: `kind:value`).
    Revocation,
    /// A quarantine (key: its ID).
    Quarantine,
    /// A CA's CRL (key: the CA's ID).
    Crl,
    /// A batch of signed X.509-SVIDs (key: the batch's).
    Issued,
    /// A call held for approval (key: its ID).
    Approval,
}

impl ChangeKind {
    /// The name stored in a database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Agent => "agent",
            Self::Authority => "authority",
            Self::Policy => "policy",
            Self::Task => "task",
            Self::Counter => "counter",
            Self::Revocation => "revocation",
            Self::Quarantine => "quarantine",
            Self::Crl => "crl",
            Self::Issued => "issued",
            Self::Approval => "approval",
        }
    }

    /// Parses [`ChangeKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "entry" => Self::Entry,
            "agent" => Self::Agent,
            "authority" => Self::Authority,
            "policy" => Self::Policy,
            "task" => Self::Task,
            "counter" => Self::Counter,
            "revocation" => Self::Revocation,
            "quarantine" => Self::Quarantine,
            "crl" => Self::Crl,
            "issued" => Self::Issued,
            "approval" => Self::Approval,
            _ => return None,
        })
    }
}

/// One numbered change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Position in the feed, from 1, without gaps, in commit order.
    pub seq: u64,
    /// What changed.
    pub kind: ChangeKind,
    /// Its key.
    pub key: String,
}

/// An answer of [`super::Store::changes_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// The changes after the asked position (possibly none).
    Changes(Vec<Change>),
    /// Some changes after the asked position are no longer kept: reload
    /// everything, then follow from `last`.
    Gap {
        /// The newest change at the time of the answer.
        last: u64,
    },
}

/// How many changes an in-process feed keeps.
pub const LOCAL_FEED_KEEP: usize = 16_384;

/// The in-process feed of a store used by one server (sled, memory).
#[derive(Debug)]
pub struct LocalFeed {
    inner: Mutex<VecDeque<Change>>,
    last: watch::Sender<u64>,
    keep: usize,
}

impl Default for LocalFeed {
    fn default() -> Self {
        Self::with_capacity(LOCAL_FEED_KEEP)
    }
}

impl LocalFeed {
    /// A feed keeping the newest `keep` changes.
    pub fn with_capacity(keep: usize) -> Self {
        Self {
            inner: Mutex::new(VecDeque::new()),
            last: watch::channel(0).0,
            keep: keep.max(1),
        }
    }

    /// Records a change and wakes followers.
    pub fn push(&self, kind: ChangeKind, key: impl Into<String>) {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *self.last.borrow() + 1;
        q.push_back(Change {
            seq,
            kind,
            key: key.into(),
        });
        while q.len() > self.keep {
            q.pop_front();
        }
        // Sent under the lock, so sequence numbers follow push order.
        self.last.send_replace(seq);
    }

    /// The newest sequence number.
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// See [`super::Store::changes_since`].
    pub fn since(&self, after: u64, limit: usize) -> Feed {
        let q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let last = *self.last.borrow();
        if after >= last {
            return Feed::Changes(Vec::new());
        }
        match q.front() {
            Some(first) if first.seq <= after + 1 => {}
            _ => return Feed::Gap { last },
        }
        Feed::Changes(
            q.iter()
                .filter(|c| c.seq > after)
                .take(limit.max(1))
                .cloned()
                .collect(),
        )
    }

    /// See [`super::Store::wake`].
    pub fn wake(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_too_far_behind_is_told_to_reload() {
        let f = LocalFeed::with_capacity(3);
        for i in 0..5 {
            f.push(ChangeKind::Entry, format!("e{i}"));
        }
        assert_eq!(f.last(), 5);
        assert_eq!(f.since(0, 10), Feed::Gap { last: 5 });
        assert_eq!(f.since(1, 10), Feed::Gap { last: 5 });
        let Feed::Changes(c) = f.since(2, 10) else {
            panic!("gap")
        };
        assert_eq!(c.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(f.since(5, 10), Feed::Changes(vec![]));
        let Feed::Changes(c) = f.since(2, 1) else {
            panic!("gap")
        };
        assert_eq!(c.len(), 1);
    }
}
