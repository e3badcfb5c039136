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

    /// Marks a lease ended, once: the lease as it was when this call ended
    /// it, or `None` when it had ended already (another server, an earlier
    /// sweep) or is gone.
    pub async fn end(
        &self,
        lease_id: &str,
        reason: &str,
    ) -> Result<Option<Lease>, CredentialError> {
        for _ in 0..SWAP_ATTEMPTS {
            let Some(cur) = self.get(lease_id).await? else {
                return Ok(None);
            };
            if cur.ended_at.is_some() {
                return Ok(None);
            }
            let mut next = cur.clone();
            next.ended_at = Some(unix_secs(self.clock.now()));
            reason.clone_into(&mut next.end_reason);
            // The sealed token stays until the revocation is done (the
            // caller clears it with `forget_token`).
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

    /// Drops the sealed token of an ended lease (revoked, or past its
    /// expiry).
    pub async fn forget_token(&self, lease_id: &str) -> Result<(), CredentialError> {
        for _ in 0..SWAP_ATTEMPTS {
            let Some(cur) = self.get(lease_id).await? else {
                return Ok(());
            };
            if cur.revoke.is_none() {
                return Ok(());
            }
            let mut next = cur.clone();
            next.revoke = None;
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
                return Ok(());
            }
        }
        Err(CredentialError::Contended(lease_id.to_owned()))
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
