//! Interop with gRPC clients that are not tonic or grpc-go: each sends its
//! own idea of `:authority` over a unix socket (none, the percent-encoded
//! path, the raw path). A hand-written HTTP/2 client sends each form to the
//! real agent and admin socket; Python's `grpcio` (the gRPC C-core) calls
//! every Workload API method.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use lanyard_integration_tests::{TestServer, eventually, h2raw, python};
use lanyard_proto::workload::X509svidResponse;
use prost::Message;

const WAIT: Duration = Duration::from_secs(20);
const ID: &str = "spiffe://example.org/interop";

fn percent_encoded(path: &Path) -> Vec<u8> {
    // As gRPC C-core does it: the path without its leading '/', every '/'
    // as %2F.
    let s = path.display().to_string();
    s.trim_start_matches('/').replace('/', "%2F").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authority_form_gets_svids_from_the_agent_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = server.agent_with_entry(ID, 60).await;
    let socket = agent.socket.clone();
    let raw_path = socket.display().to_string().into_bytes();
    let encoded = percent_encoded(&socket);
    let forms: Vec<(&str, Option<&[u8]>)> = vec![
        ("absent", None),
        ("percent-encoded path (gRPC C-core)", Some(&encoded)),
        ("raw path (grpc-java)", Some(&raw_path)),
        ("localhost (grpc-go, tonic)", Some(b"localhost")),
    ];
    for (what, authority) in forms {
        let reply = eventually(what, WAIT, || {
            let socket = socket.clone();
            async move {
                let r = h2raw::call(
                    &socket,
                    authority,
                    "/SpiffeWorkloadAPI/FetchX509SVID",
                    &[("workload.spiffe.io", "true")],
                    &[],
                    1,
                )
                .await
                .unwrap();
                (!r.messages.is_empty() || r.reset.is_some()).then_some(r)
            }
        })
        .await;
        assert_eq!(reply.reset, None, "{what}: stream reset");
        let msg = X509svidResponse::decode(reply.messages[0].as_slice()).unwrap();
        assert_eq!(msg.svids.len(), 1, "{what}");
        assert_eq!(msg.svids[0].spiffe_id, ID, "{what}");
        assert!(!msg.svids[0].x509_svid.is_empty(), "{what}");
    }

    // The security header rule still applies through the rewrite.
    let r = h2raw::call(
        &socket,
        Some(&encoded),
        "/SpiffeWorkloadAPI/FetchX509SVID",
        &[],
        &[],
        1,
    )
    .await
    .unwrap();
    assert_eq!(r.grpc_status.as_deref(), Some("3"), "{r:?}");
    assert_eq!(
        r.grpc_message.as_deref(),
        Some("security header missing from request")
    );

    // The admin socket accepts the same forms.
    let admin = server.bound.admin_socket.clone();
    let admin_encoded = percent_encoded(&admin);
    for authority in [
        None,
        Some(admin_encoded.as_slice()),
        Some(b"/x/admin.sock".as_slice()),
    ] {
        let r = h2raw::call(
            &admin,
            authority,
            "/lanyard.admin.v1.Admin/ListEntries",
            &[],
            &[],
            1,
        )
        .await
        .unwrap();
        assert_eq!(r.reset, None);
        let list =
            lanyard_proto::admin::ListEntriesResponse::decode(r.messages[0].as_slice()).unwrap();
        assert_eq!(list.entries.len(), 1);
    }
    agent.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_uses_every_workload_api_method() {
    let py = python::python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), "127.0.0.1:0").await;
    let agent = server.agent_with_entry(ID, 60).await;
    // Wait until the agent serves the SVID.
    let client =
        spiffe::WorkloadApiClient::connect_to(lanyard_integration_tests::endpoint(&agent.socket))
            .await
            .unwrap();
    let svid = eventually("an SVID", WAIT, || {
        let c = client.clone();
        async move { c.fetch_x509_svid().await.ok() }
    })
    .await;

    let script = python::repo_root().join("examples/python/workload_check.py");
    let (py1, script1, socket1) = (py.clone(), script.clone(), agent.socket.clone());
    let out = tokio::task::spawn_blocking(move || {
        let out = Command::new(&py1)
            .arg(&script1)
            .arg("--socket")
            .arg(format!("unix://{}", socket1.display()))
            .args(["--audience", "tools.example.org"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python client failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    })
    .await
    .unwrap();
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let x509 = &out["x509"][0];
    assert_eq!(x509["spiffe_id"], ID);
    let chain = b64(&x509["chain_der_b64"]);
    assert!(x509["key_len"].as_u64().unwrap() > 0);
    // Same identity as the Rust client sees (the leaf may have rotated, so
    // compare its SPIFFE ID and issuer via the bundle).
    let info = lanyard_core::x509::CertInfo::parse(&chain).unwrap();
    assert_eq!(info.uri_sans, vec![ID.to_owned()]);
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert_eq!(b64(&x509["bundle_der_b64"]), server.bundle().concat());
    assert_eq!(
        b64(&out["x509_bundles"]["spiffe://example.org"]),
        server.bundle().concat()
    );
    assert_eq!(out["jwt"]["spiffe_id"], ID);
    assert_eq!(out["validated"]["spiffe_id"], ID);
    assert_eq!(out["validated"]["sub"], ID);
    assert!(
        !out["jwt_bundles"]["spiffe://example.org"]["keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(out["tampered"], "INVALID_ARGUMENT");

    // Without the security header: the SPIFFE status and text.
    let py2 = py.clone();
    let script2 = script.clone();
    let socket = agent.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        let out = Command::new(&py2)
            .arg(&script2)
            .arg("--socket")
            .arg(socket)
            .arg("--no-header")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out["code"], "INVALID_ARGUMENT");
    assert_eq!(out["details"], "security header missing from request");
    agent.shutdown().await;
    server.stop().await;
}
