//! One revocation of each kind (a task, a standing SVID's serial, a
//! JWT-SVID's ID, a tool server's own SVID) refused everywhere it is
//! checked (AuthorizeToolCall, ValidateJWTSVID, TLS handshakes both ways)
//! within the bound, and listed in the CRL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// An X.509-SVID chain (DER, leaf first) and its PKCS#8 key.
type Svid = (Vec<Vec<u8>>, Vec<u8>);

/// What the revocation steps share: the agent, a peer following its
/// bundles and CRLs, a TLS tool server on that peer presenting its
/// standing SVID, and a Workload API client.
struct Scene {
    s: Setup,
    peer: Peer,
    tool: std::net::SocketAddr,
    wl: SpiffeWorkloadApiClient<tonic::transport::Channel>,
}

impl Scene {
    async fn validate(&self, token: String) -> Result<(), tonic::Status> {
        let mut wl = self.wl.clone();
        wl.validate_jwtsvid(header(ValidateJwtsvidRequest {
            audience: "tools".into(),
            svid: token,
        }))
        .await
        .map(|_| ())
    }

    async fn handshake(&self, svid: &Svid) -> Result<(), String> {
        handshake(self.tool, self.peer.trust.clone(), &svid.0, &svid.1).await
    }

    /// The workload's standing X.509-SVID of `spiffe_id` now.
    async fn standing(&self, spiffe_id: &str) -> Option<Svid> {
        let r = self
            .wl
            .clone()
            .fetch_x509svid(header(X509svidRequest {}))
            .await
            .ok()?
            .into_inner()
            .message()
            .await
            .ok()??;
        let v = r
            .svids
            .into_iter()
            .find(|v| v.spiffe_id == spiffe_id && !v.hint.starts_with("task:"))?;
        let c = lanyard_core::x509::der_chain_split(&v.x509_svid).ok()?;
        Some((c, v.x509_svid_key))
    }

    async fn revoke(&self, req: lanyard_proto::admin::RevokeSvidRequest) {
        self.s.server().admin().revoke_svid(req).await.unwrap();
    }
}

