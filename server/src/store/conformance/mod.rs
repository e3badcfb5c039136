//! The behaviour every [`Store`] implementation must show. Each backend's
//! tests call [`run_all`] with a constructor of fresh, empty stores.
//! Test-only code: a failed check panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::{EntryId, RegistrationEntry, SpiffeId, TaskLimits};

use lanyard_core::TaskId;
use lanyard_core::task::{TaskGrant, TaskRecord, TaskState};

mod shared;

use shared::{
    agent_swaps_race_without_lost_updates, change_feed_numbers_every_change_in_order,
    documents_are_shared_and_announced, renewal_racing_a_ban_or_eviction_never_undoes_it,
    two_servers_creating_the_same_entry,
};

use super::{
    AgentRecord, CaKeyRecord, CaKeyState, DelegationRecord, JoinTokenRecord, JwtKeyRecord,
    KeyPurpose, PolicyRecord, Store, StoreError,
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
        enforcement_point: false,
        task_limits: TaskLimits::default(),
        revision: 0,
        created_at: 1,
        created_at_nanos: 0,
    }
}

fn agent_id(n: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://td/node/{n}")).unwrap_or_else(|_| unreachable!())
}

type Check = fn(Arc<dyn Store>, Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! checks {
    ($($one:ident),* ; $($two:ident),*) => {
        &[
            $((stringify!($one), (|s, _t| Box::pin($one(s))) as Check),)*
            $((stringify!($two), (|s, t| Box::pin($two(s, t))) as Check),)*
        ]
    };
}

/// Runs every conformance check, each on a fresh, empty database from
/// `make`, which returns two handles to it (for a shared database, two
/// separate connections, as two servers would hold; for an embedded one,
/// the same store twice) and a value kept alive meanwhile (a temp dir).
pub async fn run_all<G, F>(make: impl Fn() -> F)
where
    F: Future<Output = (Arc<dyn Store>, Arc<dyn Store>, G)>,
{
    let checks: &[(&str, Check)] = checks!(
        entries_crud,
        agents_crud,
        join_tokens_are_single_use,
        ca_keys,
        jwt_keys,
        counters,
        tasks_swap_and_list,
        policies_are_versioned,
        delegations_are_single_use;
        agent_swaps_race_without_lost_updates,
        renewal_racing_a_ban_or_eviction_never_undoes_it,
        two_servers_creating_the_same_entry,
        change_feed_numbers_every_change_in_order,
        documents_are_shared_and_announced
    );
    for (name, check) in checks {
        let (a, b, _guard) = make().await;
        eprintln!("store conformance ({}): {name}", a.kind());
        check(a, b).await;
    }
}

async fn entries_crud(s: Arc<dyn Store>) {
    let a = entry("a", "spiffe://td/w1");
    let b = entry("b", "spiffe://td/w2");
    s.create_entry(&b).await.unwrap();
    s.create_entry(&a).await.unwrap();
    assert!(matches!(
        s.create_entry(&a).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let ids: Vec<String> = s
        .list_entries()
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    let mut a2 = a.clone();
    a2.revision = 1;
    a2.hint = "updated".into();
    s.update_entry(&a2).await.unwrap();
    assert_eq!(s.get_entry(&a.id).await.unwrap(), Some(a2.clone()));
    let missing = entry("zz", "spiffe://td/w3");
    assert!(matches!(
        s.update_entry(&missing).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.delete_entry(&a.id).await.unwrap(), Some(a2));
    assert_eq!(s.delete_entry(&a.id).await.unwrap(), None);
    assert_eq!(s.get_entry(&a.id).await.unwrap(), None);
    assert_eq!(s.list_entries().await.unwrap(), vec![b]);
}

async fn agents_crud(s: Arc<dyn Store>) {
    let a = AgentRecord {
        spiffe_id: agent_id("n1"),
        attestation_type: "join_token".into(),
        serial: "01".into(),
        previous_serial: None,
        expires_at: 10,
        banned: false,
        attested_at: 1,
        selectors: vec![],
        evidence_digest: None,
    };
    let id = &a.spiffe_id;
    assert_eq!(s.swap_agent(id, None, Some(&a)).await.unwrap(), Ok(()));
    // Creating again over an existing record is a mismatch.
    assert_eq!(
        s.swap_agent(id, None, Some(&a)).await.unwrap(),
        Err(Some(a.clone()))
    );
    let mut a2 = a.clone();
    a2.serial = "02".into();
    a2.previous_serial = Some("01".into());
    assert_eq!(s.swap_agent(id, Some(&a), Some(&a2)).await.unwrap(), Ok(()));
    assert_eq!(s.get_agent(id).await.unwrap(), Some(a2.clone()));
    assert!(a2.knows_serial("01") && a2.knows_serial("02") && !a2.knows_serial("03"));
    assert_eq!(s.list_agents().await.unwrap().len(), 1);
    // A writer holding the stale record loses: nothing is written.
    let mut stale = a.clone();
    stale.serial = "03".into();
    assert_eq!(
        s.swap_agent(id, Some(&a), Some(&stale)).await.unwrap(),
        Err(Some(a2.clone()))
    );
    assert_eq!(
        s.swap_agent(id, Some(&a), None).await.unwrap(),
        Err(Some(a2.clone()))
    );
    assert_eq!(s.get_agent(id).await.unwrap(), Some(a2.clone()));
    assert_eq!(s.swap_agent(id, Some(&a2), None).await.unwrap(), Ok(()));
    assert_eq!(s.get_agent(id).await.unwrap(), None);
    assert_eq!(s.swap_agent(id, Some(&a2), None).await.unwrap(), Err(None));
}

fn agent(id: &SpiffeId) -> AgentRecord {
    AgentRecord {
        spiffe_id: id.clone(),
        attestation_type: "join_token".into(),
        serial: "0".into(),
        previous_serial: None,
        expires_at: 0,
        banned: false,
        attested_at: 0,
        selectors: vec![],
        evidence_digest: None,
    }
}

fn ca_key(id: &str) -> CaKeyRecord {
    CaKeyRecord {
        id: id.into(),
        cert_der: vec![1, 2, 3],
        key_pkcs8: vec![4, 5],
        state: CaKeyState::Active,
        tainted: false,
        owner: "server-a".into(),
    }
}

async fn join_tokens_are_single_use(s: Arc<dyn Store>) {
    let t = JoinTokenRecord {
        token_hash: "abc".into(),
        agent_id: agent_id("n1"),
        expires_at: 100,
    };
    s.create_join_token(&t).await.unwrap();
    assert!(matches!(
        s.create_join_token(&t).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.take_join_token("abc").await.unwrap(), Some(t));
    assert_eq!(s.take_join_token("abc").await.unwrap(), None);
    assert_eq!(s.take_join_token("nope").await.unwrap(), None);
}

async fn ca_keys(s: Arc<dyn Store>) {
    let k = ca_key("k1");
    s.put_ca_key(&k).await.unwrap();
    let mut k2 = k.clone();
    k2.id = "k2".into();
    k2.state = CaKeyState::Prepared;
    k2.tainted = true;
    k2.owner = "server-b".into();
    s.put_ca_key(&k2).await.unwrap();
    assert_eq!(s.list_ca_keys().await.unwrap(), vec![k.clone(), k2.clone()]);
    s.delete_ca_key("k1").await.unwrap();
    assert_eq!(s.list_ca_keys().await.unwrap(), vec![k2]);
}

async fn jwt_keys(s: Arc<dyn Store>) {
    let k = JwtKeyRecord {
        kid: "a".into(),
        key_pkcs8: vec![1],
        public_key: vec![9],
        not_before: 1,
        not_after: 5,
        state: CaKeyState::Active,
        tainted: false,
        owner: "server-b".into(),
        purpose: KeyPurpose::Jwt,
    };
    s.put_jwt_key(&k).await.unwrap();
    let mut k2 = k.clone();
    k2.kid = "b".into();
    // A WIT key lives in the same table and keeps its purpose.
    k2.purpose = KeyPurpose::Wit;
    s.put_jwt_key(&k2).await.unwrap();
    assert_eq!(s.list_jwt_keys().await.unwrap(), vec![k, k2.clone()]);
    s.delete_jwt_key("a").await.unwrap();
    assert_eq!(s.list_jwt_keys().await.unwrap(), vec![k2]);
}

async fn counters(s: Arc<dyn Store>) {
    assert_eq!(s.counter("c").await.unwrap(), 0);
    assert_eq!(s.bump_counter("c").await.unwrap(), 1);
    assert_eq!(s.bump_counter("c").await.unwrap(), 2);
    assert_eq!(s.counter("c").await.unwrap(), 2);
    assert_eq!(s.counter("other").await.unwrap(), 0);
    s.raise_counter("c", 10).await.unwrap();
    s.raise_counter("c", 5).await.unwrap();
    assert_eq!(s.counter("c").await.unwrap(), 10);
    s.raise_counter("new", 3).await.unwrap();
    assert_eq!(s.bump_counter("new").await.unwrap(), 4);
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
        intent: String::new(),
    }
}

async fn tasks_swap_and_list(s: Arc<dyn Store>) {
    let (a, b) = (task(2), task(1));
    assert_eq!(
        s.swap_task(&a.grant.task_id, None, &a).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        s.swap_task(&b.grant.task_id, None, &b).await.unwrap(),
        Ok(())
    );
    // Creating again fails and returns what is there.
    assert_eq!(
        s.swap_task(&a.grant.task_id, None, &a).await.unwrap(),
        Err(Some(a.clone()))
    );
    let mut ended = a.clone();
    ended.state = TaskState::Ended;
    assert_eq!(
        s.swap_task(&a.grant.task_id, Some(&a), &ended)
            .await
            .unwrap(),
        Ok(())
    );
    // A stale expectation loses.
    let mut revoked = a.clone();
    revoked.state = TaskState::Revoked;
    assert_eq!(
        s.swap_task(&a.grant.task_id, Some(&a), &revoked)
            .await
            .unwrap(),
        Err(Some(ended.clone()))
    );
    assert_eq!(
        s.get_task(&a.grant.task_id).await.unwrap(),
        Some(ended.clone())
    );
    let ids: Vec<TaskId> = s
        .list_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.grant.task_id)
        .collect();
    assert_eq!(ids, vec![b.grant.task_id, a.grant.task_id]);
}

async fn policies_are_versioned(s: Arc<dyn Store>) {
    for (version, shadow) in [(1, false), (2, true), (10, false)] {
        s.create_policy(&PolicyRecord {
            version,
            shadow,
            text: format!("// v{version}"),
            created_at: version,
            cleared: version == 10,
        })
        .await
        .unwrap();
    }
    let dup = PolicyRecord {
        version: 2,
        shadow: false,
        text: String::new(),
        created_at: 0,
        cleared: false,
    };
    assert!(matches!(
        s.create_policy(&dup).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let versions: Vec<u64> = s
        .list_policies()
        .await
        .unwrap()
        .iter()
        .map(|p| p.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 10]);
    let cleared: Vec<bool> = s
        .list_policies()
        .await
        .unwrap()
        .iter()
        .map(|p| p.cleared)
        .collect();
    assert_eq!(cleared, vec![false, false, true]);
}

async fn delegations_are_single_use(s: Arc<dyn Store>) {
    let d = DelegationRecord {
        token_hash: "h".into(),
        parent_task_id: TaskId::from_random([1; 16]),
        to_spiffe_id: SpiffeId::new("spiffe://td/child").unwrap(),
        tools: vec!["a".into()],
        ttl_seconds: 30,
        expires_at: 60,
    };
    s.create_delegation(&d).await.unwrap();
    assert!(matches!(
        s.create_delegation(&d).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(s.take_delegation("h").await.unwrap(), Some(d));
    assert_eq!(s.take_delegation("h").await.unwrap(), None);
}
