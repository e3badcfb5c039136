//! Kubernetes without a cluster: agents attest with projected service
//! account tokens in the real format, signed by a stand-in issuer whose
//! JWKS the server reads from a file; entries reach every node of a
//! cluster through a node alias; the Kubernetes workload attestor reads a
//! cgroup file in the kubelet's layout and a kubelet's pod list served
//! over HTTPS on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_agent::config::RawConfig;
use lanyard_agent::config::k8s::{RawK8s, RawK8sPsat};
use lanyard_core::k8s::test_issuer::{PsatSpec, TestIssuer};
use lanyard_integration_tests::{TD, TestServer, endpoint, init, own_uid, wait_for_svid};
use lanyard_proto::admin::{CreateEntryRequest, ListAgentsRequest};
use lanyard_proto::server::AttestAgentRequest;
use lanyard_proto::types;

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn psat_server(
    dir: &Path,
    jwks: &str,
    tweak: impl FnOnce(&mut lanyard_server::Config),
) -> TestServer {
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();
    let toml = format!(
        "trust_domain = \"{TD}\"\n[[k8s_psat]]\ncluster = \"prod\"\nissuer = \"{ISS}\"\nservice_accounts = [\"lanyard:lanyard-agent\"]\njwks_file = \"{}\"\n",
        jwks_file.display()
    );
    let raw: lanyard_server::config::RawConfig = toml::from_str(&toml).unwrap();
    let clusters = raw.validate().unwrap().psat_clusters;
    TestServer::start_with(dir, "127.0.0.1:0", |c| {
        c.psat_clusters = clusters;
        tweak(c);
    })
    .await
}

fn psat_agent_config(
    dir: &Path,
    server: std::net::SocketAddr,
    token_file: PathBuf,
    k8s: Option<RawK8s>,
) -> lanyard_agent::Config {
    RawConfig {
        server: Some(server.to_string()),
        trust_domain: Some(TD.into()),
        insecure_bootstrap: Some(true),
        socket: Some(dir.join("agent.sock")),
        data_dir: Some(dir.join("agent-data")),
        node_attestor: Some("k8s_psat".into()),
        k8s_psat: Some(RawK8sPsat {
            cluster: Some("prod".into()),
            token_file: Some(token_file),
        }),
        k8s,
        ..Default::default()
    }
    .validate()
    .expect("agent config")
}

/// One AttestAgent call as an agent makes it, with `attestor` and `data`.
async fn attest_raw(
    server: std::net::SocketAddr,
    attestor: &str,
    data: Vec<u8>,
) -> Result<String, tonic::Status> {
    use lanyard_agent::upstream::client::{node_client, tls_config};
    let tls = tls_config(
        Arc::new(lanyard_core::tls::InsecureBootstrapVerifier::default()),
        None,
    )
    .unwrap();
    let mut client = node_client(&server.to_string(), tls).unwrap();
    let key = lanyard_core::x509::SvidKey::generate().unwrap();
    let placeholder = lanyard_core::SpiffeId::new(&format!("spiffe://{TD}/lanyard/agent")).unwrap();
    let r = client
        .attest_agent(AttestAgentRequest {
            join_token: String::new(),
            csr: key.csr(&placeholder).unwrap(),
            attestor: attestor.into(),
            attestation_data: data,
        })
        .await?
        .into_inner();
    Ok(r.svid.unwrap().spiffe_id)
}

fn evidence(token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"cluster": "prod", "token": token})).unwrap()
}

