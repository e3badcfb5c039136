//! A process with several identities, end to end: a real server and agent,
//! the `spiffe` crate as the workload's client. Which identity a task is
//! begun under is chosen by what the entries permit, and the order of the
//! SVIDs (the first is every client's default) by the entries themselves:
//! neither may depend on the entries' random IDs, so each case runs with
//! the entries created in both orders.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lanyard_integration_tests::{NODE, TestServer, endpoint, eventually, own_uid, start_agent};
use lanyard_proto::admin::CreateEntryRequest;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{BeginTaskRequest, BeginTaskResponse};
use lanyard_proto::types;

const WAIT: Duration = Duration::from_secs(15);
const PLANNER: &str = "spiffe://example.org/agent/planner";
const CRM: &str = "spiffe://example.org/tool/crm";
const WRITER: &str = "spiffe://example.org/agent/writer";

fn header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

async fn begin(
    socket: &std::path::Path,
    spiffe_id: &str,
) -> Result<BeginTaskResponse, tonic::Status> {
    let channel = lanyard_uds::unix_channel(socket).unwrap();
    TaskIdentityClient::new(channel)
        .begin_task(header(BeginTaskRequest {
            spiffe_id: spiffe_id.into(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 120,
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

/// An entry for this process's uid; with `tasks`, one that requires a task
/// and allows exactly `report.generate` with `crm.read` (the issue's
/// planner); without, a plain entry with no task ceilings (a tool server).
fn entry(spiffe_id: &str, tasks: bool, hint: &str) -> types::Entry {
    types::Entry {
        spiffe_id: spiffe_id.into(),
        parent_id: NODE.into(),
        selectors: vec![format!("unix:uid:{}", own_uid())],
        x509_ttl_seconds: 60,
        hint: hint.into(),
        require_task: tasks,
        task_limits: tasks.then(|| types::TaskLimits {
            allowed_task_types: vec!["report.generate".into()],
            allowed_tools: vec!["crm.read".into()],
            max_task_ttl_seconds: 600,
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Node {
    server: TestServer,
    agent: lanyard_agent::Bound,
    dir: tempfile::TempDir,
}

/// A server with `entries` created in that order, and an agent that knows
/// them all.
async fn node(entries: &[types::Entry]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let token = server.token(NODE).await;
    for e in entries {
        server
            .admin()
            .create_entry(CreateEntryRequest {
                entry: Some(e.clone()),
            })
            .await
            .unwrap();
    }
    let agent = start_agent(dir.path(), server.addr(), Some(token))
        .await
        .unwrap();
    wait_synced(&agent, entries.len()).await;
    Node { server, agent, dir }
}

async fn wait_synced(agent: &lanyard_agent::Bound, n: usize) {
    let mut state = agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| s.synced && s.entries.iter().count() == n),
    )
    .await
    .unwrap()
    .unwrap();
}

/// The SPIFFE IDs of the caller's X.509-SVIDs as a SPIFFE client sees them
/// (the first is its default SVID), once all `n` are there.
async fn served_order(socket: &std::path::Path, n: usize) -> Vec<String> {
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(socket))
        .await
        .unwrap();
    eventually("every SVID of the caller", WAIT, || {
        let c = client.clone();
        async move {
            let ctx = c.fetch_x509_context().await.ok()?;
            let ids: Vec<String> = ctx
                .svids()
                .iter()
                .map(|s| s.spiffe_id().to_string())
                .collect();
            (ids.len() == n).then_some(ids)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_begun_under_the_one_identity_that_permits_it_in_either_creation_order() {
    for planner_first in [true, false] {
        let mut entries = vec![entry(PLANNER, true, ""), entry(CRM, false, "")];
        if !planner_first {
            entries.reverse();
        }
        let n = node(&entries).await;
        let socket = n.agent.socket.clone();

        // Named or not, the task is the planner's: the tool server's entry
        // allows no task at all.
        for named in ["", PLANNER] {
            let resp = begin(&socket, named)
                .await
                .unwrap_or_else(|e| panic!("planner_first={planner_first} named={named:?}: {e}"));
            assert_eq!(resp.granted_tools, ["crm.read"]);
            let svid = resp.x509_svid.expect("the task SVID");
            assert_eq!(svid.spiffe_id, PLANNER, "planner_first={planner_first}");
        }
        // Naming the identity that forbids it gives that identity's reason.
        let err = begin(&socket, CRM).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("the entry allows no task types"),
            "{}",
            err.message()
        );
        n.agent.shutdown().await;
        n.server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_permitting_identities_are_refused_by_name_and_a_denial_gives_every_reason() {
    for writer_first in [true, false] {
        let mut entries = vec![entry(PLANNER, true, ""), entry(WRITER, true, "")];
        if writer_first {
            entries.reverse();
        }
        let n = node(&entries).await;
        let socket = n.agent.socket.clone();
        let err = begin(&socket, "").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        for id in [PLANNER, WRITER, "spiffe_id"] {
            assert!(err.message().contains(id), "{}", err.message());
        }
        // Naming one resolves it.
        let resp = begin(&socket, WRITER).await.unwrap();
        assert_eq!(resp.x509_svid.unwrap().spiffe_id, WRITER);

        // A task neither identity permits: each identity's reason.
        let channel = lanyard_uds::unix_channel(&socket).unwrap();
        let err = TaskIdentityClient::new(channel)
            .begin_task(header(BeginTaskRequest {
                task_type: "report.generate".into(),
                tools: vec!["shell.exec".into()],
                ttl_seconds: 120,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        for id in [PLANNER, WRITER] {
            assert!(
                err.message().contains(&format!("{id}: task denied")),
                "{}",
                err.message()
            );
        }
        n.agent.shutdown().await;
        n.server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_identities_keep_their_serving_order_across_creation_order_and_agent_restarts() {
    let a = "spiffe://example.org/svc/a";
    let b = "spiffe://example.org/svc/b";
    let hinted = "spiffe://example.org/svc/hinted";
    // Created a, b, hinted: the hinted entry comes first, then by age.
    let n = node(&[
        entry(a, false, ""),
        entry(b, false, ""),
        entry(hinted, false, "primary"),
    ])
    .await;
    let socket = n.agent.socket.clone();
    assert_eq!(served_order(&socket, 3).await, [hinted, a, b]);
    n.agent.shutdown().await;
    let agent = start_agent(n.dir.path(), n.server.addr(), None)
        .await
        .unwrap();
    wait_synced(&agent, 3).await;
    assert_eq!(served_order(&socket, 3).await, [hinted, a, b]);
    agent.shutdown().await;
    n.server.stop().await;

    // Created in the other order: age decides among the unhinted ones.
    let n = node(&[
        entry(hinted, false, "primary"),
        entry(b, false, ""),
        entry(a, false, ""),
    ])
    .await;
    assert_eq!(served_order(&n.agent.socket, 3).await, [hinted, b, a]);
    n.agent.shutdown().await;
    n.server.stop().await;
}
