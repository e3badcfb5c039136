//! The behaviour every [`Store`] implementation must show. Each backend's
//! tests call [`run_all`] with a constructor of fresh, empty stores.
//! Test-only code: a failed check panics.
#![allow(clippy::unwrap_used, clippy::panic, clippy::type_complexity)]

use std::time::Duration;

use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskLimits};

use lanyard_core::TaskId;
use lanyard_core::task::{TaskGrant, TaskRecord, TaskState};

use super::{
    AgentRecord, CaKeyRecord, CaKeyState, DelegationRecord, JoinTokenRecord, JwtKeyRecord,
    PolicyRecord, Store, StoreError,
};

/// A valid entry for tests.
pub fn entry(id: &str, spiffe_id: &str) -> RegistrationEntry {
    RegistrationEntry {
        id: EntryId::new(id).unwrap_or_else(|_| EntryId::from_random([7; 16])),
        spiffe_id: SpiffeId::new(spiffe_id).unwrap_or_else(|_| agent_id("fallback")),
        parent_id: agent_id("n1"),
        selectors: vec!["unix:uid:1000".parse().unwrap_or_else(|_| unreachable!())],
        x509_ttl: Some(Duration::from_secs(60)),
        jwt_ttl: None,
        dns_names: vec![],
        hint: String::new(),
        require_task: false,
        task_limits: TaskLimits::default(),
        revision: 0,
        created_at: 1,
    }
}

fn agent_id(n: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://td/node/{n}")).unwrap_or_else(|_| unreachable!())
}

/// Runs every conformance check, each on a fresh store from `make`. The
/// second value `make` returns is kept alive while the store is used (e.g. a
/// temp dir).
pub fn run_all<S: Store, G>(make: impl Fn() -> (S, G)) {
    let checks: &[(&str, fn(&dyn Store))] = &[
        ("entries_crud", entries_crud),
        ("agents_crud", agents_crud),
        (
            "agent_swaps_race_without_lost_updates",
            agent_swaps_race_without_lost_updates,
        ),
        ("join_tokens_are_single_use", join_tokens_are_single_use),
        ("ca_keys", ca_keys),
        ("jwt_keys", jwt_keys),
        ("counters", counters),
        ("tasks_swap_and_list", tasks_swap_and_list),
        ("policies_are_versioned", policies_are_versioned),
        ("delegations_are_single_use", delegations_are_single_use),
    ];
    for (name, check) in checks {
        let (store, _guard) = make();
        eprintln!("store conformance: {name}");
        check(&store);
    }
}

