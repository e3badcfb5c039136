//! The replay cache of an enforcement point: each proof's `jti` is taken
//! once within its lifetime.

use std::collections::HashMap;
use std::sync::Mutex;

use super::WitError;

/// Remembers the proofs seen (by sender and `jti`) until they expire.
/// Bounded: when `capacity` live proofs are remembered, a new one is
/// refused ([`WitError::ReplayCacheFull`]) rather than an old one
/// forgotten, which would let it be replayed. Proofs live at most
/// [`super::MAX_WPT_LIFETIME`], so the bound is a rate: `capacity` proofs
/// per that lifetime.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// `sender jti` -> `exp`.
    by_id: HashMap<String, u64>,
    /// The earliest `exp` held: nothing to prune before it.
    next_expiry: u64,
}

impl ReplayCache {
    /// A cache holding at most `capacity` live proofs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Takes the proof `jti` of `sender`, valid until `exp` (Unix seconds),
    /// at `now`: an error if it was taken before and has not expired.
    pub fn take(&self, sender: &str, jti: &str, exp: u64, now: u64) -> Result<(), WitError> {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now >= s.next_expiry && !s.by_id.is_empty() {
            s.by_id.retain(|_, e| *e > now);
            s.next_expiry = s.by_id.values().copied().min().unwrap_or(0);
        }
        let key = format!("{sender} {jti}");
        if s.by_id.get(&key).is_some_and(|e| *e > now) {
            return Err(WitError::Replayed(jti.to_owned()));
        }
        if s.by_id.len() >= self.capacity {
            return Err(WitError::ReplayCacheFull);
        }
        s.by_id.insert(key, exp);
        if s.next_expiry == 0 || exp < s.next_expiry {
            s.next_expiry = exp;
        }
        Ok(())
    }

    /// How many proofs are remembered.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_taken_once_until_it_expires() {
        let c = ReplayCache::new(10);
        c.take("spiffe://td/a", "j1", 110, 100).unwrap();
        assert_eq!(
            c.take("spiffe://td/a", "j1", 110, 105),
            Err(WitError::Replayed("j1".into()))
        );
        // Another sender's proof with the same jti is another proof.
        c.take("spiffe://td/b", "j1", 110, 105).unwrap();
        // Expired: forgotten (and refused by its exp anyway).
        c.take("spiffe://td/a", "j1", 120, 110).unwrap();
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting_and_frees_as_proofs_expire() {
        let c = ReplayCache::new(2);
        c.take("s", "a", 110, 100).unwrap();
        c.take("s", "b", 120, 100).unwrap();
        assert_eq!(c.take("s", "c", 120, 101), Err(WitError::ReplayCacheFull));
        // "a" is still refused: nothing was forgotten to make room.
        assert!(matches!(
            c.take("s", "a", 110, 101),
            Err(WitError::Replayed(_))
        ));
        // Once "a" expires there is room again.
        c.take("s", "c", 130, 110).unwrap();
        assert_eq!(c.len(), 2);
    }
}
