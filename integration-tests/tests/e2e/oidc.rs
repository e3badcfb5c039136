//! JWT-SVIDs accepted outside SPIFFE: every JWT-SVID names its issuer
//! (`iss`), and the server serves OpenID Connect discovery with the JWT
//! keys, so a verifier that knows nothing of SPIFFE (PyJWT's PyJWKClient
//! here, as cloud workload identity federation does) checks signature,
//! `iss`, `aud` and `exp` from the discovery document alone. Over plain
//! HTTP (behind a proxy) and HTTPS with a certificate that is re-read
//! when its files change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_integration_tests::{TestServer, endpoint, eventually, python};
use lanyard_server::config::oidc::{OidcServe, OidcSettings, OidcTransport};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const ID: &str = "spiffe://example.org/oidc-workload";
const AUD: &str = "https://auth.example.org";
const WAIT: Duration = Duration::from_secs(20);

/// A loopback port nobody listens on (the issuer URL must name it before
/// the server binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request over `io`; the status code and body.
async fn http_get(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    method: &str,
    path: &str,
) -> (u16, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    io.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn plain_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_get(
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        method,
        path,
    )
    .await
}

fn claims_of(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let seg = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
    };
    (part(0), part(1))
}

/// Runs `examples/python/verify_jwt_svid.py` on `token`.
pub(crate) async fn pyjwt_verify(issuer: &str, audience: &str, token: &str) -> (bool, Value) {
    let py = python::python(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let script = python::repo_root().join("examples/python/verify_jwt_svid.py");
    let (issuer, audience, token) = (issuer.to_owned(), audience.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(py)
            .arg(script)
            .args(["--issuer", &issuer, "--audience", &audience])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "verifier printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_a_jwt_svid_through_discovery_with_its_issuer_checked() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let oidc = OidcSettings {
        issuer: issuer.clone(),
        serve: Some(OidcServe {
            bind: format!("127.0.0.1:{port}").parse().unwrap(),
            transport: OidcTransport::PlainHttp,
        }),
    };
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", |c| c.oidc = oidc).await;
    let addr = server.bound.oidc_addr.expect("discovery is served");
    let agent = server.agent_with_entry(ID, 60).await;
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&agent.socket))
        .await
        .unwrap();
    let svid = eventually("a JWT-SVID", WAIT, || {
        let c = client.clone();
        async move { c.fetch_jwt_svid([AUD], None).await.ok() }
    })
    .await;
    let token = svid.token().to_owned();

    // The token names its issuer, key, issue time and ID.
    let (header, claims) = claims_of(&token);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], ID);
    assert!(claims["iat"].is_u64() && claims["jti"].is_string());
    let kid = header["kid"].as_str().unwrap().to_owned();

    // The discovery document and its keys, as any verifier reads them.
    let (status, doc) = plain_get(addr, "GET", "/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{doc}");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{issuer}/keys"));
    let (status, keys) = plain_get(addr, "GET", "/keys").await;
    assert_eq!(status, 200);
    let keys: Value = serde_json::from_str(&keys).unwrap();
    let published: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let bundle_kids: Vec<String> = server
        .bound
        .ca
        .snapshot()
        .jwt_authorities
        .iter()
        .map(|a| a.key_id.clone())
        .collect();
    assert_eq!(published, bundle_kids, "the same keys as the JWT bundle");
    assert!(published.contains(&kid.as_str()));
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["use"] == "sig" && k["alg"] == "ES256")
    );
    // Nothing else is served, and nothing is written.
    assert_eq!(plain_get(addr, "GET", "/").await.0, 404);
    assert_eq!(plain_get(addr, "POST", "/keys").await.0, 405);
    assert_eq!(plain_get(addr, "HEAD", "/keys").await.0, 200);

    // A verifier that is not ours: PyJWT through discovery.
    let (ok, out) = pyjwt_verify(&issuer, AUD, &token).await;
    assert!(ok, "PyJWT refused the JWT-SVID: {out}");
    assert_eq!(out["claims"]["sub"], ID);
    assert_eq!(out["claims"]["iss"], issuer.as_str());
    assert_eq!(out["kid"], kid.as_str());
    // It checks what it must: another audience, a token another issuer
    // names, a forged signature.
    let (ok, out) = pyjwt_verify(&issuer, "https://other.example.org", &token).await;
    assert!(!ok);
    assert_eq!(out["refused"], "InvalidAudienceError", "{out}");
    let mut forged: Vec<&str> = token.split('.').collect();
    let mut other = claims.clone();
    other["iss"] = Value::from("https://attacker.example.org");
    let other = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
    forged[1] = &other;
    let (ok, out) = pyjwt_verify(&issuer, AUD, &forged.join(".")).await;
    assert!(!ok);
    assert_eq!(out["refused"], "InvalidSignatureError", "{out}");
    let signer = server.bound.ca.snapshot().jwt_active.clone();
    let reissued = signer
        .sign_svid(
            "https://attacker.example.org",
            &lanyard_core::SpiffeId::new(ID).unwrap(),
            &[AUD.to_owned()],
            Duration::from_secs(60),
            std::time::SystemTime::now(),
            Default::default(),
        )
        .unwrap();
    let (ok, out) = pyjwt_verify(&issuer, AUD, &reissued.token).await;
    assert!(!ok);
    assert_eq!(out["refused"], "InvalidIssuerError", "{out}");

    agent.shutdown().await;
    server.bound.shutdown().await;
}