fn entries_crud(s: &dyn Store) {
    let a = entry("a", "spiffe://td/w1");
    let b = entry("b", "spiffe://td/w2");
    s.create_entry(&b).unwrap();
    s.create_entry(&a).unwrap();
    assert!(matches!(
        s.create_entry(&a),
        Err(StoreError::AlreadyExists(_))
    ));
    let ids: Vec<String> = s
        .list_entries()
        .unwrap()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    let mut a2 = a.clone();
    a2.revision = 1;
    a2.hint = "updated".into();
    s.update_entry(&a2).unwrap();
    assert_eq!(s.get_entry(&a.id).unwrap(), Some(a2.clone()));
    let missing = entry("zz", "spiffe://td/w3");
    assert!(matches!(
        s.update_entry(&missing),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.delete_entry(&a.id).unwrap(), Some(a2));
    assert_eq!(s.delete_entry(&a.id).unwrap(), None);
    assert_eq!(s.get_entry(&a.id).unwrap(), None);
    assert_eq!(s.list_entries().unwrap(), vec![b]);
}

fn agents_crud(s: &dyn Store) {
    let a = AgentRecord {
        spiffe_id: agent_id("n1"),
        attestation_type: "join_token".into(),
        serial: "01".into(),
        previous_serial: None,
        expires_at: 10,
        banned: false,
        attested_at: 1,
    };
    let id = &a.spiffe_id;
    assert_eq!(s.swap_agent(id, None, Some(&a)).unwrap(), Ok(()));
    // Creating again over an existing record is a mismatch.
    assert_eq!(
        s.swap_agent(id, None, Some(&a)).unwrap(),
        Err(Some(a.clone()))
    );
    let mut a2 = a.clone();
    a2.serial = "02".into();
    a2.previous_serial = Some("01".into());
    assert_eq!(s.swap_agent(id, Some(&a), Some(&a2)).unwrap(), Ok(()));
    assert_eq!(s.get_agent(id).unwrap(), Some(a2.clone()));
    assert!(a2.knows_serial("01") && a2.knows_serial("02") && !a2.knows_serial("03"));
    assert_eq!(s.list_agents().unwrap().len(), 1);
    // A writer holding the stale record loses: nothing is written.
    let mut stale = a.clone();
    stale.serial = "03".into();
    assert_eq!(
        s.swap_agent(id, Some(&a), Some(&stale)).unwrap(),
        Err(Some(a2.clone()))
    );
    assert_eq!(
        s.swap_agent(id, Some(&a), None).unwrap(),
        Err(Some(a2.clone()))
    );
    assert_eq!(s.get_agent(id).unwrap(), Some(a2.clone()));
    assert_eq!(s.swap_agent(id, Some(&a2), None).unwrap(), Ok(()));
    assert_eq!(s.get_agent(id).unwrap(), None);
    assert_eq!(s.swap_agent(id, Some(&a2), None).unwrap(), Err(None));
}

/// Two writers race on one agent record from many threads: each change is
/// a read-modify-swap loop, and no increment is lost.
fn agent_swaps_race_without_lost_updates(s: &dyn Store) {
    let id = agent_id("racer");
    let base = AgentRecord {
        spiffe_id: id.clone(),
        attestation_type: "join_token".into(),
        serial: "0".into(),
        previous_serial: None,
        expires_at: 0,
        banned: false,
        attested_at: 0,
    };
    assert_eq!(s.swap_agent(&id, None, Some(&base)).unwrap(), Ok(()));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..50 {
                    loop {
                        let cur = s.get_agent(&id).unwrap().unwrap();
                        let mut next = cur.clone();
                        next.expires_at += 1;
                        if s.swap_agent(&id, Some(&cur), Some(&next)).unwrap().is_ok() {
                            break;
                        }
                    }
                }
            });
        }
    });
    assert_eq!(s.get_agent(&id).unwrap().unwrap().expires_at, 200);
}

