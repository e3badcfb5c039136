//! The authority key slots and their life cycle, persisted in the store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::clock::{from_unix_secs, unix_secs};
use lanyard_core::jwt::JwtSigner;
use lanyard_core::rotation::{ca_activate_at, ca_prepare_at};
use lanyard_core::x509::X509Authority;

use super::{AuthorityInfo, CaError, CaSnapshot};
use crate::store::{CaKeyRecord, CaKeyState, JwtKeyRecord, Store};

/// What both kinds of key expose to the life cycle.
pub(super) trait Key {
    fn id(&self) -> &str;
    fn not_before(&self) -> SystemTime;
    fn not_after(&self) -> SystemTime;
}

impl Key for X509Authority {
    fn id(&self) -> &str {
        &self.info().subject_key_id
    }
    fn not_before(&self) -> SystemTime {
        self.info().not_before
    }
    fn not_after(&self) -> SystemTime {
        self.info().not_after
    }
}

impl Key for JwtSigner {
    fn id(&self) -> &str {
        self.key_id()
    }
    fn not_before(&self) -> SystemTime {
        JwtSigner::not_before(self)
    }
    fn not_after(&self) -> SystemTime {
        JwtSigner::not_after(self)
    }
}

pub(super) struct Slot<K> {
    key: Arc<K>,
    state: CaKeyState,
    tainted: bool,
}

/// One kind of key: its slots and the IDs removed since the last persist.
pub(super) struct Ring<K> {
    slots: Vec<Slot<K>>,
    removed: Vec<String>,
}

impl<K: Key> Ring<K> {
    fn active(&self) -> Option<&Slot<K>> {
        self.slots.iter().find(|s| s.state == CaKeyState::Active)
    }

    fn has_prepared(&self) -> bool {
        self.slots.iter().any(|s| s.state == CaKeyState::Prepared)
    }

    /// Keeps one active key (the longest-lived) and drops expired keys.
    fn normalise(&mut self, now: SystemTime) -> bool {
        let before = self.slots.len();
        let (keep, gone): (Vec<_>, Vec<_>) =
            self.slots.drain(..).partition(|s| s.key.not_after() > now);
        self.removed
            .extend(gone.iter().map(|s| s.key.id().to_owned()));
        self.slots = keep;
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == CaKeyState::Active)
            .max_by_key(|(_, s)| s.key.not_after())
            .map(|(i, _)| i);
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.state == CaKeyState::Active && Some(i) != best {
                s.state = CaKeyState::Old;
            }
        }
        self.slots.len() != before
    }

    fn activate(&mut self) -> Result<(), CaError> {
        let idx = self
            .slots
            .iter()
            .position(|s| s.state == CaKeyState::Prepared)
            .ok_or(CaError::NothingPrepared)?;
        for s in &mut self.slots {
            if s.state == CaKeyState::Active {
                s.state = CaKeyState::Old;
            }
        }
        self.slots[idx].state = CaKeyState::Active;
        tracing::info!(id = %self.slots[idx].key.id(), "authority activated");
        Ok(())
    }

    fn find(&mut self, id: &str) -> Option<&mut Slot<K>> {
        self.slots.iter_mut().find(|s| s.key.id() == id)
    }

    fn next_event(&self) -> Option<SystemTime> {
        let active = self.active()?;
        let (nb, na) = (active.key.not_before(), active.key.not_after());
        let step = if self.has_prepared() {
            ca_activate_at(nb, na)
        } else {
            ca_prepare_at(nb, na)
        };
        let expiries = self
            .slots
            .iter()
            .filter(|s| s.state != CaKeyState::Active)
            .map(|s| s.key.not_after());
        Some(expiries.fold(step, SystemTime::min))
    }

    /// The published keys, active first, then prepared, then old.
    fn ordered(&self) -> Vec<&Slot<K>> {
        let rank = |s: &CaKeyState| match s {
            CaKeyState::Active => 0,
            CaKeyState::Prepared => 1,
            CaKeyState::Old => 2,
        };
        let mut v: Vec<&Slot<K>> = self.slots.iter().collect();
        v.sort_by_key(|s| rank(&s.state));
        v
    }
}

/// Both kinds of key.
pub(super) struct Keys {
    x509: Ring<X509Authority>,
    jwt: Ring<JwtSigner>,
}

