//! The operator console over HTTPS (a configured certificate): the
//! sign-in link names it, the session cookie is `Secure` and `__Host-`,
//! a quarantine is released from its page with the session's CSRF token
//! and the release names the console; a login as an undeclared name, and
//! any login while the console is off, are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lanyard_integration_tests::{TD, TestServer};
use lanyard_proto::admin::{AddQuarantineRequest, ConsoleLoginRequest, QuarantineRequest};
use lanyard_server::config::approvers::{ApprovalSettings, Approver};
use lanyard_server::config::console::ConsoleSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "user:alice@example.com";

fn write_cert(dir: &Path) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("console.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("console.crt"), cert.pem()).unwrap();
    cert.der().to_vec()
}

/// One HTTPS request (trusting `ca`): status, headers and body.
async fn https(
    addr: SocketAddr,
    ca: &[u8],
    method: &str,
    path: &str,
    cookie: &str,
    form: &str,
) -> (u16, String, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.to_vec().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(form);
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_over_https_releases_a_quarantine_with_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path());
    let (crt, key) = (
        dir.path().join("console.crt"),
        dir.path().join("console.key"),
    );
    let server = TestServer::start_with(dir.path(), "127.0.0.1:0", |c| {
        c.console = Some(ConsoleSettings {
            bind: "127.0.0.1:0".parse().unwrap(),
            tls: Some((crt, key)),
            url: None,
            session_ttl: Duration::from_secs(300),
        });
        c.approval = ApprovalSettings {
            approvers: vec![Approver {
                name: ALICE.into(),
                groups: vec![],
                webhook: None,
            }],
            ..ApprovalSettings::default()
        };
    })
    .await;
    let addr = server.bound.console_addr.expect("the console listens");
    let mut admin = server.admin();
    let refused = admin
        .console_login(ConsoleLoginRequest {
            approver: "user:mallory@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let link = admin
        .console_login(ConsoleLoginRequest {
            approver: ALICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let prefix = format!("https://{addr}/login?token=");
    assert!(link.starts_with(&prefix), "{link}");
    let path = &link[format!("https://{addr}").len()..];
    let (status, head, _) = https(addr, &ca, "GET", path, "", "").await;
    assert_eq!(status, 303, "{head}");
    let set = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_owned();
    assert!(set.starts_with("__Host-lanyard_session="), "{set}");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();

    let q = admin
        .add_quarantine(AddQuarantineRequest {
            spiffe_id: format!("spiffe://{TD}/agent/suspect"),
            reason: "looked at the wrong files".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (status, _, page) = https(addr, &ca, "GET", "/quarantines", &cookie, "").await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("quarantine-{}", q.id)), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    let action = format!("/quarantines/{}/release", q.id);
    let (status, _, _) = https(addr, &ca, "POST", &action, &cookie, "csrf=wrong").await;
    assert_eq!(status, 403);
    let (status, _, _) = https(addr, &ca, "POST", &action, &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(status, 303);
    let released = admin
        .get_quarantine(QuarantineRequest { id: q.id })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released_at > 0);
    assert!(
        released.released_by.contains("console") && released.released_by.contains(ALICE),
        "{released:?}"
    );
    server.bound.shutdown().await;

    // A server without the console refuses a login.
    let other = tempfile::tempdir().unwrap();
    let plain = TestServer::start(other.path(), "127.0.0.1:0").await;
    let off = plain
        .admin()
        .console_login(ConsoleLoginRequest::default())
        .await
        .unwrap_err();
    assert_eq!(off.code(), tonic::Code::FailedPrecondition, "{off:?}");
    assert!(off.message().contains("--console-bind"), "{off:?}");
}
