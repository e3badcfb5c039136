//! JWT-SVIDs for workloads: a cache keyed by (SPIFFE ID, sorted audiences)
//! that serves a token until its half-life, and falls back to a still-valid
//! cached token when the server is slow or unreachable.
//!
//! The cache is bounded by bytes (least recently used tokens go first), and
//! each caller may cause only so many signings per second: random audiences
//! from one process cannot grow the agent's memory or flood the server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use lanyard_core::clock::from_unix_secs;

use crate::identity::{CommandError, IdentityHandle, JwtSubject};

/// How long to wait for the server when a valid cached token exists.
const FALLBACK_WAIT: Duration = Duration::from_secs(1);
/// How long to wait for the server when there is nothing to fall back on.
const FULL_WAIT: Duration = Duration::from_secs(10);
/// Callers remembered by the rate limiter before idle ones are dropped.
const MAX_TRACKED_CALLERS: usize = 4096;

/// Why a JWT-SVID could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum JwtFetchError {
    /// The agent has no connection to the server (yet, or at the moment).
    #[error("cannot obtain a JWT-SVID: the agent is not connected to the server; retry")]
    NotConnected,
    /// The server refused.
    #[error("server refused the JWT-SVID: {0}")]
    Refused(String),
    /// The server found the request invalid.
    #[error("{0}")]
    Invalid(String),
    /// The server did not answer in time or failed.
    #[error("cannot obtain a JWT-SVID from the server: {0}")]
    Unavailable(String),
    /// The caller asked for too many new tokens too fast.
    #[error("too many new JWT-SVID requests from this caller; retry in a second")]
    RateLimited,
}

#[derive(Clone)]
struct Cached {
    token: String,
    kid: String,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

type Key = (String, Vec<String>);

fn key_bytes(key: &Key, c: &Cached) -> usize {
    key.0.len()
        + key.1.iter().map(|a| a.len() + 24).sum::<usize>()
        + c.token.len()
        + c.kid.len()
        + 128
}

/// Tokens in least-recently-used order, bounded by bytes.
struct Lru {
    map: HashMap<Key, (Cached, u64)>,
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    max_bytes: usize,
}

impl Lru {
    fn get(&mut self, key: &Key) -> Option<Cached> {
        self.tick += 1;
        let tick = self.tick;
        let (c, used) = self.map.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.clone());
        Some(c.clone())
    }

    fn put(&mut self, key: Key, value: Cached) {
        self.remove(&key);
        let size = key_bytes(&key, &value);
        while self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((c, _)) = self.map.remove(&oldest) {
                self.bytes -= key_bytes(&oldest, &c);
            }
        }
        if size > self.max_bytes {
            return;
        }
        self.tick += 1;
        self.bytes += size;
        self.order.insert(self.tick, key.clone());
        self.map.insert(key, (value, self.tick));
    }

    fn remove(&mut self, key: &Key) {
        if let Some((c, used)) = self.map.remove(key) {
            self.order.remove(&used);
            self.bytes -= key_bytes(key, &c);
        }
    }
}

/// A token bucket per caller.
struct Buckets {
    per_second: f64,
    callers: HashMap<u64, (f64, Instant)>,
}

impl Buckets {
    fn take(&mut self, caller: u64) -> bool {
        let now = Instant::now();
        let burst = self.per_second * 2.0;
        if self.callers.len() >= MAX_TRACKED_CALLERS {
            let per_second = self.per_second;
            self.callers.retain(|_, (tokens, at)| {
                *tokens + at.elapsed().as_secs_f64() * per_second < burst
            });
        }
        let (tokens, at) = self.callers.entry(caller).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The cache, shared by every Workload API call. Signing goes through the
/// identity owner.
pub struct JwtCache {
    owner: IdentityHandle,
    tokens: Mutex<Lru>,
    buckets: Mutex<Buckets>,
}

impl JwtCache {
    /// A cache signing through the identity owner, holding at most
    /// `max_bytes` of tokens, letting each caller cause
    /// `per_caller_per_second` signings (bursts of twice that).
    pub fn new(owner: IdentityHandle, max_bytes: usize, per_caller_per_second: u32) -> Self {
        Self {
            owner,
            tokens: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                max_bytes,
            }),
            buckets: Mutex::new(Buckets {
                per_second: f64::from(per_caller_per_second.max(1)),
                callers: HashMap::new(),
            }),
        }
    }