impl Keys {
    /// Loads keys from the store; creates active ones where missing.
    /// Returns whether anything changed.
    pub(super) fn load(
        td: &TrustDomain,
        store: &dyn Store,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(Self, bool), CaError> {
        let mut x509 = Ring {
            slots: Vec::new(),
            removed: Vec::new(),
        };
        for rec in store.list_ca_keys()? {
            x509.slots.push(Slot {
                key: Arc::new(X509Authority::from_parts(&rec.cert_der, &rec.key_pkcs8)?),
                state: rec.state,
                tainted: rec.tainted,
            });
        }
        let mut jwt = Ring {
            slots: Vec::new(),
            removed: Vec::new(),
        };
        for rec in store.list_jwt_keys()? {
            let nb = if rec.not_before == 0 {
                rec.not_after.saturating_sub(ttl.as_secs())
            } else {
                rec.not_before
            };
            jwt.slots.push(Slot {
                key: Arc::new(JwtSigner::from_parts(
                    &rec.kid,
                    &rec.key_pkcs8,
                    from_unix_secs(nb),
                    from_unix_secs(rec.not_after),
                )?),
                state: rec.state,
                tainted: rec.tainted,
            });
        }
        let mut keys = Self { x509, jwt };
        let mut changed = keys.x509.normalise(now) | keys.jwt.normalise(now);
        if keys.x509.active().is_none() {
            let a = X509Authority::generate_root(td, now, ttl)?;
            tracing::info!(id = %a.info().subject_key_id, ttl = ?ttl, "created X.509 CA");
            keys.x509.slots.push(Slot {
                key: Arc::new(a),
                state: CaKeyState::Active,
                tainted: false,
            });
            changed = true;
        }
        if keys.jwt.active().is_none() {
            let j = JwtSigner::generate(now, now + ttl)?;
            tracing::info!(kid = %j.key_id(), "created JWT key");
            keys.jwt.slots.push(Slot {
                key: Arc::new(j),
                state: CaKeyState::Active,
                tainted: false,
            });
            changed = true;
        }
        if changed {
            keys.persist(store)?;
        }
        Ok((keys, changed))
    }

    /// Writes every slot and deletes removed keys.
    pub(super) fn persist(&mut self, store: &dyn Store) -> Result<(), CaError> {
        for s in &self.x509.slots {
            store.put_ca_key(&CaKeyRecord {
                id: s.key.id().to_owned(),
                cert_der: s.key.cert_der().to_vec(),
                key_pkcs8: s.key.key_pkcs8_der(),
                state: s.state,
                tainted: s.tainted,
            })?;
        }
        for s in &self.jwt.slots {
            store.put_jwt_key(&JwtKeyRecord {
                kid: s.key.id().to_owned(),
                key_pkcs8: s.key.pkcs8().to_vec(),
                not_before: unix_secs(s.key.not_before()),
                not_after: unix_secs(s.key.not_after()),
                state: s.state,
                tainted: s.tainted,
            })?;
        }
        for id in self.x509.removed.drain(..) {
            store.delete_ca_key(&id)?;
        }
        for id in self.jwt.removed.drain(..) {
            store.delete_jwt_key(&id)?;
        }
        Ok(())
    }

    /// The published view.
    pub(super) fn snapshot(&self, sequence: u64) -> Result<CaSnapshot, CaError> {
        let active = self
            .x509
            .active()
            .ok_or(CaError::NothingPrepared)?
            .key
            .clone();
        let jwt_active = self
            .jwt
            .active()
            .ok_or(CaError::NothingPrepared)?
            .key
            .clone();
        let tainted = self
            .x509
            .slots
            .iter()
            .filter(|s| s.tainted)
            .map(|s| s.key.id().to_owned())
            .chain(
                self.jwt
                    .slots
                    .iter()
                    .filter(|s| s.tainted)
                    .map(|s| s.key.id().to_owned()),
            )
            .collect();
        Ok(CaSnapshot {
            active,
            authorities: Arc::new(
                self.x509
                    .ordered()
                    .iter()
                    .map(|s| s.key.cert_der().to_vec())
                    .collect(),
            ),
            authority_ids: Arc::new(
                self.x509
                    .ordered()
                    .iter()
                    .map(|s| s.key.id().to_owned())
                    .collect(),
            ),
            jwt_active,
            jwt_authorities: Arc::new(
                self.jwt
                    .ordered()
                    .iter()
                    .map(|s| s.key.authority())
                    .collect(),
            ),
            tainted: Arc::new(tainted),
            sequence,
        })
    }

    pub(super) fn list(&self) -> Vec<AuthorityInfo> {
        fn info<K: Key>(kind: &'static str, s: &Slot<K>) -> AuthorityInfo {
            AuthorityInfo {
                id: s.key.id().to_owned(),
                kind,
                state: s.state,
                tainted: s.tainted,
                not_before: s.key.not_before(),
                not_after: s.key.not_after(),
            }
        }
        self.x509
            .ordered()
            .into_iter()
            .map(|s| info("x509", s))
            .chain(self.jwt.ordered().into_iter().map(|s| info("jwt", s)))
            .collect()
    }

    pub(super) fn prepare(
        &mut self,
        td: &TrustDomain,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<bool, CaError> {
        let mut changed = false;
        if !self.x509.has_prepared() {
            let a = X509Authority::generate_root(td, now, ttl)?;
            tracing::info!(id = %a.info().subject_key_id, "prepared X.509 CA");
            self.x509.slots.push(Slot {
                key: Arc::new(a),
                state: CaKeyState::Prepared,
                tainted: false,
            });
            changed = true;
        }
        if !self.jwt.has_prepared() {
            let j = JwtSigner::generate(now, now + ttl)?;
            tracing::info!(kid = %j.key_id(), "prepared JWT key");
            self.jwt.slots.push(Slot {
                key: Arc::new(j),
                state: CaKeyState::Prepared,
                tainted: false,
            });
            changed = true;
        }
        Ok(changed)
    }

    pub(super) fn activate(&mut self) -> Result<bool, CaError> {
        // Both slots or neither: never an X.509 activation in memory with
        // the JWT one failing.
        if !self.x509.has_prepared() || !self.jwt.has_prepared() {
            return Err(CaError::NothingPrepared);
        }
        self.x509.activate()?;
        self.jwt.activate()?;
        Ok(true)
    }

    pub(super) fn taint(&mut self, id: &str) -> Result<bool, CaError> {
        let (state, tainted) = if let Some(s) = self.x509.find(id) {
            (s.state, &mut s.tainted)
        } else if let Some(s) = self.jwt.find(id) {
            (s.state, &mut s.tainted)
        } else {
            return Err(CaError::UnknownKey(id.to_owned()));
        };
        if state == CaKeyState::Active {
            return Err(CaError::ActiveKey(id.to_owned()));
        }
        let changed = !*tainted;
        *tainted = true;
        tracing::warn!(%id, "authority tainted");
        Ok(changed)
    }

    pub(super) fn revoke(&mut self, id: &str) -> Result<bool, CaError> {
        fn take<K: Key>(ring: &mut Ring<K>, id: &str) -> Option<Result<(), CaError>> {
            let idx = ring.slots.iter().position(|s| s.key.id() == id)?;
            let s = &ring.slots[idx];
            if s.state == CaKeyState::Active {
                return Some(Err(CaError::ActiveKey(id.to_owned())));
            }
            if !s.tainted {
                return Some(Err(CaError::NotTainted(id.to_owned())));
            }
            ring.slots.remove(idx);
            ring.removed.push(id.to_owned());
            tracing::warn!(%id, "authority revoked");
            Some(Ok(()))
        }
        take(&mut self.x509, id)
            .or_else(|| take(&mut self.jwt, id))
            .unwrap_or_else(|| Err(CaError::UnknownKey(id.to_owned())))
            .map(|()| true)
    }

    /// The scheduled life cycle, per kind of key.
    pub(super) fn tick(
        &mut self,
        td: &TrustDomain,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<bool, CaError> {
        let mut changed = self.x509.normalise(now) | self.jwt.normalise(now);
        let due = |ring_active: Option<(SystemTime, SystemTime)>| {
            ring_active.map_or((false, false), |(nb, na)| {
                (now >= ca_prepare_at(nb, na), now >= ca_activate_at(nb, na))
            })
        };
        let x = due(self
            .x509
            .active()
            .map(|s| (s.key.not_before(), s.key.not_after())));
        let j = due(self
            .jwt
            .active()
            .map(|s| (s.key.not_before(), s.key.not_after())));
        if (x.0 && !self.x509.has_prepared()) || (j.0 && !self.jwt.has_prepared()) {
            changed |= self.prepare(td, now, ttl)?;
        }
        if x.1 {
            self.x509.activate()?;
            changed = true;
        }
        if j.1 {
            self.jwt.activate()?;
            changed = true;
        }
        Ok(changed)
    }

    pub(super) fn next_event(&self, now: SystemTime) -> SystemTime {
        let far = now + Duration::from_secs(3600);
        [self.x509.next_event(), self.jwt.next_event()]
            .into_iter()
            .flatten()
            .fold(far, SystemTime::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn activation_changes_both_slots_or_neither() {
        let td = TrustDomain::new("td").unwrap();
        let store = MemoryStore::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(3600);
        let (mut keys, _) = Keys::load(&td, &store, now, ttl).unwrap();
        let active = |k: &Keys| {
            (
                k.x509.active().map(|s| s.key.id().to_owned()),
                k.jwt.active().map(|s| s.key.id().to_owned()),
            )
        };
        let before = active(&keys);
        // Only the X.509 slot has a prepared key (as after a partial
        // failure): activation must refuse without touching it.
        let a = X509Authority::generate_root(&td, now, ttl).unwrap();
        keys.x509.slots.push(Slot {
            key: Arc::new(a),
            state: CaKeyState::Prepared,
            tainted: false,
        });
        assert!(matches!(keys.activate(), Err(CaError::NothingPrepared)));
        assert_eq!(active(&keys), before);
        keys.prepare(&td, now, ttl).unwrap();
        keys.activate().unwrap();
        let after = active(&keys);
        assert_ne!(after.0, before.0);
        assert_ne!(after.1, before.1);
    }
}
