//! What the agent knows at one moment: its authorised entries, the SVIDs it
//! holds for them, and the trust bundle. Published as an immutable
//! [`Snapshot`] through a `watch` channel, so Workload API readers never lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::jwt::JwtAuthority;
use lanyard_core::{EntryId, RegistrationEntry, Selector, SelectorIndex, TrustDomain};

use crate::attestor::ProcessInstance;
use crate::held::ActiveTask;
pub use crate::held::CachedSvid;
use crate::workload_scope::WorkloadScope;

/// The authorised entries with their selector index, built once per entry
/// change and shared by every snapshot until the next one.
#[derive(Debug)]
pub struct EntrySet {
    /// In serving order ([`RegistrationEntry::serving_order`]: hinted
    /// entries first by hint, then by creation time): the first matching
    /// entry's SVID is a workload's default.
    entries: Vec<RegistrationEntry>,
    /// Selector index over `entries` (values are positions). Entries that
    /// require a task are not indexed: they grant no standing SVID.
    index: SelectorIndex<usize>,
    /// Whether any entry selects on `unix:sha256` (only then are callers'
    /// executables hashed).
    uses_sha256: bool,
    /// Positions by entry ID.
    by_id: HashMap<EntryId, usize>,
}

impl EntrySet {
    /// Sorts `entries` and indexes their selectors.
    pub fn new(mut entries: Vec<RegistrationEntry>) -> Self {
        entries.sort_by(|a, b| a.serving_order().cmp(&b.serving_order()));
        let index = SelectorIndex::build(
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.require_task)
                .map(|(i, e)| (i, e.selectors.as_slice())),
        );
        let uses_sha256 = entries.iter().any(|e| {
            e.selectors
                .iter()
                .any(|s| s.kind() == "unix" && s.value().starts_with("sha256:"))
        });
        let by_id = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Self {
            entries,
            index,
            uses_sha256,
            by_id,
        }
    }

    /// How many entries are authorized.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is authorized.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry `id`.
    pub fn get(&self, id: &EntryId) -> Option<&RegistrationEntry> {
        self.by_id.get(id).and_then(|i| self.entries.get(*i))
    }

    /// The entries a caller may begin a task under, in order: every entry
    /// (task-only ones included) whose selectors other than `unix:path` and
    /// `unix:sha256` the caller has, so that `task run` can exec into the
    /// program the entry names (its SVIDs are served only while the full
    /// selectors match). A linear scan: BeginTask is not a hot path.
    pub fn for_task<'a>(&'a self, selectors: &[Selector]) -> Vec<&'a RegistrationEntry> {
        self.entries
            .iter()
            .filter(|e| {
                e.selectors
                    .iter()
                    .filter(|s| s.is_boundary())
                    .all(|s| selectors.contains(s))
            })
            .collect()
    }

    /// Whether any entry selects on the executable's hash.
    pub fn uses_sha256(&self) -> bool {
        self.uses_sha256
    }

    /// Every entry, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, RegistrationEntry> {
        self.entries.iter()
    }

    /// The entries whose selectors are all in `selectors`, in order.
    fn matching<'a>(
        &'a self,
        selectors: &[Selector],
    ) -> impl Iterator<Item = &'a RegistrationEntry> {
        self.index
            .matching(selectors.iter())
            .into_iter()
            .filter_map(|i| self.entries.get(i))
    }
}

/// SVIDs by entry, hashed with a seeded fast hash (entry IDs come from the
/// server, and the map is read on every Workload API call).
pub type SvidMap = HashMap<EntryId, Arc<CachedSvid>, foldhash::fast::RandomState>;

/// The agent's state at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Authorised entries and their index.
    pub entries: Arc<EntrySet>,
    /// SVIDs by entry.
    pub svids: SvidMap,
    /// DER CA certificates of the trust domain.
    pub bundle: Arc<Vec<Vec<u8>>>,
    /// JWT authorities of the trust domain.
    pub jwt_authorities: Arc<Vec<JwtAuthority>>,
    /// WIT-SVID authorities of the trust domain.
    pub wit_authorities: Arc<Vec<JwtAuthority>>,
    /// IDs of tainted authorities.
    pub tainted: Arc<Vec<String>>,
    /// Bundle sequence from the server.
    pub bundle_sequence: u64,
    /// Tasks held, newest first.
    pub tasks: Arc<Vec<Arc<ActiveTask>>>,
    /// The enforced policy set's version (0: none) and text.
    pub policy_version: u64,
    /// The enforced policy set's text.
    pub policy_text: Arc<str>,
    /// The server's data sensitivity levels, lowest first.
    pub levels: Arc<lanyard_core::task::SensitivityLevels>,
    /// True once the first sync from the server has been applied.
    pub synced: bool,
    /// Revocations in force (from the server, pruned on expiry).
    pub revocations: Arc<lanyard_core::revocation::RevocationSet>,
    /// Bumped whenever `revocations` or `crls` change.
    pub revocation_generation: u64,
    /// One CRL (DER) per live CA, for the Workload API's `crl` fields.
    pub crls: Arc<Vec<Vec<u8>>>,
    /// Quarantines in force that concern this node's callers or the
    /// credentials its enforcement points are shown.
    pub quarantines: Arc<Vec<Quarantined>>,
}

