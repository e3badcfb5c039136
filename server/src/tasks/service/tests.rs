//! Unit tests of the task service with an in-memory store and a fake clock.

use super::*;
use crate::store::MemoryStore;
use lanyard_core::clock::FakeClock;
use lanyard_core::x509::SvidKey;
use lanyard_core::{TaskLimits, TrustDomain};
use std::time::Duration;

const T0: u64 = 1_800_000_000;

struct Fixture {
    tasks: Tasks,
    revocations: crate::enforce::Revocations,
    clock: Arc<FakeClock>,
    agent: SpiffeId,
    planner: RegistrationEntry,
    worker: RegistrationEntry,
}

async fn fixture() -> Fixture {
    let td = TrustDomain::new("td").unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let clock = Arc::new(FakeClock::at(T0));
    let ca = Ca::load_or_create(
        &td,
        "s1",
        None,
        store.clone(),
        clock.clone(),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    let registry = Registry::load(td, store.clone()).await.unwrap();
    let entry = async |id: &str, spiffe: &str| {
        let mut e = crate::store::conformance::entry(id, spiffe);
        e.task_limits = TaskLimits {
            allowed_task_types: vec!["*".into()],
            allowed_tools: vec!["*".into()],
            max_task_ttl: None,
            max_sensitivity: None,
            allowed_credentials: vec![],
        };
        e.created_at = u64::from(id.as_bytes()[0]);
        registry.create(e).await.unwrap()
    };
    let planner = entry("p", "spiffe://td/agent/planner").await;
    let worker = entry("w", "spiffe://td/agent/worker").await;
    let policies = Policies::load(store.clone(), clock.clone()).await.unwrap();
    let revocations = crate::enforce::Revocations::load(store.clone(), clock.clone())
        .await
        .unwrap();
    let tasks = Tasks::load(
        store,
        crate::tasks::TaskParts {
            registry,
            ca,
            policies,
            revocations: revocations.clone(),
        },
        clock.clone(),
        SensitivityLevels::default(),
        IssuanceSettings {
            default_x509_svid_ttl: Duration::from_secs(60),
            default_jwt_svid_ttl: Duration::from_secs(60),
            agent_svid_ttl: Duration::from_secs(60),
            jwt_issuer: "https://td".into(),
        },
    )
    .await
    .unwrap();
    Fixture {
        tasks,
        revocations,
        clock,
        agent: planner.parent_id.clone(),
        planner,
        worker,
    }
}

fn input(entry: &RegistrationEntry, parent: Option<(&str, &str)>) -> BeginInput {
    let csr = SvidKey::generate().unwrap().csr(&entry.spiffe_id).unwrap();
    BeginInput {
        entry_id: entry.id.to_string(),
        candidates: vec![],
        spec: lanyard_proto::convert::task_request(lanyard_proto::types::TaskSpec {
            task_type: "t".into(),
            tools: vec!["a".into()],
            ttl_seconds: 300,
            parent_task_id: parent.map(|p| p.0.to_owned()).unwrap_or_default(),
            delegation_token: parent.map(|p| p.1.to_owned()).unwrap_or_default(),
            ..Default::default()
        })
        .unwrap(),
        csr,
        jwt_audiences: vec![],
        caller: Caller::default(),
        approved: None,
    }
}

#[tokio::test]
async fn an_expired_delegation_token_is_refused_and_old_records_are_pruned() {
    let f = fixture().await;
    let (parent, minted) = f
        .tasks
        .begin(&f.agent, input(&f.planner, None))
        .await
        .unwrap();
    assert!(minted.svid.is_some());
    let pid = parent.grant.task_id.to_string();
    let (token, _) = f
        .tasks
        .delegate(
            &f.agent,
            &pid,
            f.worker.spiffe_id.as_str(),
            vec!["a".into()],
            Duration::from_secs(60),
            &Caller::default(),
        )
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(61));
    let err = f
        .tasks
        .begin(&f.agent, input(&f.worker, Some((&pid, &token))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // A token for another workload is refused too.
    let (token, _) = f
        .tasks
        .delegate(
            &f.agent,
            &pid,
            "spiffe://td/agent/other",
            vec!["a".into()],
            Duration::from_secs(60),
            &Caller::default(),
        )
        .await
        .unwrap();
    let err = f
        .tasks
        .begin(&f.agent, input(&f.worker, Some((&pid, &token))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("issued to"), "{err}");
    // Another agent cannot end, sign for or delegate from this task.
    let other = SpiffeId::new("spiffe://td/node/other").unwrap();
    assert!(matches!(
        f.tasks.end(Some(&other), &pid, TaskState::Ended, "x").await,
        Err(TaskServiceError::NotFound(_))
    ));
    assert!(
        f.tasks
            .sign(&other, &pid, &[], &["a".into()], "")
            .await
            .is_err()
    );

    // An unused token, and the task, go a day after expiry; nothing
    // before.
    f.tasks
        .delegate(
            &f.agent,
            &pid,
            f.worker.spiffe_id.as_str(),
            vec!["a".into()],
            Duration::from_secs(60),
            &Caller::default(),
        )
        .await
        .unwrap();
    assert_eq!(f.tasks.prune(Duration::from_secs(86_400)).await.unwrap(), 0);
    f.clock.advance(Duration::from_secs(300 + 86_400 + 1));
    assert_eq!(f.tasks.prune(Duration::from_secs(86_400)).await.unwrap(), 2);
    assert!(f.tasks.list(None, None, true).await.unwrap().is_empty());
}

/// A delegated task whose parent ended where this server's cascade could
/// not see the child (another server ended it before its feed brought the
/// child): the child's arrival on the feed revokes it.
#[tokio::test]
async fn a_child_whose_parent_ended_elsewhere_is_revoked_when_it_arrives() {
    let f = fixture().await;
    let (parent, _) = f
        .tasks
        .begin(&f.agent, input(&f.planner, None))
        .await
        .unwrap();
    let pid = parent.grant.task_id.to_string();
    let (token, _) = f
        .tasks
        .delegate(
            &f.agent,
            &pid,
            f.worker.spiffe_id.as_str(),
            vec!["a".into()],
            Duration::from_secs(300),
            &Caller::default(),
        )
        .await
        .unwrap();
    let (child, _) = f
        .tasks
        .begin(&f.agent, input(&f.worker, Some((&pid, &token))))
        .await
        .unwrap();
    // The parent ends in the store with no cascade (another server, whose
    // index did not hold the child yet).
    let store = f.tasks.inner.store.clone();
    let mut ended = parent.clone();
    ended.state = TaskState::Ended;
    store
        .swap_task(&parent.grant.task_id, Some(&parent), &ended)
        .await
        .unwrap()
        .unwrap();
    let before = store.get_task(&child.grant.task_id).await.unwrap().unwrap();
    assert_eq!(before.state, TaskState::Active);
    f.tasks.refresh(child.grant.task_id.as_str()).await.unwrap();
    let after = store.get_task(&child.grant.task_id).await.unwrap().unwrap();
    assert_eq!(after.state, TaskState::Revoked);
    assert!(after.end_reason.contains(&pid), "{}", after.end_reason);
}

/// What the server keeps per task returns to its floor once the tasks have
/// expired and the pruners have run, however many tasks came and went:
/// ended by their agent, revoked by an operator (listed for their agent
/// until they expire), and delegated (listed under their ancestor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_ended_tasks_leave_no_state_behind() {
    const TASKS: usize = 10_000;
    let f = fixture().await;
    let before = f.tasks.footprint();
    assert_eq!(before, crate::tasks::TaskFootprint::default());
    for i in 0..TASKS / 2 {
        let (parent, _) = f
            .tasks
            .begin(&f.agent, input(&f.planner, None))
            .await
            .unwrap();
        let pid = parent.grant.task_id.to_string();
        let (token, _) = f
            .tasks
            .delegate(
                &f.agent,
                &pid,
                f.worker.spiffe_id.as_str(),
                vec!["a".into()],
                Duration::from_secs(300),
                &Caller::default(),
            )
            .await
            .unwrap();
        let (child, _) = f
            .tasks
            .begin(&f.agent, input(&f.worker, Some((&pid, &token))))
            .await
            .unwrap();
        if i % 2 == 0 {
            // Ended by its agent: the child goes with it.
            f.tasks
                .end(Some(&f.agent), &pid, TaskState::Ended, "done")
                .await
                .unwrap();
        } else {
            // Revoked by an operator, child first; the parent is left to
            // expire on its own.
            f.tasks
                .end(
                    None,
                    &child.grant.task_id.to_string(),
                    TaskState::Revoked,
                    "r",
                )
                .await
                .unwrap();
        }
    }
    let busy = f.tasks.footprint();
    assert!(busy.ended > 0 && busy.ancestors > 0, "{busy:?}");
    assert!(!f.revocations.items().is_empty());
    assert!(f.revocations.issued().indexed().0 > 0);

    // Every task and SVID has expired, and the retention has passed.
    f.clock.advance(Duration::from_secs(300 + 86_400 + 1));
    f.tasks.prune(Duration::from_secs(86_400)).await.unwrap();
    f.revocations.prune().await.unwrap();
    f.revocations.issued().prune().await.unwrap();
    assert_eq!(f.tasks.footprint(), before);
    assert!(f.revocations.items().is_empty());
    assert_eq!(f.revocations.issued().indexed(), (0, 0));
    assert!(f.tasks.list(None, None, true).await.unwrap().is_empty());
}