fn write_cert(dir: &Path, name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    // Each file is replaced whole, as a certificate manager does.
    let replace = |file: &str, text: String| {
        let tmp = dir.join(format!("{name}.{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    };
    replace("tls.key", key.serialize_pem());
    replace("tls.crt", cert.pem());
    cert.der().to_vec()
}

/// The certificate the endpoint presents, and the discovery document's
/// issuer, over HTTPS trusting `trusted`.
async fn https_issuer(addr: SocketAddr, trusted: &[Vec<u8>]) -> (Vec<u8>, String) {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(der.clone().into()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (status, body) = http_get(tls, "GET", "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    (presented, doc["issuer"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_discovery_serves_a_renewed_certificate_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let first = write_cert(&tls_dir, "first");
    let oidc = OidcSettings {
        issuer: "https://oidc.example.org".into(),
        serve: Some(OidcServe {
            bind: "127.0.0.1:0".parse().unwrap(),
            transport: OidcTransport::Tls {
                cert: tls_dir.join("tls.crt"),
                key: tls_dir.join("tls.key"),
            },
        }),
    };
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", |c| c.oidc = oidc).await;
    let addr = server.bound.oidc_addr.unwrap();
    let (presented, issuer) = https_issuer(addr, std::slice::from_ref(&first)).await;
    assert_eq!(presented, first);
    assert_eq!(issuer, "https://oidc.example.org");

    // A broken renewal (a certificate file that is not PEM) keeps the last
    // good certificate in service.
    std::fs::write(tls_dir.join("tls.crt"), b"not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        https_issuer(addr, std::slice::from_ref(&first)).await.0,
        first
    );

    // A renewed certificate is served without a restart.
    let second = write_cert(&tls_dir, "second");
    let renewed = eventually("the renewed certificate", WAIT, || {
        let trusted = [first.clone(), second.clone()];
        async move {
            let (presented, _) = https_issuer(addr, &trusted).await;
            (presented != trusted[0]).then_some(presented)
        }
    })
    .await;
    assert_eq!(renewed, second);
    server.bound.shutdown().await;
}

#[tokio::test]
async fn a_server_with_an_unusable_discovery_certificate_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), b"garbage").unwrap();
    std::fs::write(dir.path().join("tls.key"), b"garbage").unwrap();
    let mut cfg = lanyard_server::Config::for_dir("example.org", dir.path()).unwrap();
    cfg.oidc.serve = Some(OidcServe {
        bind: "127.0.0.1:0".parse().unwrap(),
        transport: OidcTransport::Tls {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        },
    });
    let err = match lanyard_server::build(cfg).await {
        Ok(_) => panic!("started with a garbage certificate"),
        Err(e) => lanyard_core::error::report(&e),
    };
    assert!(err.contains("discovery certificate"), "{err}");
    assert!(err.contains("tls.crt"), "{err}");
}