/// A quarantine as the agent applies it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    /// Its ID (`local:TASK` until the server's record arrives).
    pub id: String,
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The task that triggered it.
    pub task_id: Option<String>,
    /// Every caller on this node with the SPIFFE ID is refused (an
    /// entry-wide quarantine, or one naming this node without a task).
    pub whole_id: bool,
    /// Every instance on every node (refused by enforcement points too).
    pub scope_entry: bool,
    /// The process instances (PID, start time) it holds on this node.
    pub instances: Vec<(i32, u64)>,
    /// The workloads those instances belong to: every caller in one of
    /// them is refused the quarantined SPIFFE ID (a fork, a double-forked
    /// grandchild, the program restarted).
    #[serde(default)]
    pub workloads: Vec<WorkloadScope>,
    /// Why.
    pub reason: String,
}

impl Quarantined {
    fn holds(&self, instance: &ProcessInstance) -> bool {
        instance
            .start_time()
            .is_some_and(|st| self.instances.contains(&(instance.pid(), st)))
    }

    /// Whether it withholds `spiffe_id` from a caller in `scope`.
    fn withholds(&self, spiffe_id: &str, scope: Option<&WorkloadScope>) -> bool {
        self.spiffe_id == spiffe_id
            && (self.whole_id || scope.is_some_and(|s| self.workloads.contains(s)))
    }
}

/// What a caller with given selectors is entitled to now.
#[derive(Debug)]
pub enum Identities {
    /// No entry matches: "no identity issued".
    None,
    /// Entries match but no SVID is ready yet.
    Pending,
    /// The SVIDs to serve, default first.
    Ready(Vec<Arc<CachedSvid>>),
}

impl Snapshot {
    /// An empty snapshot for `td`.
    pub fn empty(td: TrustDomain) -> Self {
        Self {
            trust_domain: td,
            entries: Arc::new(EntrySet::new(Vec::new())),
            svids: SvidMap::default(),
            bundle: Arc::new(Vec::new()),
            jwt_authorities: Arc::new(Vec::new()),
            wit_authorities: Arc::new(Vec::new()),
            tainted: Arc::new(Vec::new()),
            bundle_sequence: 0,
            tasks: Arc::new(Vec::new()),
            policy_version: 0,
            policy_text: Arc::from(""),
            levels: Arc::default(),
            synced: false,
            revocations: Arc::default(),
            revocation_generation: 0,
            crls: Arc::default(),
            quarantines: Arc::default(),
        }
    }

    /// The quarantine a caller is under, if any: its process instance is
    /// held by one, or every SPIFFE ID the caller's selectors give is
    /// withheld from it (entry-wide, or in the caller's workload). A
    /// caller with other identities too is served those
    /// ([`Self::withheld`] filters the rest).
    pub fn quarantine_of(
        &self,
        selectors: &[Selector],
        holder: Option<&ProcessInstance>,
    ) -> Option<&Quarantined> {
        if self.quarantines.is_empty() {
            return None;
        }
        if let Some(h) = holder
            && let Some(q) = self.quarantines.iter().find(|q| q.holds(h))
        {
            return Some(q);
        }
        let scope = WorkloadScope::of(selectors);
        let mut first = None;
        for e in self.entries.for_task(selectors) {
            if !e.selectors.iter().all(|s| selectors.contains(s)) {
                continue;
            }
            match self.withheld(e.spiffe_id.as_str(), scope.as_ref()) {
                Some(q) => first = first.or(Some(q)),
                None => return None,
            }
        }
        first
    }

    /// The quarantine that withholds `spiffe_id` from a caller in `scope`.
    pub fn withheld(&self, spiffe_id: &str, scope: Option<&WorkloadScope>) -> Option<&Quarantined> {
        self.quarantines
            .iter()
            .find(|q| q.withholds(spiffe_id, scope))
    }

