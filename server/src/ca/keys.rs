//! The authority key slots and their life cycle, persisted in the store.
//!
//! With several servers on one database every server owns its own X.509 CA,
//! JWT key and WIT key and runs their life cycle (prepare, activate,
//! retire) on its own schedule; the bundle is the union of every server's published keys.
//! A key of another server is only ever read, tainted or revoked (for a
//! server that is gone for good), and expired keys of any server are
//! dropped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard_core::TrustDomain;
use lanyard_core::jwt::JwtSigner;
use lanyard_core::rotation::{ca_activate_at, ca_prepare_at};
use lanyard_core::x509::{CertInfo, X509Authority};

use super::material::{self, JwtKey, Key, X509Key};
use super::ring::{Ring, Slot};
use super::{AuthorityInfo, CaError, CaSnapshot};
use crate::store::{CaKeyRecord, CaKeyState, JwtKeyRecord, KeyPurpose, Store};

/// Every kind of key.
pub(super) struct Keys {
    x509: Ring<X509Key>,
    jwt: Ring<JwtKey>,
    /// The keys that sign WIT-SVIDs: JWT-format keys of their own, never
    /// in the JWT bundle.
    wit: Ring<JwtKey>,
    /// Where this server's private keys are kept, when not in the store.
    key_dir: Option<std::path::PathBuf>,
}

type JwtSlots = Vec<(Slot<JwtKey>, String)>;
type Stored = (Vec<(Slot<X509Key>, String)>, JwtSlots, JwtSlots);

/// The name of a JWT-format key's purpose in files and `ca show`.
fn kind_of(purpose: KeyPurpose) -> &'static str {
    match purpose {
        KeyPurpose::Jwt => "jwt",
        KeyPurpose::Wit => "wit",
    }
}

impl Keys {
    /// The keys in the store, as slots. Records without an owner (written
    /// before servers had IDs) are adopted by `me`.
    async fn read_stored(
        store: &dyn Store,
        me: &str,
        ttl: Duration,
        key_dir: Option<&std::path::Path>,
    ) -> Result<Stored, CaError> {
        let own = |o: &str| o.is_empty() || o == me;
        let owner = |o: &str| {
            if o.is_empty() {
                me.to_owned()
            } else {
                o.to_owned()
            }
        };
        // A record of this server holding its private key while keys are
        // kept in the data dir (a migrated or older database) is rewritten:
        // the key moves to the data dir, the row keeps the public part.
        let rewrite =
            |o: &str, has_key: bool| o.is_empty() || (own(o) && has_key && key_dir.is_some());
        let mut x509 = Vec::new();
        for rec in store.list_ca_keys().await? {
            let file = key_dir
                .filter(|_| own(&rec.owner))
                .map(|d| material::key_path(d, "x509", &rec.id));
            x509.push((
                Slot {
                    key: Arc::new(X509Key::from_record(&rec, file.as_deref())?),
                    state: rec.state,
                    tainted: rec.tainted,
                    dirty: rewrite(&rec.owner, !rec.key_pkcs8.is_empty()),
                    owner: owner(&rec.owner),
                    stored: true,
                },
                rec.id,
            ));
        }
        let (mut jwt, mut wit) = (Vec::new(), Vec::new());
        for rec in store.list_jwt_keys().await? {
            let nb = material::jwt_not_before(&rec, ttl.as_secs());
            let file = key_dir
                .filter(|_| own(&rec.owner))
                .map(|d| material::key_path(d, kind_of(rec.purpose), &rec.kid));
            let ring = match rec.purpose {
                KeyPurpose::Jwt => &mut jwt,
                KeyPurpose::Wit => &mut wit,
            };
            ring.push((
                Slot {
                    key: Arc::new(JwtKey::from_record(&rec, nb, file.as_deref())?),
                    state: rec.state,
                    tainted: rec.tainted,
                    dirty: rewrite(&rec.owner, !rec.key_pkcs8.is_empty()),
                    owner: owner(&rec.owner),
                    stored: true,
                },
                rec.kid,
            ));
        }
        Ok((x509, jwt, wit))
    }