    fn get(&self, key: &Key) -> Option<Cached> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
    }

    fn put(&self, key: Key, value: Cached) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, value);
    }

    /// Bytes of tokens held.
    pub fn bytes(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// A token for `subject` (an entry's or a task's identity, whose
    /// SPIFFE ID is `spiffe_id`) and `audience`, from the cache while it is
    /// younger than half its life. Tokens signed by a key in `usable_kids`
    /// only are served from the cache (a tainted or removed key forces a
    /// new token).
    #[allow(clippy::too_many_arguments)]
    pub async fn token(
        &self,
        caller: u64,
        subject: &JwtSubject,
        spiffe_id: &str,
        audience: &[String],
        now: SystemTime,
        usable_kids: &[&str],
        exe_sha256: &str,
    ) -> Result<String, JwtFetchError> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let cache_name = match subject {
            JwtSubject::Entry(_) => spiffe_id.to_owned(),
            JwtSubject::Task(id) => format!("task:{id}"),
        };
        let key = (cache_name, aud.clone());
        let cached = self
            .get(&key)
            .filter(|c| c.expires_at > now && usable_kids.contains(&c.kid.as_str()));
        if let Some(c) = cached.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(c.token.clone());
        }
        // Only new signings count against the caller's rate.
        let allowed = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(caller);
        if !allowed {
            return match cached {
                Some(c) => Ok(c.token),
                None => Err(JwtFetchError::RateLimited),
            };
        }
        let wait = if cached.is_some() {
            FALLBACK_WAIT
        } else {
            FULL_WAIT
        };
        let call = self
            .owner
            .sign_jwt(subject.clone(), aud, exe_sha256.to_owned());
        let result = match tokio::time::timeout(wait, call).await {
            Err(_) => Err(JwtFetchError::Unavailable("timed out".into())),
            Ok(Err(CommandError::NotConnected)) => Err(JwtFetchError::NotConnected),
            Ok(Err(CommandError::Server(s))) => Err(match s.code() {
                tonic::Code::PermissionDenied
                | tonic::Code::FailedPrecondition
                | tonic::Code::NotFound => JwtFetchError::Refused(s.message().to_owned()),
                tonic::Code::InvalidArgument => JwtFetchError::Invalid(s.message().to_owned()),
                _ => JwtFetchError::Unavailable(s.message().to_owned()),
            }),
            Ok(Err(e)) => Err(JwtFetchError::Unavailable(e.to_string())),
            Ok(Ok(r)) => Ok(r),
        };
        match result {
            Ok(r) => {
                let iat = from_unix_secs(r.issued_at);
                let exp = from_unix_secs(r.expires_at);
                let half = exp.duration_since(iat).unwrap_or(Duration::ZERO) / 2;
                self.put(
                    key,
                    Cached {
                        kid: token_kid(&r.token).unwrap_or_default(),
                        token: r.token.clone(),
                        refresh_at: iat + half,
                        expires_at: exp,
                    },
                );
                Ok(r.token)
            }
            Err(e) => match cached {
                Some(c)
                    if matches!(
                        e,
                        JwtFetchError::Unavailable(_) | JwtFetchError::NotConnected
                    ) =>
                {
                    tracing::warn!(err = %e, %spiffe_id, "serving cached JWT-SVID");
                    Ok(c.token)
                }
                _ => Err(e),
            },
        }
    }
}

/// The `kid` of a compact JWS, if readable.
fn token_kid(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("kid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(token: &str) -> Cached {
        Cached {
            token: token.to_owned(),
            kid: "k".into(),
            refresh_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn lru_stays_within_its_bytes_and_drops_the_least_recent() {
        let (handle, _commands) = crate::identity::test_handle();
        let cache = JwtCache::new(handle, 16 * 1024, 10);
        let key = |i: usize| ("spiffe://td/w".to_owned(), vec![format!("aud-{i}")]);
        for i in 0..10_000 {
            cache.put(key(i), cached(&"t".repeat(1000)));
            assert!(cache.bytes() <= 16 * 1024);
        }
        // The most recent is there, the oldest long gone.
        assert!(cache.get(&key(9_999)).is_some());
        assert!(cache.get(&key(0)).is_none());
        // Reading refreshes: key 9_990 survives new inserts that evict its
        // neighbours.
        assert!(cache.get(&key(9_990)).is_some());
        for i in 10_000..10_005 {
            cache.put(key(i), cached(&"t".repeat(1000)));
        }
        assert!(cache.get(&key(9_990)).is_some());
        assert!(cache.get(&key(9_991)).is_none());
    }

    #[tokio::test]
    async fn a_caller_over_its_rate_is_refused_and_others_are_not() {
        let (handle, mut commands) = crate::identity::test_handle();
        // An owner that is not connected to any server.
        tokio::spawn(async move {
            while let Some(cmd) = commands.recv().await {
                crate::identity::refuse(cmd);
            }
        });
        let cache = JwtCache::new(handle, 1 << 20, 5);
        let e = JwtSubject::Entry("e".into());
        let now = SystemTime::now();
        let mut refused = 0;
        for i in 0..50 {
            match cache
                .token(1, &e, "spiffe://td/w", &[format!("a{i}")], now, &[], "")
                .await
            {
                Err(JwtFetchError::RateLimited) => refused += 1,
                Err(JwtFetchError::NotConnected) => {}
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
        // A burst of 10 passes to the (absent) server, the rest is refused.
        assert_eq!(refused, 40);
        // Another caller is unaffected.
        assert!(matches!(
            cache
                .token(2, &e, "spiffe://td/w", &["x".into()], now, &[], "")
                .await,
            Err(JwtFetchError::NotConnected)
        ));
    }
}
