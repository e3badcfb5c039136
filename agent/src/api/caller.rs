//! Who is calling: the security header, the attested selectors of the
//! process behind the connection, and the re-check that it is still that
//! process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_core::Selector;
use tonic::Request;

use super::status::{SECURITY_HEADER, WorkloadError};
use crate::attestor::{AttestOptions, PeerCred, WorkloadAttestor};
use crate::listener::ConnInfo;

/// How long a connection's attestation is reused for further calls on the
/// same connection, as long as the same process instance, running the same
/// executable, is behind it.
pub const ATTESTATION_REUSE: Duration = Duration::from_secs(1);

/// Connections whose attestations are remembered before old ones are
/// dropped (beyond that, every call attests afresh).
const MAX_REMEMBERED: usize = 4096;

/// A connection's latest attestation.
#[derive(Clone)]
struct ConnAttestation {
    pid: i32,
    at: Instant,
    hashed: bool,
    selectors: Arc<Vec<Selector>>,
}

/// An attested caller.
#[derive(Clone)]
pub(crate) struct Caller {
    /// Its selectors.
    pub selectors: Arc<Vec<Selector>>,
    /// Its connection.
    pub conn: ConnInfo,
    /// Selector sets already logged as matching no entry (shared by the
    /// callers of one [`Callers`]).
    pub unmatched: Arc<Unmatched>,
}

/// Selector sets (by hash) already logged as matching no entry, bounded.
#[derive(Debug, Default)]
pub(crate) struct Unmatched(Mutex<std::collections::HashSet<u64>>);

impl Unmatched {
    /// True the first time `key` is seen (after 4,096 keys the memory
    /// starts over).
    fn first(&self, key: u64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 4096 {
            seen.clear();
        }
        seen.insert(key)
    }
}

impl Caller {
    /// Checks that the process that connected, running the program it ran
    /// then, is still behind the connection.
    pub fn recheck(&self) -> Result<(), WorkloadError> {
        recheck(&self.conn)
    }

    /// "No identity issued" for this caller; the first time a caller with
    /// these selectors meets it, the selectors it was attested with are
    /// logged (at info), so an operator can write the entry it lacks.
    pub fn no_identity(&self) -> WorkloadError {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.selectors.hash(&mut h);
        if self.unmatched.first(h.finish()) {
            let selectors: Vec<String> = self.selectors.iter().map(ToString::to_string).collect();
            tracing::info!(
                pid = self.conn.instance.as_ref().map(|i| i.pid()),
                selectors = %selectors.join(" "),
                "no entry matches this caller; an entry with some of these selectors would"
            );
        }
        WorkloadError::NoIdentity
    }

    /// A number identifying the caller for per-caller limits.
    pub fn key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.conn.caller.hash(&mut h);
        h.finish()
    }
}

fn recheck(conn: &ConnInfo) -> Result<(), WorkloadError> {
    match &conn.instance {
        Some(i) => Ok(i.check()?),
        None => Err(WorkloadError::NoPeer),
    }
}

/// Rejects requests without the SPIFFE security header.
pub(crate) fn check_header<T>(req: &Request<T>) -> Result<(), WorkloadError> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(WorkloadError::MissingHeader),
    }
}

/// Attests callers, remembering each connection's result briefly.
pub struct Callers {
    attestor: Arc<dyn WorkloadAttestor>,
    /// By connection number (ours, not the caller's: a fast hash is safe).
    attested: Mutex<HashMap<u64, ConnAttestation, foldhash::fast::RandomState>>,
    /// Selector sets already logged as matching no entry.
    unmatched: Arc<Unmatched>,
}

impl Callers {
    /// Attests through `attestor`.
    pub fn new(attestor: Arc<dyn WorkloadAttestor>) -> Self {
        Self {
            attestor,
            attested: Mutex::new(HashMap::default()),
            unmatched: Arc::default(),
        }
    }

    fn reuse(&self, conn: &ConnInfo, pid: i32, hash: bool) -> Option<Arc<Vec<Selector>>> {
        let m = self.attested.lock().unwrap_or_else(|p| p.into_inner());
        let cached = m.get(&conn.id)?;
        (cached.pid == pid && cached.at.elapsed() < ATTESTATION_REUSE && (cached.hashed || !hash))
            .then(|| cached.selectors.clone())
    }