async fn agent_ids(server: &TestServer) -> Vec<String> {
    server
        .admin()
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .map(|a| a.spiffe_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psat_attestation_accepts_the_cluster_and_refuses_everything_else() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let k1 = TestIssuer::rsa("k1");
    let server = psat_server(dir.path(), &TestIssuer::jwks(&[&k1]), |_| {}).await;
    let addr = server.addr();
    let t = now() - 5;

    let mut refusals = vec![
        (
            "wrong audience",
            k1.mint(&PsatSpec::new(ISS, "vault", t)),
            "audience",
        ),
        (
            "expired",
            {
                let mut s = PsatSpec::new(ISS, "lanyard-server", t - 7200);
                s.ttl = 600;
                k1.mint(&s)
            },
            "expired",
        ),
        (
            "wrong issuer",
            k1.mint(&PsatSpec::new("https://other.example", "lanyard-server", t)),
            "issuer",
        ),
        (
            "unknown key",
            TestIssuer::ec("k9").mint(&PsatSpec::new(ISS, "lanyard-server", t)),
            "k9",
        ),
        (
            "forged with the known kid",
            k1.impostor().mint(&PsatSpec::new(ISS, "lanyard-server", t)),
            "signature",
        ),
        (
            "service account not allowed",
            {
                let mut s = PsatSpec::new(ISS, "lanyard-server", t);
                s.namespace = "default".into();
                s.service_account = "builder".into();
                k1.mint(&s)
            },
            "default:builder",
        ),
    ];
    refusals.push(("garbage", "not.a.token".into(), "token"));
    for (what, token, why) in &refusals {
        let err = attest_raw(addr, "k8s_psat", evidence(token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        assert!(
            err.message().contains(why),
            "{what}: {:?} should say {why:?}",
            err.message()
        );
    }
    // Unknown cluster, unknown attestor, malformed evidence.
    let ok_token = k1.mint(&PsatSpec::new(ISS, "lanyard-server", t));
    let err = attest_raw(
        addr,
        "k8s_psat",
        serde_json::to_vec(&serde_json::json!({"cluster": "dev", "token": ok_token})).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.message().contains("not configured"), "{err:?}");
    let err = attest_raw(addr, "aws_iid", vec![]).await.unwrap_err();
    assert!(err.message().contains("not enabled"), "{err:?}");
    let err = attest_raw(addr, "k8s_psat", b"{".to_vec())
        .await
        .unwrap_err();
    assert!(err.message().contains("JSON"), "{err:?}");
    assert!(
        agent_ids(&server).await.is_empty(),
        "no refused node leaves a record"
    );

    // The real thing, then its replay while that agent is live.
    let id = attest_raw(addr, "k8s_psat", evidence(&ok_token))
        .await
        .unwrap();
    let spec = PsatSpec::new(ISS, "lanyard-server", t);
    assert_eq!(
        id,
        format!(
            "spiffe://{TD}/lanyard/agent/k8s_psat/prod/{}",
            spec.node_uid
        )
    );
    let err = attest_raw(addr, "k8s_psat", evidence(&ok_token))
        .await
        .unwrap_err();
    assert!(err.message().contains("already used"), "{err:?}");
    // A fresh token from the same node attests again (its agent restarted
    // without its data dir).
    let fresh = k1.mint(&PsatSpec::new(ISS, "lanyard-server", t + 1));
    assert_eq!(
        attest_raw(addr, "k8s_psat", evidence(&fresh))
            .await
            .unwrap(),
        id
    );
    let agents = server
        .admin()
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].attestation_type, "k8s_psat");
    for want in [
        "k8s_psat:cluster:prod",
        "k8s_psat:agent_ns:lanyard",
        "k8s_psat:agent_sa:lanyard-agent",
        "k8s_psat:agent_node_name:node-1",
    ] {
        assert!(
            agents[0].selectors.iter().any(|s| s == want),
            "{want} in {:?}",
            agents[0].selectors
        );
    }

    // The issuer rotates its key: the new kid is unknown, the server
    // re-reads the JWKS and accepts it.
    let k2 = TestIssuer::ec("k2");
    std::fs::write(dir.path().join("jwks.json"), TestIssuer::jwks(&[&k1, &k2])).unwrap();
    let rotated = k2.mint(&PsatSpec::new(ISS, "lanyard-server", t).on_node("node-2"));
    let id2 = attest_raw(addr, "k8s_psat", evidence(&rotated))
        .await
        .unwrap();
    assert!(id2.contains("/k8s_psat/prod/"), "{id2}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_alias_entry_reaches_every_agent_of_the_cluster_and_agents_reattest() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rsa("k1");
    let server = psat_server(dir.path(), &TestIssuer::jwks(&[&issuer]), |c| {
        c.agent_svid_ttl = Duration::from_secs(3);
    })
    .await;
    // The alias: every agent of cluster prod. The workload entry under it.
    let mut admin = server.admin();
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: format!("spiffe://{TD}/k8s/prod/nodes"),
                parent_id: format!("spiffe://{TD}/lanyard/server"),
                selectors: vec![
                    "k8s_psat:cluster:prod".into(),
                    "k8s_psat:agent_ns:lanyard".into(),
                ],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: format!("spiffe://{TD}/agent/planner"),
                parent_id: format!("spiffe://{TD}/k8s/prod/nodes"),
                selectors: vec![format!("unix:uid:{}", own_uid())],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut agents = Vec::new();
    for node in ["node-1", "node-2"] {
        let d = dir.path().join(node);
        std::fs::create_dir_all(&d).unwrap();
        let token_file = d.join("token");
        std::fs::write(
            &token_file,
            issuer.mint(&PsatSpec::new(ISS, "lanyard-server", now() - 5).on_node(node)),
        )
        .unwrap();
        let agent = lanyard_agent::build(psat_agent_config(&d, server.addr(), token_file, None))
            .await
            .expect("agent attests with its PSAT");
        let svid = wait_for_svid(&d.join("agent.sock")).await;
        assert_eq!(
            svid.spiffe_id().to_string(),
            format!("spiffe://{TD}/agent/planner"),
            "{node}"
        );
        agents.push((d, agent));
    }
    assert_eq!(agent_ids(&server).await.len(), 2);

    // node-1's agent goes down until its SVID has expired, the kubelet
    // rotates the token meanwhile; on restart the agent attests again on
    // its own.
    let (d, agent) = agents.remove(0);
    agent.shutdown().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::write(
        d.join("token"),
        issuer.mint(&PsatSpec::new(ISS, "lanyard-server", now() - 1).on_node("node-1")),
    )
    .unwrap();
    let agent = lanyard_agent::build(psat_agent_config(&d, server.addr(), d.join("token"), None))
        .await
        .expect("agent re-attests");
    let svid = wait_for_svid(&d.join("agent.sock")).await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TD}/agent/planner")
    );
    agent.shutdown().await;
    for (_, a) in agents {
        a.shutdown().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_are_told_apart_by_cgroup_and_the_kubelets_pod_list() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rsa("k1");
    let server = psat_server(dir.path(), &TestIssuer::jwks(&[&issuer]), |_| {}).await;
    // A kubelet on loopback serving the pod list, wanting the agent's token.
    // Its serving certificate names its node, as a kubelet's does.
    let kubelet = lanyard_fetch::test_server::TestServer::start_for("127.0.0.1:0", &["node-1"])
        .await
        .unwrap();
    let pods = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/testdata/kubelet-pods.json"),
    )
    .unwrap();
    kubelet.set("/pods", 200, pods);
    kubelet.require_bearer("agent-sa-token");
    // The node's own kubelet certificate, pinned (the default deployment).
    let kubelet_cert = dir.path().join("kubelet.crt");
    std::fs::write(&kubelet_cert, kubelet.ca_pem()).unwrap();
    let sa_token = dir.path().join("sa-token");
    std::fs::write(&sa_token, "agent-sa-token\n").unwrap();
    // This test process plays the planner container: its cgroup file (in
    // a proc root of the test's own) is in the kubelet's systemd layout.
    let proc_root = dir.path().join("proc");
    let me = std::process::id().to_string();
    std::fs::create_dir_all(proc_root.join(&me)).unwrap();
    let cgroup = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3b5d4f6e_1a2b_4c3d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-8f3c1e1ad0b2f8a6c4e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f901234567.scope";
    std::fs::write(proc_root.join(&me).join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    // The agent believes a container's path only where the kubelet made
    // it: root-owned directories of that shape on the real cgroupfs (the
    // unified hierarchy here; the tests run as root).
    let _kubelet_dirs = CgroupDirs::make(cgroup);
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        issuer.mint(&PsatSpec::new(ISS, "lanyard-server", now() - 5)),
    )
    .unwrap();
    let node_agent = format!(
        "spiffe://{TD}/lanyard/agent/k8s_psat/prod/{}",
        PsatSpec::new(ISS, "", 0).node_uid
    );
    let mut admin = server.admin();
    for (id, selectors) in [
        (
            "planner",
            vec![
                "k8s:ns:agents",
                "k8s:pod-label:app:planner",
                "k8s:container-name:planner",
            ],
        ),
        (
            "other-ns",
            vec!["k8s:ns:research", "k8s:pod-label:app:planner"],
        ),
    ] {
        admin
            .create_entry(CreateEntryRequest {
                entry: Some(types::Entry {
                    spiffe_id: format!("spiffe://{TD}/agent/{id}"),
                    parent_id: node_agent.clone(),
                    selectors: selectors.into_iter().map(str::to_owned).collect(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    // A label alone is no boundary: refused.
    let err = admin
        .create_entry(CreateEntryRequest {
            entry: Some(types::Entry {
                spiffe_id: format!("spiffe://{TD}/agent/label-only"),
                parent_id: node_agent.clone(),
                selectors: vec!["k8s:pod-label:app:planner".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let k8s = RawK8s {
        node_name: Some("node-1".into()),
        kubelet_url: Some(kubelet.url("")),
        kubelet_cert_file: Some(kubelet_cert),
        token_file: Some(sa_token),
        proc_root: Some(proc_root),
        ..Default::default()
    };
    let agent = lanyard_agent::build(psat_agent_config(
        dir.path(),
        server.addr(),
        token_file,
        Some(k8s),
    ))
    .await
    .unwrap();
    let svid = wait_for_svid(&dir.path().join("agent.sock")).await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://{TD}/agent/planner")
    );
    // Only the planner entry matched: one SVID.
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&dir.path().join("agent.sock")))
        .await
        .unwrap();
    let ctx = client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 1);
    assert!(kubelet.hits("/pods") >= 1);
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_come_from_the_issuers_discovery_document_over_https() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rsa("k1");
    // The API server's issuer endpoints, wanting the server pod's token.
    let api = lanyard_fetch::test_server::TestServer::start("127.0.0.1:0")
        .await
        .unwrap();
    api.require_bearer("server-sa-token");
    api.set(
        "/.well-known/openid-configuration",
        200,
        serde_json::json!({"issuer": ISS, "jwks_uri": api.url("/openid/v1/jwks"), "response_types_supported": ["id_token"]}).to_string(),
    );
    api.set("/openid/v1/jwks", 200, TestIssuer::jwks(&[&issuer]));
    std::fs::write(dir.path().join("api-ca.pem"), api.ca_pem()).unwrap();
    std::fs::write(dir.path().join("sa-token"), "server-sa-token\n").unwrap();
    let toml = format!(
        "trust_domain = \"{TD}\"\n[[k8s_psat]]\ncluster = \"prod\"\nissuer = \"{ISS}\"\nservice_accounts = [\"lanyard:lanyard-agent\"]\ndiscovery_url = \"{}\"\njwks_ca_file = \"{}\"\njwks_token_file = \"{}\"\n",
        api.url("/.well-known/openid-configuration"),
        dir.path().join("api-ca.pem").display(),
        dir.path().join("sa-token").display(),
    );
    let raw: lanyard_server::config::RawConfig = toml::from_str(&toml).unwrap();
    let clusters = raw.validate().unwrap().psat_clusters;
    let server =
        TestServer::start_with(dir.path(), "127.0.0.1:0", |c| c.psat_clusters = clusters).await;
    let token = issuer.mint(&PsatSpec::new(ISS, "lanyard-server", now() - 5));
    let id = attest_raw(server.addr(), "k8s_psat", evidence(&token))
        .await
        .unwrap();
    assert!(id.contains("/lanyard/agent/k8s_psat/prod/"), "{id}");
    assert!(api.hits("/.well-known/openid-configuration") >= 1);
    assert!(api.hits("/openid/v1/jwks") >= 1);
    server.stop().await;
}

/// Root-owned cgroup directories, as the kubelet makes them, removed again
/// (only those this test made) when dropped.
struct CgroupDirs(Vec<std::path::PathBuf>);

impl CgroupDirs {
    fn make(path: &str) -> Self {
        let mut dir = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|d| d.join("cgroup.controllers").exists())
            .expect("a unified cgroup hierarchy");
        let mut made = vec![];
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            dir.push(seg);
            if std::fs::create_dir(&dir).is_ok() {
                made.push(dir.clone());
            }
        }
        Self(made)
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}