fn join_tokens_are_single_use(s: &dyn Store) {
    let t = JoinTokenRecord {
        token_hash: "abc".into(),
        agent_id: agent_id("n1"),
        expires_at: 100,
    };
    s.create_join_token(&t).unwrap();
    assert!(matches!(
        s.create_join_token(&t),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.take_join_token("abc").unwrap(), Some(t));
    assert_eq!(s.take_join_token("abc").unwrap(), None);
    assert_eq!(s.take_join_token("nope").unwrap(), None);
}

fn ca_keys(s: &dyn Store) {
    let k = CaKeyRecord {
        id: "k1".into(),
        cert_der: vec![1, 2, 3],
        key_pkcs8: vec![4, 5],
        state: CaKeyState::Active,
        tainted: false,
    };
    s.put_ca_key(&k).unwrap();
    let mut k2 = k.clone();
    k2.id = "k2".into();
    k2.state = CaKeyState::Prepared;
    k2.tainted = true;
    s.put_ca_key(&k2).unwrap();
    assert_eq!(s.list_ca_keys().unwrap(), vec![k.clone(), k2.clone()]);
    s.delete_ca_key("k1").unwrap();
    assert_eq!(s.list_ca_keys().unwrap(), vec![k2]);
}

fn jwt_keys(s: &dyn Store) {
    let k = JwtKeyRecord {
        kid: "a".into(),
        key_pkcs8: vec![1],
        not_before: 1,
        not_after: 5,
        state: CaKeyState::Active,
        tainted: false,
    };
    s.put_jwt_key(&k).unwrap();
    let mut k2 = k.clone();
    k2.kid = "b".into();
    s.put_jwt_key(&k2).unwrap();
    assert_eq!(s.list_jwt_keys().unwrap(), vec![k, k2.clone()]);
    s.delete_jwt_key("a").unwrap();
    assert_eq!(s.list_jwt_keys().unwrap(), vec![k2]);
}

fn counters(s: &dyn Store) {
    assert_eq!(s.counter("c").unwrap(), 0);
    assert_eq!(s.bump_counter("c").unwrap(), 1);
    assert_eq!(s.bump_counter("c").unwrap(), 2);
    assert_eq!(s.counter("c").unwrap(), 2);
    assert_eq!(s.counter("other").unwrap(), 0);
}

fn task(n: u8) -> TaskRecord {
    TaskRecord {
        grant: TaskGrant {
            task_id: TaskId::from_random([n; 16]),
            spiffe_id: SpiffeId::new("spiffe://td/w").unwrap(),
            task_type: "t".into(),
            tools: vec!["a".into()],
            destinations: vec![],
            data_sensitivity: "public".into(),
            on_behalf_of: None,
            intent_sha256: String::new(),
            not_after: 100,
            chain: vec![],
        },
        entry_id: EntryId::new("e").unwrap(),
        agent_id: agent_id("n1"),
        denied: vec![],
        created_at: 1,
        state: TaskState::Active,
        end_reason: String::new(),
    }
}

fn tasks_swap_and_list(s: &dyn Store) {
    let (a, b) = (task(2), task(1));
    assert_eq!(s.swap_task(&a.grant.task_id, None, &a).unwrap(), Ok(()));
    assert_eq!(s.swap_task(&b.grant.task_id, None, &b).unwrap(), Ok(()));
    // Creating again fails and returns what is there.
    assert_eq!(
        s.swap_task(&a.grant.task_id, None, &a).unwrap(),
        Err(Some(a.clone()))
    );
    let mut ended = a.clone();
    ended.state = TaskState::Ended;
    assert_eq!(
        s.swap_task(&a.grant.task_id, Some(&a), &ended).unwrap(),
        Ok(())
    );
    // A stale expectation loses.
    let mut revoked = a.clone();
    revoked.state = TaskState::Revoked;
    assert_eq!(
        s.swap_task(&a.grant.task_id, Some(&a), &revoked).unwrap(),
        Err(Some(ended.clone()))
    );
    assert_eq!(s.get_task(&a.grant.task_id).unwrap(), Some(ended.clone()));
    let ids: Vec<TaskId> = s
        .list_tasks()
        .unwrap()
        .into_iter()
        .map(|t| t.grant.task_id)
        .collect();
    assert_eq!(ids, vec![b.grant.task_id, a.grant.task_id]);
}

fn policies_are_versioned(s: &dyn Store) {
    for (version, shadow) in [(1, false), (2, true), (10, false)] {
        s.create_policy(&PolicyRecord {
            version,
            shadow,
            text: format!("// v{version}"),
            created_at: version,
        })
        .unwrap();
    }
    let dup = PolicyRecord {
        version: 2,
        shadow: false,
        text: String::new(),
        created_at: 0,
    };
    assert!(matches!(
        s.create_policy(&dup),
        Err(StoreError::AlreadyExists(_))
    ));
    let versions: Vec<u64> = s
        .list_policies()
        .unwrap()
        .iter()
        .map(|p| p.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 10]);
}

fn delegations_are_single_use(s: &dyn Store) {
    let d = DelegationRecord {
        token_hash: "h".into(),
        parent_task_id: TaskId::from_random([1; 16]),
        to_spiffe_id: SpiffeId::new("spiffe://td/child").unwrap(),
        tools: vec!["a".into()],
        ttl_seconds: 30,
        expires_at: 60,
    };
    s.create_delegation(&d).unwrap();
    assert!(matches!(
        s.create_delegation(&d),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.take_delegation("h").unwrap(), Some(d));
    assert_eq!(s.take_delegation("h").unwrap(), None);
}
