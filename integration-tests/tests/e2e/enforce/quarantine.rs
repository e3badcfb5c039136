//! Quarantine: by denials, by policy, by an operator; what it holds (the workload: forks, restarts, the systemd unit); across restarts; reports a node cannot back up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_denials_quarantine_the_holder_until_released() {
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    for _ in 0..3 {
        let r = authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
            .await
            .unwrap();
        assert!(!r.allow);
    }
    // Three denials are within the default trigger: still served.
    assert!(
        authorize(&s.socket, x509(&holder.chain), "crm.read", "")
            .await
            .unwrap()
            .allow
    );
    assert!(holder.fetch().starts_with("svids"));
    // The fourth is over it.
    authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
        .await
        .unwrap();
    assert_quarantined(&s, &mut holder).await;
    // The server owns the record (reported by this node).
    let q = eventually("the quarantine record", WAIT, || async {
        quarantines(&s, false).await.into_iter().next()
    })
    .await;
    assert_eq!(q.task_id, holder.task_id);
    assert_eq!(q.spiffe_id, PLANNER);
    assert_eq!(q.source, "denials");
    assert_eq!(q.reported_by, TOOLS);
    // The task is over on the server: revoked by the quarantine, or ended
    // by the holder's agent quarantining it first (whichever came first).
    let t = s
        .server()
        .admin()
        .get_task(lanyard_proto::admin::TaskRequest {
            task_id: holder.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.state == "revoked" || t.state == "ended", "{t:?}");
    assert!(t.end_reason.contains("quarantined"), "{t:?}");
    // This enforcement point itself is not affected.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    assert!(
        SpiffeWorkloadApiClient::new(ch)
            .fetch_jwtsvid(header(JwtsvidRequest {
                audience: vec!["x".into()],
                spiffe_id: TOOLS.into(),
            }))
            .await
            .is_ok()
    );
    // Release: the holder is served again, with a fresh SVID.
    s.server()
        .admin()
        .release_quarantine(lanyard_proto::admin::QuarantineRequest { id: q.id.clone() })
        .await
        .unwrap();
    eventually("the holder served again", WAIT, || {
        let r = holder.fetch();
        async move { r.starts_with("svids").then_some(()) }
    })
    .await;
    let all = quarantines(&s, true).await;
    assert!(
        all[0].released_at > 0 && all[0].released_by.starts_with("uid:"),
        "{all:?}"
    );
    assert!(quarantines(&s, false).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_policy_and_an_operator_quarantine_at_once() {
    let s = setup(true).await;
    set_policy(
        &s,
        &format!(
            r#"{ALLOW_ALL}
            @id("exfiltration") @reason("mail to an attacker") @quarantine
            forbid (principal, action == Lanyard::Action::"UseTool", resource == Lanyard::Tool::"email.send")
            when {{ context.at_call && context.call.contains("to=attacker.example") }};"#
        ),
    )
    .await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    let r = authorize(
        &s.socket,
        x509(&holder.chain),
        "email.send",
        r#"{"to": "attacker.example"}"#,
    )
    .await
    .unwrap();
    assert!(!r.allow);
    assert_eq!(r.policy_ids, vec!["exfiltration"]);
    assert_quarantined(&s, &mut holder).await;
    let q = eventually("the quarantine record", WAIT, || async {
        quarantines(&s, false).await.into_iter().next()
    })
    .await;
    assert_eq!(q.source, "policy");
    drop(holder);
    // The quarantine holds the workload (this uid's planner processes), so
    // the next holder begins once it is released.
    release_all(&s).await;

    // An operator quarantines a task's holder.
    let mut other = Holder::start(&s.socket, &["crm.read"]);
    other.wait_line("stream ok");
    assert!(
        authorize(&s.socket, x509(&other.chain), "crm.read", "")
            .await
            .unwrap()
            .allow
    );
    let q = s
        .server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: other.task_id.clone(),
            reason: "suspicious tool use".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.source, "operator");
    assert_quarantined(&s, &mut other).await;
    let fetched = other.fetch();
    assert!(fetched.contains("suspicious tool use"), "{fetched}");
    // Unknown task, empty request: clear errors.
    let e = s
        .server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// A quarantine holds the workload, not one PID: the quarantined holder's
/// child, its double-forked grandchild (re-parented before it connects)
/// and the program started again are all refused the quarantined
/// identity, as is a new task under it; a process of the same uid that
/// matches another entry keeps that one; release serves them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_holds_forks_grandchildren_and_restarts_of_the_workload() {
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    // Before: the holder's children are served.
    assert!(holder.child_fetch().starts_with("svids"));
    assert!(fresh_fetch(&s.socket).starts_with("svids"));
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "prompt injection".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_quarantined(&s, &mut holder).await;
    let refused = |answer: &str| {
        assert!(
            answer.contains("PermissionDenied") && answer.contains("quarantined"),
            "{answer}"
        )
    };
    refused(&holder.child_fetch());
    refused(&holder.grandchild_fetch(s.dir.path()));
    // The program started again (a new process of the same uid and binary).
    drop(holder);
    refused(&fresh_fetch(&s.socket));
    let mut again = Command::new(HOLDER)
        .env("HOLD_SPIFFE_ID", PLANNER)
        .args(["hold"])
        .arg(&s.socket)
        .args(["report.generate", "crm.read"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let begun = String::from_utf8_lossy(&std::mem::take(&mut again.stdout)).into_owned();
    refused(&begun);
    // This process (same uid, another program) keeps its tool identity and
    // is not served the quarantined one.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let mut api = SpiffeWorkloadApiClient::new(ch);
    let x = api
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = x.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec![TOOLS]);
    let e = api
        .fetch_jwtsvid(header(JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: PLANNER.into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("quarantined"), "{e:?}");
    // Released: served again.
    release_all(&s).await;
    eventually("a restarted program served again", WAIT, || async {
        fresh_fetch(&s.socket).starts_with("svids").then_some(())
    })
    .await;
}

/// A systemd system unit's cgroup made for a test (the tests run as root),
/// removed when dropped.
struct UnitCgroup(std::path::PathBuf);

impl UnitCgroup {
    fn make(name: &str) -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|d| d.join("cgroup.controllers").exists())
            .expect("a unified cgroup hierarchy");
        let dir = root.join("system.slice").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// `task_holder ARGS` started inside the unit.
    fn holder(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && shift && exec "$@""#)
            .arg(&self.0)
            .arg("--")
            .arg(HOLDER)
            .args(args);
        c
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// On a host where the workload runs as a systemd service, the quarantine
/// holds the unit: the program restarted in the unit is refused, while a
/// process of the same uid and program outside it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_holds_the_systemd_unit_of_the_workload() {
    let s = setup(true).await;
    let unit = UnitCgroup::make(&format!("lanyard-test-{}.service", std::process::id()));
    let socket = s.socket.to_str().unwrap();
    let mut child = unit
        .holder(&["hold", socket, "report.generate", "crm.read"])
        .env("HOLD_SPIFFE_ID", PLANNER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let task = lines.next().unwrap().unwrap();
    let task_id = task.strip_prefix("task ").expect(&task).to_owned();
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id,
            reason: "prompt injection".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| snap.quarantines.iter().any(|q| !q.workloads.is_empty())),
    )
    .await
    .unwrap()
    .unwrap();
    let q = state.borrow().quarantines[0].clone();
    assert_eq!(
        q.workloads,
        vec![lanyard_agent::workload_scope::WorkloadScope::Unit(
            unit.0.file_name().unwrap().to_string_lossy().into_owned()
        )]
    );
    drop(child.stdin.take());
    child.wait().unwrap();
    // Restarted in the unit: refused.
    let out = unit.holder(&["fetch", socket]).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("PermissionDenied") && answer.contains("quarantined"),
        "{answer}"
    );
    // The same program and uid outside the unit: served.
    let answer = fresh_fetch(&s.socket);
    assert!(answer.starts_with("svids"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_holds_with_the_server_stopped_and_is_reported_when_it_is_back() {
    let mut s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read", "email.send"]);
    holder.wait_line("stream ok");
    let addr = s.server().addr();
    s.server.take().unwrap().stop().await;
    // Denials with the server down: this node quarantines on its own.
    for _ in 0..4 {
        let r = authorize(&s.socket, x509(&holder.chain), "payments.transfer", "")
            .await
            .unwrap();
        assert!(!r.allow);
    }
    assert_quarantined(&s, &mut holder).await;
    // Back: the server receives the report and owns the record.
    s.server =
        Some(lanyard_integration_tests::TestServer::start(s.dir.path(), &addr.to_string()).await);
    let q = eventually(
        "the quarantine reported to the restarted server",
        WAIT,
        || async { quarantines(&s, false).await.into_iter().next() },
    )
    .await;
    assert_eq!(q.task_id, holder.task_id);
    assert_eq!(q.source, "denials");
    // Still refused under the server's record.
    let fetched = holder.fetch();
    assert!(fetched.contains("quarantined"), "{fetched}");
}

/// The process state letter from /proc/PID/stat (`T`: stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_freeze_stops_the_process() {
    let s = setup_with(true, |c| c.quarantine.freeze = true).await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    let pid = holder.pid();
    assert_ne!(proc_state(pid), Some('T'));
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "freeze it".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the quarantined process stopped", WAIT, || async {
        (proc_state(pid) == Some('T')).then_some(())
    })
    .await;
    // Not stopped without quarantine.freeze: see the other quarantine
    // tests, whose holders keep answering after being quarantined.
    let _ = resume(pid);
}

fn resume(pid: u32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg("-CONT")
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill -CONT failed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantined_process_stays_refused_across_an_agent_restart() {
    let s = setup(true).await;
    let mut holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    s.server()
        .admin()
        .add_quarantine(lanyard_proto::admin::AddQuarantineRequest {
            task_id: holder.task_id.clone(),
            reason: "stays quarantined".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_quarantined(&s, &mut holder).await;
    // Restart the agent (its data dir keeps the quarantined instance).
    let Setup {
        server,
        agent,
        socket,
        dir,
    } = s;
    let addr = server.as_ref().unwrap().addr();
    agent.shutdown().await;
    let agent = lanyard_agent::build(lanyard_integration_tests::agent_config(
        dir.path(),
        addr,
        None,
    ))
    .await
    .unwrap();
    let _s = Setup {
        server,
        agent,
        socket,
        dir,
    };
    let fetched = holder.fetch();
    assert!(fetched.contains("stays quarantined"), "{fetched}");
}
