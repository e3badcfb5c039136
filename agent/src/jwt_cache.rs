//! JWT-SVIDs for workloads: a cache keyed by (SPIFFE ID, sorted audiences)
//! that serves a token until its half-life, and falls back to a still-valid
//! cached token when the server is slow or unreachable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lanyard_core::clock::from_unix_secs;
use lanyard_proto::server::SignJwtSvidRequest;
use lanyard_proto::server::node_client::NodeClient;
use tokio::sync::watch;
use tonic::transport::Channel;

/// How long to wait for the server when a valid cached token exists.
const FALLBACK_WAIT: Duration = Duration::from_secs(1);
/// How long to wait for the server when there is nothing to fall back on.
const FULL_WAIT: Duration = Duration::from_secs(10);
/// Cached tokens above which expired ones are pruned.
const PRUNE_AT: usize = 4096;

/// Why a JWT-SVID could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum JwtFetchError {
    /// The agent has no connection to the server yet.
    #[error("the agent is not connected to the server yet")]
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
}

#[derive(Clone)]
struct Cached {
    token: String,
    kid: String,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

/// The cache, shared by every Workload API call.
pub struct JwtCache {
    server: watch::Receiver<Option<NodeClient<Channel>>>,
    tokens: Mutex<HashMap<(String, Vec<String>), Cached>>,
}

impl JwtCache {
    /// A cache signing through the client published by the SVID manager.
    pub fn new(server: watch::Receiver<Option<NodeClient<Channel>>>) -> Self {
        Self {
            server,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &(String, Vec<String>)) -> Option<Cached> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: (String, Vec<String>), value: Cached, now: SystemTime) {
        let mut m = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= PRUNE_AT {
            m.retain(|_, c| c.expires_at > now);
        }
        m.insert(key, value);
    }

    /// A token for `spiffe_id` (from `entry_id`) and `audience`, from the
    /// cache while it is younger than half its life.
    /// Tokens signed by a key in `usable_kids` only are served from the
    /// cache (a tainted or removed key forces a new token).
    pub async fn token(
        &self,
        entry_id: &str,
        spiffe_id: &str,
        audience: &[String],
        now: SystemTime,
        usable_kids: &[&str],
    ) -> Result<String, JwtFetchError> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = (spiffe_id.to_owned(), aud.clone());
        let cached = self
            .get(&key)
            .filter(|c| c.expires_at > now && usable_kids.contains(&c.kid.as_str()));
        if let Some(c) = cached.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let wait = if cached.is_some() {
            FALLBACK_WAIT
        } else {
            FULL_WAIT
        };
        let client = self.server.borrow().clone();
        let result = match client {
            None => Err(JwtFetchError::NotConnected),
            Some(mut client) => {
                let call = client.sign_jwt_svid(SignJwtSvidRequest {
                    entry_id: entry_id.to_owned(),
                    audience: aud,
                });
                match tokio::time::timeout(wait, call).await {
                    Err(_) => Err(JwtFetchError::Unavailable("timed out".into())),
                    Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied => {
                        Err(JwtFetchError::Refused(s.message().to_owned()))
                    }
                    Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
                        Err(JwtFetchError::Invalid(s.message().to_owned()))
                    }
                    Ok(Err(s)) => Err(JwtFetchError::Unavailable(s.message().to_owned())),
                    Ok(Ok(r)) => Ok(r.into_inner()),
                }
            }
        };
        match result {
            Ok(r) => {
                let iat = from_unix_secs(u64::try_from(r.issued_at).unwrap_or(0));
                let exp = from_unix_secs(u64::try_from(r.expires_at).unwrap_or(0));
                let half = exp.duration_since(iat).unwrap_or(Duration::ZERO) / 2;
                self.put(
                    key,
                    Cached {
                        kid: token_kid(&r.token).unwrap_or_default(),
                        token: r.token.clone(),
                        refresh_at: iat + half,
                        expires_at: exp,
                    },
                    now,
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