    /// The tasks `holder` holds whose entry the caller's current selectors
    /// still match in full, newest first.
    pub fn tasks_for<'a>(
        &'a self,
        selectors: &'a [Selector],
        holder: Option<&'a ProcessInstance>,
    ) -> impl Iterator<Item = &'a Arc<ActiveTask>> + 'a {
        self.tasks.iter().filter(move |t| {
            holder.is_some_and(|h| t.owner.is(h))
                && self
                    .entries
                    .get(&t.record.entry_id)
                    .is_some_and(|e| e.selectors.iter().all(|s| selectors.contains(s)))
        })
    }

    /// The entries a caller with `selectors` matches, default first (one
    /// per SPIFFE ID).
    pub fn entries_for(&self, selectors: &[Selector]) -> Vec<&RegistrationEntry> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .matching(selectors)
            .filter(|e| seen.insert(e.spiffe_id.clone()))
            .collect()
    }

    /// The same snapshot over `entries`.
    pub fn with_entries(mut self, entries: Vec<RegistrationEntry>) -> Self {
        self.entries = Arc::new(EntrySet::new(entries));
        self
    }

    /// The identities for a caller (its selectors and, for tasks, the
    /// process instance behind it) at `now`: its task SVIDs first, newest
    /// first (the newest is every SPIFFE client's default SVID), then its
    /// standing SVIDs. Expired SVIDs are never returned; among standing
    /// SVIDs each SPIFFE ID appears once (the first entry's).
    pub fn identities_for(
        &self,
        selectors: &[Selector],
        holder: Option<&ProcessInstance>,
        now: SystemTime,
    ) -> Identities {
        let scope = (!self.quarantines.is_empty())
            .then(|| WorkloadScope::of(selectors))
            .flatten();
        let allowed = |s: &Arc<CachedSvid>| {
            self.quarantines.is_empty()
                || self
                    .withheld(s.spiffe_id.as_str(), scope.as_ref())
                    .is_none()
        };
        let mut tasks = 0;
        let mut ready: Vec<Arc<CachedSvid>> = self
            .tasks_for(selectors, holder)
            .inspect(|_| tasks += 1)
            .filter_map(|t| t.svid.clone())
            .filter(|s| s.not_after > now)
            .filter(allowed)
            .collect();
        let matched: Vec<&RegistrationEntry> = self.entries.matching(selectors).collect();
        if matched.is_empty() && tasks == 0 {
            return Identities::None;
        }
        let mut seen: std::collections::HashSet<_, foldhash::fast::RandomState> =
            std::collections::HashSet::default();
        ready.extend(
            matched
                .iter()
                .filter_map(|e| self.svids.get(&e.id))
                .filter(|s| s.not_after > now)
                .filter(|s| allowed(s))
                .filter(|s| seen.insert(&s.spiffe_id))
                .cloned(),
        );
        if ready.is_empty() {
            Identities::Pending
        } else {
            Identities::Ready(ready)
        }
    }
}

