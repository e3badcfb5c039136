//! Leases: one record per credential handed to a task, so that the end of
//! the task ends them (and where the provider can, the token itself), on
//! whichever server sees the end. A lease names the task, provider,
//! scopes and expiry, never the credential; a token that must be revoked
//! at its authorization server is kept sealed beside it until then.

use std::sync::Arc;

use lanyard_core::clock::{Clock, unix_secs};
use serde::{Deserialize, Serialize};

use super::registry::CredentialError;
use super::seal::Sealed;
use crate::store::{DocKind, Store, StoreError};

/// How long an ended or expired lease stays on record (for `lease`
/// listings and a late sweep on another server).
pub const KEEP_ENDED_SECS: u64 = 600;
/// How many times a contended end is retried.
const SWAP_ATTEMPTS: usize = 8;

/// What kind of credential a lease handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// An OAuth access token.
    Bearer,
    /// A transaction token.
    TxnToken,
    /// A provider's secret value.
    Secret,
}

impl CredentialType {
    /// Its name on the wire and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::TxnToken => "txn_token",
            Self::Secret => "secret",
        }
    }
}

/// A token to revoke at its authorization server when the lease ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocable {
    /// The RFC 7009 endpoint.
    pub url: String,
    /// The token, sealed (bound to the lease ID).
    pub sealed: Sealed,
}

/// One credential handed to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its ID (random, 32 hex digits).
    pub lease_id: String,
    /// The task.
    pub task_id: String,
    /// The task's workload.
    pub spiffe_id: String,
    /// The agent holding the task.
    pub agent: String,
    /// The provider.
    pub provider: String,
    /// What it handed out.
    pub credential_type: CredentialType,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Where it is used, or empty.
    pub audience: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; never after the task's end.
    pub expires_at: u64,
    /// The token to revoke when the lease ends, if the provider can.
    pub revoke: Option<Revocable>,
    /// When it ended (before its expiry), Unix seconds.
    pub ended_at: Option<u64>,
    /// Why it ended.
    #[serde(default)]
    pub end_reason: String,
    /// The enforcement point it was released to, when not the workload.
    #[serde(default)]
    pub enforcement_point: String,
}

/// The leases in the store.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

fn decode(key: &str, v: serde_json::Value) -> Result<Lease, CredentialError> {
    serde_json::from_value(v).map_err(|e| {
        CredentialError::Store(StoreError::Corrupt {
            key: format!("docs/lease/{key}"),
            reason: e.to_string(),
        })
    })
}

fn encode(l: &Lease) -> Result<serde_json::Value, CredentialError> {
    serde_json::to_value(l).map_err(|e| CredentialError::Invalid(e.to_string()))
}

