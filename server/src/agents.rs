//! Agent records: the one owner of every change to an attested node
//! (attest, renew, ban, evict).
//!
//! Every change is a compare-and-swap on the stored record, retried on a
//! conflict against the record found, so a renewal that races a ban or an
//! eviction can never write the old record back. A ban is a tombstone that
//! eviction never removes: a banned agent ID stays refused for good.

use std::sync::Arc;

use lanyard_core::SpiffeId;
use lanyard_core::clock::{Clock, unix_secs};
use tokio::sync::watch;

use crate::store::{AgentRecord, Store, StoreError};

/// How often a change is retried against a concurrently changed record
/// before giving up.
const MAX_ATTEMPTS: usize = 32;

/// Why an agent change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent is banned (bans are permanent).
    #[error("agent {0} is banned")]
    Banned(SpiffeId),
    /// No such agent (never attested, or evicted).
    #[error("agent {0} not found (evicted or never attested)")]
    Unknown(SpiffeId),
    /// The caller's SVID is not the agent's current or previous one.
    #[error("agent SVID {0} has been superseded or revoked")]
    StaleSvid(String),
    /// The record kept changing under us.
    #[error("agent {0} is being changed concurrently; retry")]
    Contended(SpiffeId),
    /// The evidence already attested the live agent of this node: a
    /// replayed token.
    #[error(
        "this attestation evidence was already used by the live agent {0}; present a fresh token"
    )]
    Replayed(SpiffeId),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The owner of agent records.
#[derive(Clone)]
pub struct Agents {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Bumped when an agent is evicted or banned, so its streams end.
    changes: watch::Sender<u64>,
    /// Agents banned or evicted since this server started (through it or
    /// another server): their open streams end without a store read per
    /// stream per wake-up.
    gone: Arc<std::sync::RwLock<std::collections::HashSet<SpiffeId>>>,
}

