use std::time::Duration;

use super::*;
use crate::test_server::TestServer;

#[tokio::test]
async fn gets_over_verified_tls_with_a_bearer_token() {
    let srv = TestServer::start("127.0.0.1:0").await.unwrap();
    srv.set("/pods", 200, "{\"items\":[]}");
    srv.require_bearer("sa-token");
    let client = Client::new(
        Trust::Pem(srv.ca_pem().as_bytes().to_vec()),
        Duration::from_secs(5),
        1024,
    )
    .unwrap();
    let body = client
        .get(&srv.url("/pods"), Some("sa-token"))
        .await
        .unwrap();
    assert_eq!(&body[..], b"{\"items\":[]}");
    assert!(matches!(
        client.get(&srv.url("/pods"), Some("wrong")).await,
        Err(FetchError::Status(_, 401))
    ));
    assert!(matches!(
        client.get(&srv.url("/nope"), Some("sa-token")).await,
        Err(FetchError::Status(_, 404))
    ));
    // Over the size limit.
    srv.set("/big", 200, vec![b'x'; 4096]);
    assert!(matches!(
        client.get(&srv.url("/big"), Some("sa-token")).await,
        Err(FetchError::Body(..))
    ));
    // Another CA: the handshake fails; insecure mode skips the check.
    let other = TestServer::start("127.0.0.1:0").await.unwrap();
    let stranger = Client::new(
        Trust::Pem(other.ca_pem().as_bytes().to_vec()),
        Duration::from_secs(5),
        1024,
    )
    .unwrap();
    assert!(matches!(
        stranger.get(&srv.url("/pods"), Some("sa-token")).await,
        Err(FetchError::Connect(..))
    ));
    let insecure = Client::new(Trust::Insecure, Duration::from_secs(5), 1024).unwrap();
    assert!(
        insecure
            .get(&srv.url("/pods"), Some("sa-token"))
            .await
            .is_ok()
    );
    assert!(matches!(
        client.get("http://127.0.0.1/pods", None).await,
        Err(FetchError::BadUrl(_))
    ));
    assert!(Client::new(Trust::Pem(b"nothing".to_vec()), Duration::from_secs(1), 1).is_err());
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let _conn = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let client = Client::new(Trust::Insecure, Duration::from_millis(300), 1024).unwrap();
    assert!(matches!(
        client.get(&format!("https://{addr}/pods"), None).await,
        Err(FetchError::Timeout(..))
    ));
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

/// A kubelet's own self-signed certificate, pinned: that server is
/// reached; another with a certificate of its own is refused.
#[tokio::test]
async fn a_pinned_certificate_is_the_only_one_accepted() {
    let kubelet = TestServer::start("127.0.0.1:0").await.unwrap();
    kubelet.set("/pods", 200, "{}");
    let impostor = TestServer::start("127.0.0.1:0").await.unwrap();
    impostor.set("/pods", 200, "{}");
    let pinned = Client::new(
        Trust::Pinned(der_of(kubelet.ca_pem())),
        Duration::from_secs(5),
        1024,
    )
    .unwrap();
    assert!(pinned.get(&kubelet.url("/pods"), None).await.is_ok());
    assert!(matches!(
        pinned.get(&impostor.url("/pods"), None).await,
        Err(FetchError::Connect(..))
    ));
}

/// A kubelet reached on 127.0.0.1 serves a certificate for its node's
/// name: the client checks that name, not the address.
#[tokio::test]
async fn the_certificate_is_checked_against_the_given_name() {
    let kubelet = TestServer::start_for("127.0.0.1:0", &["node-1"])
        .await
        .unwrap();
    kubelet.set("/pods", 200, "{}");
    let ca = || Trust::Pem(kubelet.ca_pem().as_bytes().to_vec());
    let by_address = Client::new(ca(), Duration::from_secs(5), 1024).unwrap();
    assert!(matches!(
        by_address.get(&kubelet.url("/pods"), None).await,
        Err(FetchError::Connect(..))
    ));
    let by_node = Client::new(ca(), Duration::from_secs(5), 1024)
        .unwrap()
        .with_server_name("node-1");
    assert!(by_node.get(&kubelet.url("/pods"), None).await.is_ok());
    let other_node = Client::new(ca(), Duration::from_secs(5), 1024)
        .unwrap()
        .with_server_name("node-2");
    assert!(other_node.get(&kubelet.url("/pods"), None).await.is_err());
}

/// A form POST returns the answer whatever its status (an OAuth error is
/// a 400 with a JSON body); plain http only to a loopback address, and
/// only for a POST.
#[tokio::test]
async fn a_form_post_returns_any_status_and_plain_http_only_reaches_loopback() {
    let srv = TestServer::start("127.0.0.1:0").await.unwrap();
    srv.set("/token", 400, "{\"error\":\"invalid_scope\"}");
    let client = Client::new(
        Trust::Pem(srv.ca_pem().as_bytes().to_vec()),
        Duration::from_secs(5),
        1024,
    )
    .unwrap();
    let a = client
        .post_form(
            &srv.url("/token"),
            &[("grant_type", "client_credentials"), ("scope", "a b")],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    assert_eq!(&a.body[..], b"{\"error\":\"invalid_scope\"}");
    assert_eq!(srv.hits("/token"), 1);

    // Plain http: a loopback listener is reached (the request arrives as
    // a form); any other host is refused before connecting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let body = "{}";
        s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let a = client
        .post_form(&format!("http://{addr}/token"), &[("token", "a&b=c")])
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let request = seen.await.unwrap();
    assert!(request.starts_with("POST /token HTTP/1.1"), "{request}");
    assert!(
        request.contains("application/x-www-form-urlencoded"),
        "{request}"
    );
    assert!(request.ends_with("token=a%26b%3Dc"), "{request}");
    for url in [
        "http://example.com/token",
        "http://10.0.0.1/token",
        "ftp://127.0.0.1/x",
    ] {
        assert!(
            matches!(client.post_form(url, &[]).await, Err(FetchError::BadUrl(_))),
            "{url}"
        );
    }
}