    /// Loads keys from the store; creates this server's active ones where
    /// missing. Returns whether anything changed.
    pub(super) async fn load(
        td: &TrustDomain,
        me: &str,
        key_dir: Option<&std::path::Path>,
        store: &dyn Store,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(Self, bool), CaError> {
        let mut keys = Self {
            x509: Ring::new(me),
            jwt: Ring::new(me),
            wit: Ring::new(me),
            key_dir: key_dir.map(std::path::Path::to_path_buf),
        };
        let (x, j, w) = Self::read_stored(store, me, ttl, key_dir).await?;
        keys.x509.merge(x);
        keys.jwt.merge(j);
        keys.wit.merge(w);
        // A store holds one trust domain's authorities: a server started on
        // it with another would sign SVIDs no peer of either domain trusts.
        for slot in &keys.x509.slots {
            let info = CertInfo::parse(slot.key.cert_der())?;
            // (An upstream CA from disk may name no trust domain at all.)
            let Some(stored) = info.uri_sans.iter().find(|u| u.starts_with("spiffe://")) else {
                continue;
            };
            if *stored != td.id_string() {
                return Err(CaError::OtherTrustDomain {
                    stored: stored.trim_start_matches("spiffe://").to_owned(),
                    configured: td.to_string(),
                });
            }
        }
        let adopted = keys.x509.slots.iter().any(|s| s.dirty)
            || keys.jwt.slots.iter().any(|s| s.dirty)
            || keys.wit.slots.iter().any(|s| s.dirty);
        let mut changed =
            adopted | keys.x509.normalise(now) | keys.jwt.normalise(now) | keys.wit.normalise(now);
        if keys.x509.active().is_none() {
            let a = X509Authority::generate_root(td, now, ttl)?;
            tracing::info!(id = %a.info().subject_key_id, ttl = ?ttl, server = me, "created X.509 CA");
            keys.x509
                .slots
                .push(Slot::new(X509Key::own(a), CaKeyState::Active, me));
            changed = true;
        }
        for (ring, what) in [(&mut keys.jwt, "JWT"), (&mut keys.wit, "WIT")] {
            if ring.active().is_none() {
                let j = JwtSigner::generate(now, now + ttl)?;
                tracing::info!(kid = %j.key_id(), server = me, "created {what} key");
                ring.slots
                    .push(Slot::new(JwtKey::own(j), CaKeyState::Active, me));
                changed = true;
            }
        }
        if changed {
            keys.persist(store).await?;
        }
        Ok((keys, changed))
    }

    /// Merges the store's current keys (see [`Ring::merge`]); returns
    /// whether anything changed.
    pub(super) async fn refresh(
        &mut self,
        store: &dyn Store,
        ttl: Duration,
    ) -> Result<bool, CaError> {
        let (x, j, w) =
            Self::read_stored(store, &self.x509.me, ttl, self.key_dir.as_deref()).await?;
        Ok(self.x509.merge(x) | self.jwt.merge(j) | self.wit.merge(w))
    }

    /// Writes every slot changed here and deletes removed keys. Own keys
    /// are written whole (the private key to the data dir when keys are
    /// kept there); another server's key only ever changes its taint, read
    /// back and written over the stored record so its private part (when
    /// the database keeps it) is never lost.
    pub(super) async fn persist(&mut self, store: &dyn Store) -> Result<(), CaError> {
        let dir = self.key_dir.clone();
        let me = self.x509.me.clone();
        let mut foreign_ca = None;
        for s in self.x509.slots.iter_mut().filter(|s| s.dirty) {
            if s.owner == me {
                let key_pkcs8 = material::x509_record(&s.key, dir.as_deref())?
                    .ok_or(CaError::NothingPrepared)?;
                store
                    .put_ca_key(&CaKeyRecord {
                        id: s.key.id().to_owned(),
                        cert_der: s.key.cert_der().to_vec(),
                        key_pkcs8,
                        state: s.state,
                        tainted: s.tainted,
                        owner: s.owner.clone(),
                    })
                    .await?;
            } else {
                if foreign_ca.is_none() {
                    foreign_ca = Some(store.list_ca_keys().await?);
                }
                if let Some(mut rec) = foreign_ca
                    .as_ref()
                    .and_then(|l| l.iter().find(|r| r.id == s.key.id()).cloned())
                {
                    rec.tainted |= s.tainted;
                    store.put_ca_key(&rec).await?;
                }
            }
            s.dirty = false;
            s.stored = true;
        }
        let mut foreign_jwt = None;
        for (ring, purpose) in [
            (&mut self.jwt, KeyPurpose::Jwt),
            (&mut self.wit, KeyPurpose::Wit),
        ] {
            for s in ring.slots.iter_mut().filter(|s| s.dirty) {
                if s.owner == me {
                    let key_pkcs8 = material::jwt_record(&s.key, kind_of(purpose), dir.as_deref())?
                        .ok_or(CaError::NothingPrepared)?;
                    store
                        .put_jwt_key(&JwtKeyRecord {
                            kid: s.key.id().to_owned(),
                            key_pkcs8,
                            public_key: s.key.authority().public_key,
                            not_before: material::secs(s.key.not_before()),
                            not_after: material::secs(s.key.not_after()),
                            state: s.state,
                            tainted: s.tainted,
                            owner: s.owner.clone(),
                            purpose,
                        })
                        .await?;
                } else {
                    if foreign_jwt.is_none() {
                        foreign_jwt = Some(store.list_jwt_keys().await?);
                    }
                    if let Some(mut rec) = foreign_jwt
                        .as_ref()
                        .and_then(|l| l.iter().find(|r| r.kid == s.key.id()).cloned())
                    {
                        rec.tainted |= s.tainted;
                        store.put_jwt_key(&rec).await?;
                    }
                }
                s.dirty = false;
                s.stored = true;
            }
        }
        for id in self.x509.removed.drain(..) {
            store.delete_ca_key(&id).await?;
            material::remove_key(dir.as_deref(), "x509", &id);
        }
        for (ring, kind) in [(&mut self.jwt, "jwt"), (&mut self.wit, "wit")] {
            for id in ring.removed.drain(..) {
                store.delete_jwt_key(&id).await?;
                material::remove_key(dir.as_deref(), kind, &id);
            }
        }
        Ok(())
    }

    /// The published view.
    pub(super) fn snapshot(&self, sequence: u64) -> Result<CaSnapshot, CaError> {
        let active = self
            .x509
            .active()
            .and_then(|s| s.key.signer().cloned())
            .ok_or(CaError::NothingPrepared)?;
        let signer = |ring: &Ring<JwtKey>| {
            ring.active()
                .and_then(|s| s.key.signer().cloned())
                .ok_or(CaError::NothingPrepared)
        };
        let (jwt_active, wit_active) = (signer(&self.jwt)?, signer(&self.wit)?);
        let published = |ring: &Ring<JwtKey>| -> Vec<lanyard_core::jwt::JwtAuthority> {
            ring.ordered().iter().map(|s| s.key.authority()).collect()
        };
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
                    .chain(&self.wit.slots)
                    .filter(|s| s.tainted)
                    .map(|s| s.key.id().to_owned()),
            )
            .collect();
        let signers = self
            .x509
            .ordered()
            .iter()
            .filter_map(|s| s.key.signer().cloned())
            .collect();
        Ok(CaSnapshot {
            active,
            signers: Arc::new(signers),
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
            jwt_authorities: Arc::new(published(&self.jwt)),
            wit_active,
            wit_authorities: Arc::new(published(&self.wit)),
            tainted: Arc::new(tainted),
            sequence,
        })
    }