impl Agents {
    /// Agents kept in `store`; `changes` is bumped on every ban or eviction.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, changes: watch::Sender<u64>) -> Self {
        Self {
            store,
            clock,
            changes,
            gone: Arc::default(),
        }
    }

    fn mark(&self, id: &SpiffeId, gone: bool) {
        let mut set = self.gone.write().unwrap_or_else(|p| p.into_inner());
        if gone {
            set.insert(id.clone());
        } else {
            set.remove(id);
        }
    }

    /// Whether the agent was banned or evicted while this server ran (a
    /// stream opened before that must end).
    pub fn is_gone(&self, id: &SpiffeId) -> bool {
        self.gone
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// A receiver that wakes on every ban or eviction.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes every stream to re-check its agent.
    pub fn wake(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// After a change to agent `id` on the feed (possibly made through
    /// another server): wakes the streams when it was banned or evicted, so
    /// its streams end on this server too. Renewals wake nothing.
    pub async fn refresh(&self, id: &str) -> Result<(), AgentError> {
        let Ok(id) = SpiffeId::new(id) else {
            return Ok(());
        };
        match self.store.get_agent(&id).await? {
            Some(a) if !a.banned => self.mark(&id, false),
            _ => {
                self.mark(&id, true);
                self.wake();
            }
        }
        Ok(())
    }

    /// One agent's record.
    pub async fn get(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, AgentError> {
        Ok(self.store.get_agent(id).await?)
    }

    /// Every agent.
    pub async fn list(&self) -> Result<Vec<AgentRecord>, AgentError> {
        Ok(self.store.list_agents().await?)
    }

    /// The agent behind a verified client SVID with `serial`, if it may act.
    pub async fn authenticate(
        &self,
        id: &SpiffeId,
        serial: &str,
    ) -> Result<AgentRecord, AgentError> {
        let agent = self
            .store
            .get_agent(id)
            .await?
            .ok_or_else(|| AgentError::Unknown(id.clone()))?;
        if agent.banned {
            return Err(AgentError::Banned(id.clone()));
        }
        if !agent.knows_serial(serial) {
            return Err(AgentError::StaleSvid(serial.to_owned()));
        }
        Ok(agent)
    }

    /// Refuses a banned ID before any work is done for it.
    pub async fn check_not_banned(&self, id: &SpiffeId) -> Result<(), AgentError> {
        match self.store.get_agent(id).await? {
            Some(a) if a.banned => Err(AgentError::Banned(id.clone())),
            _ => Ok(()),
        }
    }

    /// Records a (re-)attested agent holding a fresh SVID.
    pub async fn attested(
        &self,
        id: &SpiffeId,
        attestation_type: &str,
        serial: &str,
        expires_at: u64,
        node: &crate::node_attest::Attested,
    ) -> Result<AgentRecord, AgentError> {
        let mut current = self.store.get_agent(id).await?;
        let now = unix_secs(self.clock.now());
        for _ in 0..MAX_ATTEMPTS {
            if current.as_ref().is_some_and(|a| a.banned) {
                return Err(AgentError::Banned(id.clone()));
            }
            if let (Some(cur), Some(digest)) = (&current, &node.evidence_digest)
                && cur.expires_at > now
                && cur.evidence_digest.as_ref() == Some(digest)
            {
                return Err(AgentError::Replayed(id.clone()));
            }
            let next = AgentRecord {
                spiffe_id: id.clone(),
                attestation_type: attestation_type.to_owned(),
                serial: serial.to_owned(),
                previous_serial: None,
                expires_at,
                banned: false,
                attested_at: now,
                selectors: node.selectors.iter().map(ToString::to_string).collect(),
                evidence_digest: node.evidence_digest.clone(),
            };
            match self
                .store
                .swap_agent(id, current.as_ref(), Some(&next))
                .await?
            {
                Ok(()) => return Ok(next),
                Err(found) => current = found,
            }
        }
        Err(AgentError::Contended(id.clone()))
    }

    /// Records a renewal: the agent that authenticated as `caller` with
    /// `caller_serial` now holds `serial`. Re-checked against the record in
    /// the store at the moment of writing: a ban, an eviction or a
    /// re-attestation in the meantime wins.
    pub async fn renewed(
        &self,
        caller: AgentRecord,
        caller_serial: &str,
        serial: &str,
        expires_at: u64,
    ) -> Result<AgentRecord, AgentError> {
        let id = caller.spiffe_id.clone();
        let mut expected = caller;
        for _ in 0..MAX_ATTEMPTS {
            if expected.banned {
                return Err(AgentError::Banned(id));
            }
            if !expected.knows_serial(caller_serial) {
                return Err(AgentError::StaleSvid(caller_serial.to_owned()));
            }
            let mut next = expected.clone();
            next.previous_serial = Some(std::mem::replace(&mut next.serial, serial.to_owned()));
            next.expires_at = expires_at;
            match self
                .store
                .swap_agent(&id, Some(&expected), Some(&next))
                .await?
            {
                Ok(()) => return Ok(next),
                Err(None) => return Err(AgentError::Unknown(id)),
                Err(Some(found)) => expected = found,
            }
        }
        Err(AgentError::Contended(id))
    }

    /// Bans an agent: its SVIDs are refused and it can never attest again
    /// under this ID.
    pub async fn ban(&self, id: &SpiffeId) -> Result<AgentRecord, AgentError> {
        let mut current = self.store.get_agent(id).await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(cur) = current.as_ref() else {
                return Err(AgentError::Unknown(id.clone()));
            };
            if cur.banned {
                return Ok(cur.clone());
            }
            let mut next = cur.clone();
            next.banned = true;
            match self.store.swap_agent(id, Some(cur), Some(&next)).await? {
                Ok(()) => {
                    self.mark(id, true);
                    self.wake();
                    return Ok(next);
                }
                Err(found) => current = found,
            }
        }
        Err(AgentError::Contended(id.clone()))
    }

    /// Evicts an agent: it must attest again. A banned agent stays banned
    /// (the ban is refused here rather than removed).
    pub async fn evict(&self, id: &SpiffeId) -> Result<AgentRecord, AgentError> {
        let mut current = self.store.get_agent(id).await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(cur) = current.as_ref() else {
                return Err(AgentError::Unknown(id.clone()));
            };
            if cur.banned {
                return Err(AgentError::Banned(id.clone()));
            }
            match self.store.swap_agent(id, Some(cur), None).await? {
                Ok(()) => {
                    self.mark(id, true);
                    self.wake();
                    return Ok(cur.clone());
                }
                Err(found) => current = found,
            }
        }
        Err(AgentError::Contended(id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use lanyard_core::clock::FakeClock;

    fn agents() -> (Agents, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let (tx, _) = watch::channel(0);
        (Agents::new(store, Arc::new(FakeClock::at(1000)), tx), dir)
    }

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://td/node/n1").unwrap()
    }

    #[tokio::test]
    async fn a_renewal_racing_a_ban_or_an_eviction_loses() {
        let (a, _d) = agents();
        a.attested(
            &id(),
            "join_token",
            "01",
            2000,
            &crate::node_attest::Attested::new(id()),
        )
        .await
        .unwrap();
        // The renewal authenticated (read the record) before the ban...
        let seen = a.authenticate(&id(), "01").await.unwrap();
        a.ban(&id()).await.unwrap();
        // ...and must not write the unbanned record back.
        assert!(matches!(
            a.renewed(seen, "01", "02", 3000).await,
            Err(AgentError::Banned(_))
        ));
        let stored = a.get(&id()).await.unwrap().unwrap();
        assert!(stored.banned);
        assert_eq!(stored.serial, "01");

        let (a, _d) = agents();
        a.attested(
            &id(),
            "join_token",
            "01",
            2000,
            &crate::node_attest::Attested::new(id()),
        )
        .await
        .unwrap();
        let seen = a.authenticate(&id(), "01").await.unwrap();
        a.evict(&id()).await.unwrap();
        assert!(matches!(
            a.renewed(seen, "01", "02", 3000).await,
            Err(AgentError::Unknown(_))
        ));
        assert_eq!(a.get(&id()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_renewal_racing_another_renewal_keeps_both_serials_consistent() {
        let (a, _d) = agents();
        a.attested(
            &id(),
            "join_token",
            "01",
            2000,
            &crate::node_attest::Attested::new(id()),
        )
        .await
        .unwrap();
        let seen = a.authenticate(&id(), "01").await.unwrap();
        let other = a.authenticate(&id(), "01").await.unwrap();
        a.renewed(other, "01", "02", 3000).await.unwrap();
        // The caller's serial is still known (previous): the late renewal
        // applies on top of the record it finds.
        let r = a.renewed(seen, "01", "03", 4000).await.unwrap();
        assert_eq!(r.serial, "03");
        assert_eq!(r.previous_serial.as_deref(), Some("02"));
    }

    #[tokio::test]
    async fn bans_are_tombstones_that_eviction_and_attestation_keep() {
        let (a, _d) = agents();
        a.attested(
            &id(),
            "join_token",
            "01",
            2000,
            &crate::node_attest::Attested::new(id()),
        )
        .await
        .unwrap();
        a.ban(&id()).await.unwrap();
        assert!(matches!(a.evict(&id()).await, Err(AgentError::Banned(_))));
        assert!(a.get(&id()).await.unwrap().unwrap().banned);
        assert!(matches!(
            a.attested(
                &id(),
                "join_token",
                "09",
                9000,
                &crate::node_attest::Attested::new(id())
            )
            .await,
            Err(AgentError::Banned(_))
        ));
        assert!(matches!(
            a.authenticate(&id(), "01").await,
            Err(AgentError::Banned(_))
        ));
        // Banning twice is fine.
        assert!(a.ban(&id()).await.unwrap().banned);
    }

    #[tokio::test]
    async fn entries_cannot_take_an_agent_id() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let (tx, _) = watch::channel(0);
        let a = Agents::new(store.clone(), Arc::new(FakeClock::at(1000)), tx);
        a.attested(
            &id(),
            "join_token",
            "01",
            2000,
            &crate::node_attest::Attested::new(id()),
        )
        .await
        .unwrap();
        let td = lanyard_core::TrustDomain::new("td").unwrap();
        let registry = crate::registry::Registry::load(td, store).await.unwrap();
        let mut e = crate::store::conformance::entry("e1", "spiffe://td/node/n1");
        e.parent_id = SpiffeId::new("spiffe://td/node/n2").unwrap();
        assert!(matches!(
            registry.create(e).await,
            Err(crate::registry::RegistryError::AgentId(_))
        ));
    }
}