    fn remember(&self, conn: &ConnInfo, pid: i32, hashed: bool, selectors: Arc<Vec<Selector>>) {
        let mut m = self.attested.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_REMEMBERED {
            m.retain(|_, a| a.at.elapsed() < ATTESTATION_REUSE);
            if m.len() >= MAX_REMEMBERED {
                return;
            }
        }
        m.insert(
            conn.id,
            ConnAttestation {
                pid,
                at: Instant::now(),
                hashed,
                selectors,
            },
        );
    }

    /// Checks the header and attests the caller; `hash` asks for the
    /// executable's SHA-256 (only needed when an entry selects on it).
    pub(crate) async fn attest<T>(
        &self,
        req: &Request<T>,
        hash: bool,
    ) -> Result<Caller, WorkloadError> {
        check_header(req)?;
        let conn = req
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .ok_or(WorkloadError::NoPeer)?;
        let cred = conn.cred.ok_or(WorkloadError::NoPeer)?;
        let pid = cred.pid().ok_or(WorkloadError::NoPeer)?;
        // The process must still be the one that connected (pidfd or start
        // time, and the same executable) before anything is reused.
        recheck(&conn)?;
        if let Some(selectors) = self.reuse(&conn, pid, hash) {
            return Ok(Caller {
                selectors,
                conn,
                unmatched: self.unmatched.clone(),
            });
        }
        let peer = PeerCred {
            pid: Some(pid),
            uid: cred.uid(),
            gid: cred.gid(),
            connected_ticks: conn.accepted_ticks,
        };
        let fast = AttestOptions {
            allow_slow: false,
            hash_executable: hash,
        };
        // The cached case answers inline; only hashing a new executable
        // goes to a blocking thread.
        let selectors = match self.attestor.attest(peer, fast)? {
            Some(s) => s,
            None => {
                let attestor = self.attestor.clone();
                let slow = AttestOptions {
                    allow_slow: true,
                    ..fast
                };
                tokio::task::spawn_blocking(move || attestor.attest(peer, slow))
                    .await
                    .map_err(|_| WorkloadError::ShuttingDown)??
                    .ok_or(WorkloadError::ShuttingDown)?
            }
        };
        // With a pidfd this is exact: what /proc said was about the process
        // that connected, which is still alive and unchanged.
        recheck(&conn)?;
        tracing::debug!(
            pid,
            uid = cred.uid(),
            selectors = selectors.len(),
            "workload attested"
        );
        let selectors = Arc::new(selectors);
        self.remember(&conn, pid, hash, selectors.clone());
        Ok(Caller {
            selectors,
            conn,
            unmatched: self.unmatched.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestor::AttestError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts attestations; answers one selector.
    struct Counting(AtomicUsize);

    impl WorkloadAttestor for Counting {
        fn attest(
            &self,
            _peer: PeerCred,
            _opts: AttestOptions,
        ) -> Result<Option<Vec<Selector>>, AttestError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Some(vec!["unix:uid:1".parse().unwrap()]))
        }
    }

    fn request(conn: &ConnInfo) -> Request<()> {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        req.extensions_mut().insert(conn.clone());
        req
    }

    #[tokio::test]
    async fn attestation_is_reused_per_connection_and_only_while_the_process_is_unchanged() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let conn = |id| ConnInfo::of_peer(&a, id);
        let attestor = Arc::new(Counting(AtomicUsize::new(0)));
        let callers = Callers::new(attestor.clone());
        callers.attest(&request(&conn(1)), false).await.unwrap();
        callers.attest(&request(&conn(1)), false).await.unwrap();
        assert_eq!(
            attestor.0.load(Ordering::SeqCst),
            1,
            "reused on the same connection"
        );
        // Asking for the executable's hash needs an attestation that made one.
        callers.attest(&request(&conn(1)), true).await.unwrap();
        assert_eq!(attestor.0.load(Ordering::SeqCst), 2);
        // Another connection attests afresh.
        callers.attest(&request(&conn(2)), false).await.unwrap();
        assert_eq!(attestor.0.load(Ordering::SeqCst), 3);
        // No header: refused before anything else.
        let mut bare = Request::new(());
        bare.extensions_mut().insert(conn(1));
        assert!(matches!(
            callers.attest(&bare, false).await,
            Err(WorkloadError::MissingHeader)
        ));
        drop((a, b));
    }
}