/// Entries and SVIDs for the agent's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;
    use std::time::SystemTime;

    use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskLimits};

    use super::CachedSvid;

    /// An entry `spiffe://td/ID` for callers with selector `sel`.
    pub(crate) fn entry(id: &str, created: u64, sel: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: EntryId::new(id).unwrap(),
            spiffe_id: SpiffeId::new(&format!("spiffe://td/{id}")).unwrap(),
            parent_id: SpiffeId::new("spiffe://td/node").unwrap(),
            selectors: vec![sel.parse().unwrap()],
            x509_ttl: None,
            jwt_ttl: None,
            dns_names: vec![],
            hint: String::new(),
            require_task: false,
            enforcement_point: false,
            task_limits: TaskLimits::default(),
            revision: 0,
            created_at: created,
            created_at_nanos: 0,
        }
    }

    /// An SVID for `e` (with its hint) valid until `not_after`.
    pub(crate) fn svid(e: &RegistrationEntry, not_after: SystemTime) -> Arc<CachedSvid> {
        Arc::new(CachedSvid {
            entry_id: e.id.clone(),
            spiffe_id: e.spiffe_id.clone(),
            chain: vec![vec![1]],
            key_pkcs8: vec![2],
            serial: e.id.as_str().to_owned(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after,
            renew_at: SystemTime::UNIX_EPOCH,
            entry_revision: 0,
            issuer_id: None,
            hint: e.hint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{entry, svid};
    use super::*;
    use lanyard_core::clock::from_unix_secs;

    #[test]
    fn identities_none_pending_ready_and_never_expired() {
        let a = entry("a", 2, "unix:uid:1");
        let b = entry("b", 1, "unix:uid:1");
        let mut s = Snapshot::empty(TrustDomain::new("td").unwrap())
            .with_entries(vec![a.clone(), b.clone()]);
        let caller: Vec<Selector> = vec!["unix:uid:1".parse().unwrap()];
        let other: Vec<Selector> = vec!["unix:uid:2".parse().unwrap()];
        assert!(matches!(
            s.identities_for(&other, None, from_unix_secs(5)),
            Identities::None
        ));
        assert!(matches!(
            s.identities_for(&caller, None, from_unix_secs(5)),
            Identities::Pending
        ));
        s.svids.insert(a.id.clone(), svid(&a, from_unix_secs(100)));
        s.svids.insert(b.id.clone(), svid(&b, from_unix_secs(10)));
        match s.identities_for(&caller, None, from_unix_secs(5)) {
            // b was created first: it is the default.
            Identities::Ready(v) => assert_eq!(
                v.iter().map(|s| s.entry_id.as_str()).collect::<Vec<_>>(),
                vec!["b", "a"]
            ),
            other => panic!("{other:?}"),
        }
        match s.identities_for(&caller, None, from_unix_secs(50)) {
            Identities::Ready(v) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_spiffe_id_is_served_once() {
        let a = entry("a", 1, "unix:uid:1");
        let mut b = entry("b", 2, "unix:uid:1");
        b.spiffe_id = a.spiffe_id.clone();
        let mut s = Snapshot::empty(TrustDomain::new("td").unwrap())
            .with_entries(vec![a.clone(), b.clone()]);
        s.svids.insert(a.id.clone(), svid(&a, from_unix_secs(100)));
        s.svids.insert(b.id.clone(), svid(&b, from_unix_secs(100)));
        let caller: Vec<Selector> = vec!["unix:uid:1".parse().unwrap()];
        match s.identities_for(&caller, None, from_unix_secs(5)) {
            Identities::Ready(v) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(!s.entries.uses_sha256());
    }

    #[test]
    fn require_task_entries_grant_no_standing_svid() {
        let mut e = entry("t", 1, "unix:uid:1");
        e.require_task = true;
        let s = Snapshot::empty(TrustDomain::new("td").unwrap()).with_entries(vec![e]);
        let caller: Vec<Selector> = vec!["unix:uid:1".parse().unwrap()];
        assert!(matches!(
            s.identities_for(&caller, None, from_unix_secs(5)),
            Identities::None
        ));
    }

    #[test]
    fn a_quarantine_withholds_its_identity_in_its_workloads_only() {
        // Two pods of one entry on this node, both also matching a tool
        // entry; the quarantine holds pod p1.
        let a = entry("a", 1, "k8s:ns:agents");
        let t = entry("t", 2, "k8s:ns:agents");
        let mut s = Snapshot::empty(TrustDomain::new("td").unwrap())
            .with_entries(vec![a.clone(), t.clone()]);
        s.svids.insert(a.id.clone(), svid(&a, from_unix_secs(100)));
        s.svids.insert(t.id.clone(), svid(&t, from_unix_secs(100)));
        let pod = |uid: &str| -> Vec<Selector> {
            ["unix:uid:0", "k8s:ns:agents", &format!("k8s:pod-uid:{uid}")]
                .iter()
                .map(|x| x.parse().unwrap())
                .collect()
        };
        s.quarantines = Arc::new(vec![Quarantined {
            id: "q".into(),
            spiffe_id: a.spiffe_id.to_string(),
            task_id: Some("task".into()),
            whole_id: false,
            scope_entry: false,
            instances: vec![],
            workloads: vec![WorkloadScope::Pod("p1".into())],
            reason: "r".into(),
        }]);
        let ids = |sel: &[Selector]| -> Vec<String> {
            match s.identities_for(sel, None, from_unix_secs(5)) {
                Identities::Ready(v) => v.iter().map(|x| x.spiffe_id.to_string()).collect(),
                other => panic!("{other:?}"),
            }
        };
        // In p1: the tool identity only; in p2 (same uid): both.
        assert_eq!(ids(&pod("p1")), vec![t.spiffe_id.to_string()]);
        assert_eq!(ids(&pod("p2")).len(), 2);
        assert!(s.quarantine_of(&pod("p1"), None).is_none());
        assert!(
            s.withheld(a.spiffe_id.as_str(), Some(&WorkloadScope::Pod("p1".into())))
                .is_some()
        );
        assert!(
            s.withheld(a.spiffe_id.as_str(), Some(&WorkloadScope::Uid(0)))
                .is_none()
        );
        // With the tool entry gone, a caller in p1 has nothing left: refused.
        let mut only =
            Snapshot::empty(TrustDomain::new("td").unwrap()).with_entries(vec![a.clone()]);
        only.svids
            .insert(a.id.clone(), svid(&a, from_unix_secs(100)));
        only.quarantines = s.quarantines.clone();
        assert_eq!(
            only.quarantine_of(&pod("p1"), None).map(|q| q.id.as_str()),
            Some("q")
        );
        assert!(only.quarantine_of(&pod("p2"), None).is_none());
    }
}
