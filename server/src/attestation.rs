//! Join-token node attestation: single-use, expiring tokens, stored only as
//! hashes.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::{SpiffeId, TrustDomain};

use crate::store::{JoinTokenRecord, Store, StoreError};

/// Why a token could not be issued or redeemed.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// The token is unknown: never issued, or already used.
    #[error("join token is not valid (unknown or already used)")]
    UnknownToken,
    /// The token expired before it was used.
    #[error("join token expired")]
    Expired,
    /// The token was empty or malformed.
    #[error("join token is missing or malformed")]
    Malformed,
    /// The agent ID may not name an agent (another trust domain, the
    /// server's ID, the trust domain itself, a reserved path).
    #[error(transparent)]
    AgentId(#[from] lanyard_core::agent_id::AgentIdError),
    /// A registration entry already hands this SPIFFE ID to workloads.
    #[error("agent ID {0} is the SPIFFE ID of a registration entry")]
    CollidesWithEntry(SpiffeId),
    /// The TTL is zero or too large.
    #[error("join token TTL must be between 1 second and {} days", MAX_TOKEN_TTL.as_secs() / 86_400)]
    BadTtl,
    /// The random source failed.
    #[error("random source failed")]
    Random,
    /// The agent named a node attestor this server does not run.
    #[error("node attestor {0:?} is not enabled on this server (enabled: {1})")]
    UnknownAttestor(String, String),
    /// A node attestor refused the evidence, saying why.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Issues and redeems join tokens.
#[derive(Clone)]
pub struct JoinTokens {
    td: TrustDomain,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

/// A newly issued token.
#[derive(Clone)]
pub struct IssuedToken {
    /// The secret to hand to the agent.
    pub token: String,
    /// The SPIFFE ID the agent will get.
    pub agent_id: SpiffeId,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("agent_id", &self.agent_id)
            .finish()
    }
}

fn hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

impl JoinTokens {
    /// A token service over `store`.
    pub fn new(td: TrustDomain, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { td, store, clock }
    }

    /// Issues a token; the agent ID defaults to
    /// `spiffe://<td>/lanyard/agent/join_token/<token-id>`.
    pub async fn issue(
        &self,
        agent_id: Option<SpiffeId>,
        ttl: Duration,
    ) -> Result<IssuedToken, AttestationError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(AttestationError::BadTtl);
        }
        let expires = self
            .clock
            .now()
            .checked_add(ttl)
            .ok_or(AttestationError::BadTtl)?;
        let mut secret = [0u8; 16];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| AttestationError::Random)?;
        let token = hex::encode(secret);
        let agent_id = match agent_id {
            Some(id) => id,
            None => self
                .td
                .id_with_segments(["lanyard", "agent", "join_token", &hash(&token)[..16]])
                .map_err(|_| AttestationError::Malformed)?,
        };
        lanyard_core::agent_id::check_agent_id(&agent_id, &self.td)?;
        self.check_no_entry(&agent_id).await?;
        let expires_at = unix_secs(expires);
        self.store
            .create_join_token(&JoinTokenRecord {
                token_hash: hash(&token),
                agent_id: agent_id.clone(),
                expires_at,
            })
            .await?;
        Ok(IssuedToken {
            token,
            agent_id,
            expires_at,
        })
    }

    /// Redeems a token once, returning the agent ID it grants.
    pub async fn redeem(&self, token: &str) -> Result<SpiffeId, AttestationError> {
        if token.is_empty() || token.len() > 256 {
            return Err(AttestationError::Malformed);
        }
        let rec = self
            .store
            .take_join_token(&hash(token))
            .await?
            .ok_or(AttestationError::UnknownToken)?;
        if rec.expires_at <= unix_secs(self.clock.now()) {
            return Err(AttestationError::Expired);
        }
        // An entry created after the token may have taken the ID since.
        self.check_no_entry(&rec.agent_id).await?;
        Ok(rec.agent_id)
    }

    async fn check_no_entry(&self, agent_id: &SpiffeId) -> Result<(), AttestationError> {
        if self
            .store
            .list_entries()
            .await?
            .iter()
            .any(|e| &e.spiffe_id == agent_id)
        {
            return Err(AttestationError::CollidesWithEntry(agent_id.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use lanyard_core::clock::FakeClock;

    #[tokio::test]
    async fn tokens_are_single_use_and_expire() {
        let clock = Arc::new(FakeClock::at(1000));
        let t = JoinTokens::new(
            TrustDomain::new("td").unwrap(),
            Arc::new(MemoryStore::default()),
            clock.clone(),
        );
        let a = t.issue(None, Duration::from_secs(60)).await.unwrap();
        assert!(a.agent_id.path().starts_with("/lanyard/agent/join_token/"));
        assert_eq!(t.redeem(&a.token).await.unwrap(), a.agent_id);
        assert!(matches!(
            t.redeem(&a.token).await,
            Err(AttestationError::UnknownToken)
        ));
        let alias = SpiffeId::new("spiffe://td/node/n1").unwrap();
        let b = t
            .issue(Some(alias.clone()), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(b.agent_id, alias);
        clock.advance(Duration::from_secs(61));
        assert!(matches!(
            t.redeem(&b.token).await,
            Err(AttestationError::Expired)
        ));
        assert!(matches!(
            t.redeem("").await,
            Err(AttestationError::Malformed)
        ));
        assert!(matches!(
            t.issue(
                Some(SpiffeId::new("spiffe://other/n").unwrap()),
                Duration::from_secs(1)
            )
            .await,
            Err(AttestationError::AgentId(_))
        ));
        for bad in [
            "spiffe://td/lanyard/server",
            "spiffe://td",
            "spiffe://td/lanyard/x",
        ] {
            assert!(matches!(
                t.issue(Some(SpiffeId::new(bad).unwrap()), Duration::from_secs(1))
                    .await,
                Err(AttestationError::AgentId(_))
            ));
        }
        // Huge or zero TTLs are refused, never a panic.
        for ttl in [
            Duration::ZERO,
            Duration::from_secs(i64::MAX as u64),
            Duration::MAX,
        ] {
            assert!(matches!(
                t.issue(None, ttl).await,
                Err(AttestationError::BadTtl)
            ));
        }
    }
}
