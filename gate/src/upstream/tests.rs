use super::*;
use crate::config::{Config, Flags};

fn upstream(extra: &str, url: &str, kind: &str) -> Upstream {
    let routes = if kind == "http" {
        "[[upstream.route]]\nmethod = \"*\"\npath = \"/*\"\ntool = \"a.b\"\n"
    } else {
        ""
    };
    let text = format!(
        "[[upstream]]\nname = \"x\"\nkind = \"{kind}\"\npath = \"/gw\"\nurl = \"{url}\"\n{routes}{extra}"
    );
    Config::parse(&text, &Flags::default())
        .unwrap()
        .upstreams
        .remove(0)
}

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn the_callers_authorization_and_the_injected_header_never_pass() {
    let u = upstream(
        "[upstream.credential]\nprovider = \"p\"\nheader = \"x-api-key\"",
        "http://127.0.0.1:9/mcp",
        "mcp",
    );
    let req = Outgoing {
        upstream: &u,
        rest: "",
        query: None,
        method: http::Method::POST,
        headers: headers(&[
            ("authorization", "Bearer caller-jwt"),
            ("x-api-key", "forged"),
            ("x-api-key", "forged-again"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("host", "gate.example"),
            ("mcp-session-id", "s1"),
        ]),
        body: Bytes::from_static(b"{}"),
        credential: Some("upstream-secret".into()),
    }
    .build()
    .unwrap();
    assert_eq!(req.uri().to_string(), "http://127.0.0.1:9/mcp");
    let h = req.headers();
    assert!(h.get("authorization").is_none());
    assert_eq!(
        h.get_all("x-api-key").iter().collect::<Vec<_>>(),
        vec!["upstream-secret"]
    );
    assert!(h.get("x-hop").is_none() && h.get("connection").is_none() && h.get("host").is_none());
    assert_eq!(h.get("mcp-session-id").unwrap(), "s1");
}

#[test]
fn a_bearer_credential_replaces_the_callers_and_a_query_credential_the_callers_parameter() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    let u = upstream(
        &format!(
            "[upstream.credential]\nfile = \"{}\"",
            secret.path().display()
        ),
        "https://api.example.com/v1/",
        "http",
    );
    let req = Outgoing {
        upstream: &u,
        rest: "/contacts/4",
        query: Some("a=1"),
        method: http::Method::GET,
        headers: headers(&[("authorization", "Bearer caller")]),
        body: Bytes::new(),
        credential: Some("tok".into()),
    }
    .build()
    .unwrap();
    assert_eq!(
        req.uri().to_string(),
        "https://api.example.com/v1/contacts/4?a=1"
    );
    assert_eq!(req.headers().get("authorization").unwrap(), "Bearer tok");

    let u = upstream(
        "[upstream.credential]\nprovider = \"p\"\nquery = \"key\"",
        "https://api.example.com",
        "http",
    );
    let req = Outgoing {
        upstream: &u,
        rest: "/x",
        query: Some("key=forged&q=a+b"),
        method: http::Method::GET,
        headers: http::HeaderMap::new(),
        body: Bytes::new(),
        credential: Some("s3cret".into()),
    }
    .build()
    .unwrap();
    assert_eq!(
        req.uri().to_string(),
        "https://api.example.com/x?q=a+b&key=s3cret"
    );
}
