//! Revocation: many task ends pushed together; pruning; revocation by SPIFFE ID; CRLs without the holder's agent. (One revocation of each kind within the bound: `revocation_bound.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_ending_at_once_push_the_crl_streams_a_few_times_not_once_each() {
    let s = setup(false).await;
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let tasks = TaskIdentityClient::new(ch);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = tasks
            .clone()
            .begin_task(header(BeginTaskRequest {
                spiffe_id: PLANNER.into(),
                task_type: "report.generate".into(),
                tools: vec!["crm.read".into()],
                ttl_seconds: 300,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        ids.push(r.task_id);
    }
    let peer = follow_bundles(&s.socket).await;
    let before = peer.crls.lock().unwrap().len();
    let ends: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut t = tasks.clone();
            let id = id.clone();
            tokio::spawn(async move {
                t.end_task(header(lanyard_proto::task::EndTaskRequest { task_id: id }))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for e in ends {
        e.await.unwrap();
    }
    // Every ended task's SVID ends up in the CRL...
    eventually("all 20 serials in the CRL", WAIT, || async {
        let newest = peer.crls.lock().unwrap().last().cloned()?;
        let parsed = lanyard_core::x509::parse_crl(&newest[0], &s.server().bundle()).ok()?;
        (parsed.serials.len() >= 20).then_some(())
    })
    .await;
    // ...through a handful of pushes, not twenty.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushes = peer.crls.lock().unwrap().len() - before;
    eprintln!("CRL pushes for 20 tasks ending at once: {pushes}");
    assert!(
        pushes <= 5,
        "{pushes} CRL pushes for 20 tasks ending at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_are_pruned_once_what_they_revoke_has_expired() {
    let s = setup(false).await;
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let mut tasks = TaskIdentityClient::new(ch);
    let begun = tasks
        .begin_task(header(BeginTaskRequest {
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    tasks
        .end_task(header(lanyard_proto::task::EndTaskRequest {
            task_id: begun.task_id.clone(),
        }))
        .await
        .unwrap();
    let key = format!("task:{}", begun.task_id);
    let listed = |s: &Setup| {
        let mut admin = s.server().admin();
        async move {
            admin
                .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
                .await
                .unwrap()
                .into_inner()
                .revocations
                .iter()
                .map(|r| format!("{}:{}", r.kind, r.value))
                .collect::<Vec<_>>()
        }
    };
    eventually("the ended task's revocation", WAIT, || {
        let f = listed(&s);
        let key = key.clone();
        async move { f.await.contains(&key).then_some(()) }
    })
    .await;
    let mut state = s.agent.state.clone();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| {
            snap.revocations
                .get(lanyard_core::revocation::RevokedKind::Task, &begun.task_id)
                .is_some()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    // After the task's window: gone from the server and the agent.
    eventually("the revocation pruned on the server", WAIT, || {
        let f = listed(&s);
        let key = key.clone();
        async move { (!f.await.contains(&key)).then_some(()) }
    })
    .await;
    tokio::time::timeout(
        WAIT,
        state.wait_for(|snap| {
            snap.revocations
                .get(lanyard_core::revocation::RevokedKind::Task, &begun.task_id)
                .is_none()
        }),
    )
    .await
    .unwrap()
    .unwrap();
}

/// `svid revoke --spiffe-id` refuses every SVID of the ID signed before it,
/// each time it is asked: after the entry was deleted (a first revocation)
/// and re-created, a second revocation still reaches the new entry's task
/// SVID, and each one is an audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_spiffe_id_again_reaches_what_was_signed_since_and_is_audited() {
    let s = setup(true).await;
    let planner = s
        .server()
        .entries()
        .await
        .into_iter()
        .find(|e| e.spiffe_id == PLANNER)
        .unwrap();
    s.server()
        .admin()
        .delete_entry(lanyard_proto::admin::DeleteEntryRequest { id: planner.id })
        .await
        .unwrap();
    // Revocations by SPIFFE ID are kept to the second: what is signed from
    // the next second on is outside the first one.
    let deleted = lanyard_core::clock::unix_secs(std::time::SystemTime::now());
    eventually("the next second", WAIT, || async {
        (lanyard_core::clock::unix_secs(std::time::SystemTime::now()) > deleted).then_some(())
    })
    .await;
    entry(s.server(), PLANNER, vec![], false).await;
    wait_entries(&s, 2).await;
    let begun = eventually("a task under the re-created entry", WAIT, || async {
        let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
        TaskIdentityClient::new(ch)
            .begin_task(header(BeginTaskRequest {
                spiffe_id: PLANNER.into(),
                task_type: "report.generate".into(),
                tools: vec!["crm.read".into()],
                ttl_seconds: 300,
                ..Default::default()
            }))
            .await
            .ok()
            .map(|r| r.into_inner())
    })
    .await;
    let chain = lanyard_core::x509::der_chain_split(&begun.x509_svid.unwrap().x509_svid).unwrap();
    let allowed = authorize(&s.socket, x509(&chain), "crm.read", "")
        .await
        .unwrap();
    assert!(allowed.allow, "{allowed:?}");

    for _ in 0..2 {
        s.server()
            .admin()
            .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
                spiffe_id: PLANNER.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    eventually("AuthorizeToolCall refuses the revoked ID", WAIT, || async {
        authorize(&s.socket, x509(&chain), "crm.read", "")
            .await
            .is_err_and(|e| {
                e.code() == tonic::Code::PermissionDenied && e.message().contains("revoked")
            })
            .then_some(())
    })
    .await;
    let audit = lanyard_integration_tests::verified_audit(s.server().admin()).await;
    let revocations = audit
        .iter()
        .filter(|r| r["kind"] == "revocation" && r.to_string().contains(PLANNER))
        .count();
    assert!(
        revocations >= 3,
        "the deletion and both revocations are recorded: {revocations}"
    );
}

/// Revoking a task or a SPIFFE ID reaches the CRLs without the holder's
/// agent: the server recorded every serial it signed. With the agent
/// stopped, `task revoke` and `svid revoke --spiffe-id` put the serials of
/// the task SVID and of the standing SVID into the CRL the server serves,
/// and `openssl verify -crl_check` refuses both certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_reach_the_crl_with_the_holders_agent_stopped() {
    let s = setup(true).await;
    let holder = Holder::start(&s.socket, &["crm.read"]);
    holder.wait_line("stream ok");
    // The standing SVID of the planner, as this process (same uid) has it.
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let resp = SpiffeWorkloadApiClient::new(ch)
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let standing = resp
        .svids
        .iter()
        .find(|v| v.spiffe_id == PLANNER && !v.hint.starts_with("task:"))
        .map(|v| lanyard_core::x509::der_chain_split(&v.x509_svid).unwrap())
        .unwrap();
    let Setup {
        server,
        agent,
        dir,
        socket: _,
    } = s;
    let server = server.unwrap();
    agent.shutdown().await;
    let serial_of = |der: &[u8]| {
        lanyard_core::revocation::normalize_serial(
            &lanyard_core::x509::CertInfo::parse(der).unwrap().serial,
        )
    };
    let task_serial = serial_of(&holder.chain[0]);
    let standing_serial = serial_of(&standing[0]);
    let t0 = Instant::now();
    server
        .admin()
        .revoke_task(lanyard_proto::admin::TaskRequest {
            task_id: holder.task_id.clone(),
        })
        .await
        .unwrap();
    server
        .admin()
        .revoke_svid(lanyard_proto::admin::RevokeSvidRequest {
            spiffe_id: PLANNER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bundle = server.bundle();
    let crl = eventually("both serials in the server's CRL", WAIT, || async {
        let crls = server
            .admin()
            .list_revocations(lanyard_proto::admin::ListRevocationsRequest {})
            .await
            .ok()?
            .into_inner()
            .crls;
        crls.into_iter().find(|der| {
            lanyard_core::x509::parse_crl(der, &bundle).is_ok_and(|c| {
                c.serials.contains(&task_serial) && c.serials.contains(&standing_serial)
            })
        })
    })
    .await;
    eprintln!(
        "revoke -> both serials in the CRL, holder's agent stopped: {:?}",
        t0.elapsed()
    );
    // A TLS stack that is not ours refuses them.
    let pem = |label: &str, ders: &[Vec<u8>]| lanyard_core::x509::der_to_pem(label, ders);
    let files = dir.path().join("openssl");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("ca.pem"), pem("CERTIFICATE", &bundle)).unwrap();
    std::fs::write(
        files.join("crl.pem"),
        pem("X509 CRL", std::slice::from_ref(&crl)),
    )
    .unwrap();
    for (name, chain) in [("task", &holder.chain), ("standing", &standing)] {
        let leaf = files.join(format!("{name}.pem"));
        std::fs::write(&leaf, pem("CERTIFICATE", &chain[..1])).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(files.join("ca.pem"))
            .arg("-CRLfile")
            .arg(files.join("crl.pem"))
            .arg(&leaf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {text}");
        assert!(text.contains("revoked"), "{name}: {text}");
    }
    server.stop().await;
}
