//! One kind of authority key (X.509 CA or JWT) of every server, as
//! slots with a life-cycle state: which is active, which is prepared,
//! which expire, and how a store's copy merges with this server's.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::rotation::{ca_activate_at, ca_prepare_at};

use super::CaError;
use super::material::Key;
use crate::store::CaKeyState;

pub(super) struct Slot<K> {
    pub(super) key: Arc<K>,
    pub(super) state: CaKeyState,
    pub(super) tainted: bool,
    /// The server that owns the key.
    pub(super) owner: String,
    /// Written by this server since its last persist (a new key, a state
    /// change, a taint).
    pub(super) dirty: bool,
    /// Seen in the store (loaded, or persisted): an own key that was, and
    /// no longer is, was revoked through another server.
    pub(super) stored: bool,
}

impl<K> Slot<K> {
    pub(super) fn new(key: K, state: CaKeyState, owner: &str) -> Self {
        Self {
            key: Arc::new(key),
            state,
            tainted: false,
            owner: owner.to_owned(),
            dirty: true,
            stored: false,
        }
    }
}

/// One kind of key: its slots and the IDs removed since the last persist.
pub(super) struct Ring<K> {
    /// This server's ID.
    pub(super) me: String,
    pub(super) slots: Vec<Slot<K>>,
    pub(super) removed: Vec<String>,
}

impl<K: Key> Ring<K> {
    pub(super) fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            slots: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub(super) fn mine(&self, s: &Slot<K>) -> bool {
        s.owner == self.me
    }

    pub(super) fn active(&self) -> Option<&Slot<K>> {
        self.slots
            .iter()
            .find(|s| s.state == CaKeyState::Active && self.mine(s))
    }

    pub(super) fn has_prepared(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.state == CaKeyState::Prepared && self.mine(s))
    }

    /// Keeps one active own key (the longest-lived) and drops expired keys
    /// (of any server).
    pub(super) fn normalise(&mut self, now: SystemTime) -> bool {
        let before = self.slots.len();
        let (keep, gone): (Vec<_>, Vec<_>) =
            self.slots.drain(..).partition(|s| s.key.not_after() > now);
        self.removed
            .extend(gone.iter().map(|s| s.key.id().to_owned()));
        self.slots = keep;
        let me = self.me.clone();
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == CaKeyState::Active && s.owner == me)
            .max_by_key(|(_, s)| s.key.not_after())
            .map(|(i, _)| i);
        let mut changed = self.slots.len() != before;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.state == CaKeyState::Active && s.owner == me && Some(i) != best {
                s.state = CaKeyState::Old;
                s.dirty = true;
                changed = true;
            }
        }
        changed
    }

    pub(super) fn activate(&mut self) -> Result<(), CaError> {
        let me = self.me.clone();
        let idx = self
            .slots
            .iter()
            .position(|s| s.state == CaKeyState::Prepared && s.owner == me)
            .ok_or(CaError::NothingPrepared)?;
        for s in &mut self.slots {
            if s.state == CaKeyState::Active && s.owner == me {
                s.state = CaKeyState::Old;
                s.dirty = true;
            }
        }
        self.slots[idx].dirty = true;
        self.slots[idx].state = CaKeyState::Active;
        tracing::info!(id = %self.slots[idx].key.id(), "authority activated");
        Ok(())
    }

    pub(super) fn find(&mut self, id: &str) -> Option<&mut Slot<K>> {
        self.slots.iter_mut().find(|s| s.key.id() == id)
    }

    pub(super) fn next_event(&self) -> Option<SystemTime> {
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

    /// The published keys of every server: this server's active key
    /// first, then other active keys, then prepared, then old.
    pub(super) fn ordered(&self) -> Vec<&Slot<K>> {
        let rank = |s: &Slot<K>| match s.state {
            CaKeyState::Active if self.mine(s) => 0,
            CaKeyState::Active => 1,
            CaKeyState::Prepared => 2,
            CaKeyState::Old => 3,
        };
        let mut v: Vec<&Slot<K>> = self.slots.iter().collect();
        v.sort_by_key(|s| rank(s));
        v
    }

    /// Merges what the store holds now: other servers' keys are taken as
    /// stored; own keys keep their state here, take a taint made
    /// elsewhere, and are dropped when revoked elsewhere. Returns whether
    /// anything changed.
    pub(super) fn merge(&mut self, stored: Vec<(Slot<K>, String)>) -> bool {
        let mut changed = false;
        let mut seen = std::collections::HashSet::new();
        for (slot, id) in stored {
            seen.insert(id.clone());
            match self.slots.iter_mut().find(|s| s.key.id() == id) {
                Some(s) if s.owner == self.me => {
                    s.stored = true;
                    if slot.tainted && !s.tainted {
                        s.tainted = true;
                        changed = true;
                    }
                }
                Some(s) => {
                    if s.state != slot.state || s.tainted != slot.tainted || s.owner != slot.owner {
                        *s = slot;
                        changed = true;
                    }
                }
                None if slot.owner == self.me => {
                    // Our own key we no longer hold in memory (a restart
                    // race); keep it as stored.
                    self.slots.push(slot);
                    changed = true;
                }
                None => {
                    self.slots.push(slot);
                    changed = true;
                }
            }
        }
        let me = self.me.clone();
        let before = self.slots.len();
        self.slots.retain(|s| {
            let revoked_elsewhere = s.owner == me
                && s.stored
                && !s.dirty
                && s.state != CaKeyState::Active
                && !seen.contains(s.key.id());
            let gone_foreign = s.owner != me && !seen.contains(s.key.id());
            !(revoked_elsewhere || gone_foreign)
        });
        changed || self.slots.len() != before
    }
}