impl Leases {
    /// Leases in `store`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Records a new lease.
    pub async fn record(&self, lease: &Lease) -> Result<(), CredentialError> {
        let data = encode(lease)?;
        match self
            .store
            .swap_doc(
                DocKind::Lease,
                &lease.lease_id,
                &|cur| cur.is_none(),
                Some(&data),
            )
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(CredentialError::Invalid(format!(
                "lease {} exists",
                lease.lease_id
            ))),
        }
    }

    /// Every lease on record.
    pub async fn list(&self) -> Result<Vec<Lease>, CredentialError> {
        self.store
            .list_docs(DocKind::Lease)
            .await?
            .into_iter()
            .map(|(k, v)| decode(&k, v))
            .collect()
    }

    /// One lease.
    pub async fn get(&self, lease_id: &str) -> Result<Option<Lease>, CredentialError> {
        self.store
            .get_doc(DocKind::Lease, lease_id)
            .await?
            .map(|v| decode(lease_id, v))
            .transpose()
    }

    /// Replaces a lease with what `change` makes of it, atomically against
    /// every other writer; `change` answers `None` to leave it as it is.
    /// Returns the lease as it was when changed, or `None` (absent, or
    /// left).
    async fn update(
        &self,
        lease_id: &str,
        change: impl Fn(&Lease) -> Option<Lease>,
    ) -> Result<Option<Lease>, CredentialError> {
        for _ in 0..SWAP_ATTEMPTS {
            let Some(cur) = self.get(lease_id).await? else {
                return Ok(None);
            };
            let Some(next) = change(&cur) else {
                return Ok(None);
            };
            let expected = encode(&cur)?;
            let data = encode(&next)?;
            if self
                .store
                .swap_doc(
                    DocKind::Lease,
                    lease_id,
                    &|v| v == Some(&expected),
                    Some(&data),
                )
                .await?
                .is_ok()
            {
                return Ok(Some(cur));
            }
        }
        Err(CredentialError::Contended(lease_id.to_owned()))
    }

    /// Marks a lease ended, once: the lease as it was when this call ended
    /// it, or `None` when it had ended already (another server, an earlier
    /// sweep) or is gone. The sealed token stays until the revocation is
    /// done ([`Leases::forget_token`]).
    pub async fn end(
        &self,
        lease_id: &str,
        reason: &str,
    ) -> Result<Option<Lease>, CredentialError> {
        let now = unix_secs(self.clock.now());
        self.update(lease_id, |cur| {
            cur.ended_at.is_none().then(|| Lease {
                ended_at: Some(now),
                end_reason: reason.to_owned(),
                ..cur.clone()
            })
        })
        .await
    }

    /// Drops the sealed token of an ended lease (revoked, or past its
    /// expiry).
    pub async fn forget_token(&self, lease_id: &str) -> Result<(), CredentialError> {
        self.update(lease_id, |cur| {
            cur.revoke.is_some().then(|| Lease {
                revoke: None,
                ..cur.clone()
            })
        })
        .await
        .map(|_| ())
    }

    /// Removes leases that ended or expired more than
    /// [`KEEP_ENDED_SECS`] ago and hold no token still to revoke; returns
    /// how many.
    pub async fn prune(&self) -> Result<usize, CredentialError> {
        let now = unix_secs(self.clock.now());
        let mut n = 0;
        for l in self.list().await? {
            let over = l.ended_at.unwrap_or(l.expires_at).min(l.expires_at);
            if l.revoke.is_none()
                && (l.ended_at.is_some() || l.expires_at <= now)
                && over + KEEP_ENDED_SECS <= now
                && self.store.delete_doc(DocKind::Lease, &l.lease_id).await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use lanyard_core::clock::FakeClock;
    use std::time::Duration;

    const T0: u64 = 1_800_000_000;

    fn lease(id: &str, task: &str, expires_at: u64) -> Lease {
        Lease {
            lease_id: id.into(),
            task_id: task.into(),
            spiffe_id: "spiffe://td/agent".into(),
            agent: "spiffe://td/node".into(),
            provider: "github".into(),
            credential_type: CredentialType::Bearer,
            scopes: vec!["repo:read".into()],
            audience: String::new(),
            issued_at: T0,
            expires_at,
            revoke: None,
            ended_at: None,
            end_reason: String::new(),
            enforcement_point: String::new(),
        }
    }

    #[tokio::test]
    async fn a_lease_ends_once_and_leaves_after_it_is_over() {
        let clock = Arc::new(FakeClock::at(T0));
        let leases = Leases::new(Arc::new(MemoryStore::default()), clock.clone());
        leases.record(&lease("a", "t1", T0 + 60)).await.unwrap();
        leases.record(&lease("b", "t2", T0 + 60)).await.unwrap();
        // The same ID twice is refused (nothing half written).
        assert!(leases.record(&lease("a", "t1", T0 + 60)).await.is_err());

        // Ended once: a second end (another server, a sweep) is a no-op.
        let first = leases.end("a", "task ended").await.unwrap();
        assert_eq!(first.map(|l| l.lease_id), Some("a".to_owned()));
        assert!(leases.end("a", "again").await.unwrap().is_none());
        let a = leases.get("a").await.unwrap().unwrap();
        assert_eq!(a.ended_at, Some(T0));
        assert_eq!(a.end_reason, "task ended");

        // Kept for a while after it ended (or expired), then pruned.
        assert_eq!(leases.prune().await.unwrap(), 0);
        clock.advance(Duration::from_secs(KEEP_ENDED_SECS));
        assert_eq!(leases.prune().await.unwrap(), 1, "the ended one");
        clock.advance(Duration::from_secs(60));
        assert_eq!(leases.prune().await.unwrap(), 1, "the expired one");
        assert!(leases.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_lease_with_a_token_to_revoke_is_kept_until_it_is_forgotten() {
        let clock = Arc::new(FakeClock::at(T0));
        let leases = Leases::new(Arc::new(MemoryStore::default()), clock.clone());
        let mut l = lease("r", "t1", T0 + 60);
        l.revoke = Some(Revocable {
            url: "https://as.example/revoke".into(),
            sealed: Sealed {
                key_id: "k".into(),
                nonce: String::new(),
                ciphertext: "c".into(),
            },
        });
        leases.record(&l).await.unwrap();
        leases.end("r", "task ended").await.unwrap();
        clock.advance(Duration::from_secs(KEEP_ENDED_SECS + 120));
        assert_eq!(leases.prune().await.unwrap(), 0, "not revoked yet");
        leases.forget_token("r").await.unwrap();
        assert!(leases.get("r").await.unwrap().unwrap().revoke.is_none());
        assert_eq!(leases.prune().await.unwrap(), 1);
    }
}