fn serial_of(chain: &[Vec<u8>]) -> String {
    lanyard_core::x509::CertInfo::parse(&chain[0])
        .unwrap()
        .serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_reaches_decisions_jwt_validation_crls_and_handshakes_within_a_second() {
    let s = setup(true).await;
    let peer = follow_bundles(&s.socket).await;
    let first = the_crl_of_every_live_ca_is_there_from_the_start(&s, &peer);
    let (scene, task_id, task, task_jwt, standing, server) =
        a_task_and_a_tool_server_on_the_peer_validator(s, peer, &first).await;
    a_revoked_task_is_refused_everywhere_and_listed(&scene, &task_id, &task, task_jwt).await;
    let fresh = a_revoked_serial_fails_the_handshake_and_is_signed_anew(&scene, &standing).await;
    a_revoked_jwt_id_refuses_that_token(&scene).await;
    a_revoked_tool_server_is_refused_by_its_clients(&scene, &server, &fresh).await;
}

/// The CRL of every live CA is there from the start, signed by it.
fn the_crl_of_every_live_ca_is_there_from_the_start(s: &Setup, peer: &Peer) -> Vec<Vec<u8>> {
    let first = peer.crls.lock().unwrap()[0].clone();
    assert_eq!(first.len(), 1);
    let bundle = s.server().bundle();
    let parsed = lanyard_core::x509::parse_crl(&first[0], &bundle).unwrap();
    assert_eq!(parsed.issuer_key_id, s.server().active_ca_id());
    assert!(parsed.serials.is_empty());
    assert!(x509_parser::parse_x509_crl(&first[0]).is_ok());
    first
}

/// This process holds a task (it is also the workload); its task SVID and
/// key make a TLS client; the tool server uses its standing SVID. The CRL
/// is in FetchX509SVID too. Returns the scene, the task's ID, X.509-SVID
/// and JWT-SVID, the workload's standing SVID and the tool server's.
async fn a_task_and_a_tool_server_on_the_peer_validator(
    s: Setup,
    peer: Peer,
    first: &[Vec<u8>],
) -> (Scene, String, Svid, String, Svid, Svid) {
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let begun = TaskIdentityClient::new(ch)
        .begin_task(header(BeginTaskRequest {
            spiffe_id: PLANNER.into(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into()],
            ttl_seconds: 300,
            jwt_audiences: vec!["tools".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let task_svid = begun.x509_svid.unwrap();
    let task: Svid = (
        lanyard_core::x509::der_chain_split(&task_svid.x509_svid).unwrap(),
        task_svid.x509_svid_key.clone(),
    );
    let task_jwt = begun.jwt_svid.unwrap().svid;
    let ch = lanyard_uds::unix_channel(&s.socket).unwrap();
    let mut wl = SpiffeWorkloadApiClient::new(ch);
    let resp = wl
        .fetch_x509svid(header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.crl, first);
    let svid_of = |id: &str| -> Svid {
        let v = resp
            .svids
            .iter()
            .find(|v| v.spiffe_id == id && !v.hint.starts_with("task:"))
            .unwrap();
        (
            lanyard_core::x509::der_chain_split(&v.x509_svid).unwrap(),
            v.x509_svid_key.clone(),
        )
    };
    let (standing, server) = (svid_of(PLANNER), svid_of(TOOLS));
    let tool = tool_server(peer.trust.clone(), server.0.clone(), server.1.clone()).await;
    let scene = Scene { s, peer, tool, wl };
    scene.handshake(&task).await.unwrap();
    assert!(scene.validate(task_jwt.clone()).await.is_ok());
    (scene, begun.task_id, task, task_jwt, standing, server)
}

/// `task revoke`: refused by AuthorizeToolCall, ValidateJWTSVID and the
/// handshake, each within the bound; the CRL then lists the task SVID's
/// serial.
async fn a_revoked_task_is_refused_everywhere_and_listed(
    scene: &Scene,
    task_id: &str,
    task: &Svid,
    task_jwt: String,
) {
    let s = &scene.s;
    let t0 = Instant::now();
    s.server()
        .admin()
        .revoke_task(lanyard_proto::admin::TaskRequest {
            task_id: task_id.to_owned(),
        })
        .await
        .unwrap();
    let d_authz = within(
        "AuthorizeToolCall refuses the revoked task",
        t0,
        async || {
            authorize(&s.socket, x509(&task.0), "crm.read", "")
                .await
                .is_err_and(|e| {
                    e.code() == tonic::Code::PermissionDenied && e.message().contains("revoked")
                })
        },
    )
    .await;
    let d_jwt = within(
        "ValidateJWTSVID refuses the revoked task's JWT",
        t0,
        async || scene.validate(task_jwt.clone()).await.is_err(),
    )
    .await;
    let d_tls = within(
        "the handshake refuses the revoked task SVID",
        t0,
        async || scene.handshake(task).await.is_err(),
    )
    .await;
    eprintln!("task revoke -> refused: authorize {d_authz:?}, jwt {d_jwt:?}, handshake {d_tls:?}");
    for d in [d_authz, d_jwt, d_tls] {
        assert!(d < REVOCATION_BOUND, "took {d:?}");
    }
    let serial = lanyard_core::revocation::normalize_serial(&serial_of(&task.0));
    let newest = scene.peer.crls.lock().unwrap().last().cloned().unwrap();
    let listed = lanyard_core::x509::parse_crl(&newest[0], &s.server().bundle()).unwrap();
    assert!(listed.serials.contains(&serial), "{listed:?}");
}

/// `svid revoke SERIAL` of a standing SVID: the handshake refuses it within
/// the bound, and the agent signs a new standing SVID for the workload,
/// which the handshake takes. Returns the new one.
async fn a_revoked_serial_fails_the_handshake_and_is_signed_anew(
    scene: &Scene,
    standing: &Svid,
) -> Svid {
    scene.handshake(standing).await.unwrap();
    let t1 = Instant::now();
    scene
        .revoke(lanyard_proto::admin::RevokeSvidRequest {
            serial: serial_of(&standing.0),
            ..Default::default()
        })
        .await;
    let d_serial = within("the handshake refuses the revoked serial", t1, async || {
        scene.handshake(standing).await.is_err()
    })
    .await;
    assert!(d_serial < REVOCATION_BOUND, "took {d_serial:?}");
    let fresh = eventually("a new standing SVID", WAIT, || async {
        scene
            .standing(PLANNER)
            .await
            .filter(|c| c.0[0] != standing.0[0])
    })
    .await;
    scene.handshake(&fresh).await.unwrap();
    fresh
}

/// `svid revoke --jwt-id`: ValidateJWTSVID refuses that token.
async fn a_revoked_jwt_id_refuses_that_token(scene: &Scene) {
    let token = scene
        .wl
        .clone()
        .fetch_jwtsvid(header(JwtsvidRequest {
            audience: vec!["tools".into()],
            spiffe_id: PLANNER.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    scene.validate(token.clone()).await.unwrap();
    let jti = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["jti"].as_str().unwrap().to_owned()
    };
    let t2 = Instant::now();
    scene
        .revoke(lanyard_proto::admin::RevokeSvidRequest {
            jwt_id: jti,
            ..Default::default()
        })
        .await;
    let d = within(
        "ValidateJWTSVID refuses the revoked JWT ID",
        t2,
        async || {
            scene
                .validate(token.clone())
                .await
                .is_err_and(|e| e.message().contains("revoked"))
        },
    )
    .await;
    assert!(d < REVOCATION_BOUND, "took {d:?}");
}

/// The other direction: the tool server's own SVID revoked, the client's
/// verifier refuses the server.
async fn a_revoked_tool_server_is_refused_by_its_clients(
    scene: &Scene,
    server: &Svid,
    client: &Svid,
) {
    let t3 = Instant::now();
    scene
        .revoke(lanyard_proto::admin::RevokeSvidRequest {
            serial: serial_of(&server.0),
            ..Default::default()
        })
        .await;
    let d = within(
        "the client refuses the revoked server SVID",
        t3,
        async || {
            scene
                .handshake(client)
                .await
                .is_err_and(|e| e.contains("invalid peer certificate: Revoked"))
        },
    )
    .await;
    assert!(d < REVOCATION_BOUND, "took {d:?}");
}