    pub(super) fn list(&self) -> Vec<AuthorityInfo> {
        fn info<K: Key>(kind: &'static str, s: &Slot<K>) -> AuthorityInfo {
            AuthorityInfo {
                id: s.key.id().to_owned(),
                owner: s.owner.clone(),
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
            .chain(self.wit.ordered().into_iter().map(|s| info("wit", s)))
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
            self.x509.slots.push(Slot::new(
                X509Key::own(a),
                CaKeyState::Prepared,
                &self.x509.me,
            ));
            changed = true;
        }
        for (ring, what) in [(&mut self.jwt, "JWT"), (&mut self.wit, "WIT")] {
            if !ring.has_prepared() {
                let j = JwtSigner::generate(now, now + ttl)?;
                tracing::info!(kid = %j.key_id(), "prepared {what} key");
                let me = ring.me.clone();
                ring.slots
                    .push(Slot::new(JwtKey::own(j), CaKeyState::Prepared, &me));
                changed = true;
            }
        }
        Ok(changed)
    }

    pub(super) fn activate(&mut self) -> Result<bool, CaError> {
        // Every slot or none: never an X.509 activation in memory with
        // the JWT or WIT one failing.
        if !self.x509.has_prepared() || !self.jwt.has_prepared() || !self.wit.has_prepared() {
            return Err(CaError::NothingPrepared);
        }
        self.x509.activate()?;
        self.jwt.activate()?;
        self.wit.activate()?;
        Ok(true)
    }

    pub(super) fn taint(&mut self, id: &str) -> Result<bool, CaError> {
        let me = self.x509.me.clone();
        let (state, mine, tainted, dirty) = if let Some(s) = self.x509.find(id) {
            (s.state, s.owner == me, &mut s.tainted, &mut s.dirty)
        } else if let Some(s) = self.jwt.find(id) {
            (s.state, s.owner == me, &mut s.tainted, &mut s.dirty)
        } else if let Some(s) = self.wit.find(id) {
            (s.state, s.owner == me, &mut s.tainted, &mut s.dirty)
        } else {
            return Err(CaError::UnknownKey(id.to_owned()));
        };
        // This server's active key must be replaced first; another
        // server's active key is tainted when that server is gone for good.
        if state == CaKeyState::Active && mine {
            return Err(CaError::ActiveKey(id.to_owned()));
        }
        let changed = !*tainted;
        *tainted = true;
        *dirty |= changed;
        tracing::warn!(%id, "authority tainted");
        Ok(changed)
    }

    pub(super) fn revoke(&mut self, id: &str) -> Result<bool, CaError> {
        fn take<K: Key>(ring: &mut Ring<K>, id: &str) -> Option<Result<(), CaError>> {
            let idx = ring.slots.iter().position(|s| s.key.id() == id)?;
            let s = &ring.slots[idx];
            if s.state == CaKeyState::Active && s.owner == ring.me {
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
            .or_else(|| take(&mut self.wit, id))
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
        let mut changed =
            self.x509.normalise(now) | self.jwt.normalise(now) | self.wit.normalise(now);
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
        let w = due(self
            .wit
            .active()
            .map(|s| (s.key.not_before(), s.key.not_after())));
        if (x.0 && !self.x509.has_prepared())
            || (j.0 && !self.jwt.has_prepared())
            || (w.0 && !self.wit.has_prepared())
        {
            changed |= self.prepare(td, now, ttl)?;
        }
        if x.1 && self.x509.has_prepared() {
            self.x509.activate()?;
            changed = true;
        }
        for (ring, (_, activate)) in [(&mut self.jwt, j), (&mut self.wit, w)] {
            if activate && ring.has_prepared() {
                ring.activate()?;
                changed = true;
            }
        }
        Ok(changed)
    }

    pub(super) fn next_event(&self, now: SystemTime) -> SystemTime {
        let far = now + Duration::from_secs(3600);
        [
            self.x509.next_event(),
            self.jwt.next_event(),
            self.wit.next_event(),
        ]
        .into_iter()
        .flatten()
        .fold(far, SystemTime::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn activation_changes_both_slots_or_neither() {
        let td = TrustDomain::new("td").unwrap();
        let store = MemoryStore::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(3600);
        let (mut keys, _) = Keys::load(&td, "s1", None, &store, now, ttl).await.unwrap();
        let active = |k: &Keys| {
            (
                k.x509.active().map(|s| s.key.id().to_owned()),
                k.jwt.active().map(|s| s.key.id().to_owned()),
                k.wit.active().map(|s| s.key.id().to_owned()),
            )
        };
        let before = active(&keys);
        // Only the X.509 slot has a prepared key (as after a partial
        // failure): activation must refuse without touching it.
        let a = X509Authority::generate_root(&td, now, ttl).unwrap();
        keys.x509
            .slots
            .push(Slot::new(X509Key::own(a), CaKeyState::Prepared, "s1"));
        assert!(matches!(keys.activate(), Err(CaError::NothingPrepared)));
        assert_eq!(active(&keys), before);
        keys.prepare(&td, now, ttl).unwrap();
        keys.activate().unwrap();
        let after = active(&keys);
        assert_ne!(after.0, before.0);
        assert_ne!(after.1, before.1);
        assert_ne!(after.2, before.2);
    }

    /// WIT keys are never JWT-SVID keys: a WIT in the JWT bundle or the
    /// OpenID Connect JWKS could be taken for a bearer token.
    #[tokio::test]
    async fn wit_keys_are_kept_apart_from_jwt_keys_and_survive_a_reload() {
        let td = TrustDomain::new("td").unwrap();
        let store = MemoryStore::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(3600);
        let (keys, _) = Keys::load(&td, "s1", None, &store, now, ttl).await.unwrap();
        let snap = keys.snapshot(1).unwrap();
        assert_eq!(snap.wit_authorities.len(), 1);
        assert_eq!(snap.wit_active.key_id(), snap.wit_authorities[0].key_id);
        assert!(
            snap.jwt_authorities
                .iter()
                .all(|a| a.key_id != snap.wit_active.key_id())
        );
        assert_eq!(keys.list().iter().filter(|a| a.kind == "wit").count(), 1);
        // Loaded again from the store: the same keys, in the same rings.
        let (again, changed) = Keys::load(&td, "s1", None, &store, now, ttl).await.unwrap();
        assert!(!changed);
        let snap2 = again.snapshot(1).unwrap();
        assert_eq!(snap2.wit_active.key_id(), snap.wit_active.key_id());
        assert_eq!(snap2.jwt_active.key_id(), snap.jwt_active.key_id());
    }
}
