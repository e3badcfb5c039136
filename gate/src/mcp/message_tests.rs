use super::*;

fn h(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut m = http::HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    m
}

fn call(name: &str) -> Message {
    Message::parse(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {"id": 4}}})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

#[test]
fn malformed_bodies_are_refused_with_json_rpc_codes() {
    assert_eq!(Message::parse(b"{oops").unwrap_err().code, PARSE_ERROR);
    let batch = Message::parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap_err();
    assert_eq!(batch.code, INVALID_REQUEST);
    assert!(batch.message.contains("batch"));
    assert_eq!(Message::parse(b"3").unwrap_err().code, INVALID_REQUEST);
    assert_eq!(
        Message::parse(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#)
            .unwrap_err()
            .code,
        INVALID_REQUEST
    );
    assert_eq!(
        Message::parse(br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#)
            .unwrap_err()
            .code,
        INVALID_REQUEST
    );
    assert_eq!(
        Message::parse(br#"{"jsonrpc":"2.0","id":1}"#)
            .unwrap_err()
            .code,
        INVALID_REQUEST
    );
    assert_eq!(
        Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#)
            .unwrap_err()
            .code,
        INVALID_REQUEST
    );
    let resp = Message::parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
    assert!(resp.method.is_none());
}

#[test]
fn headers_that_disagree_with_the_body_are_refused() {
    let m = call("read_contact");
    assert!(m.check_headers(&h(&[])).is_ok());
    assert!(
        m.check_headers(&h(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "read_contact")
        ]))
        .is_ok()
    );
    assert_eq!(
        m.check_headers(&h(&[("mcp-method", "tools/list")]))
            .unwrap_err()
            .code,
        HEADER_MISMATCH
    );
    assert_eq!(
        m.check_headers(&h(&[("mcp-name", "delete_contact")]))
            .unwrap_err()
            .code,
        HEADER_MISMATCH
    );
    assert_eq!(
        m.check_headers(&h(&[
            ("mcp-name", "read_contact"),
            ("mcp-name", "read_contact")
        ]))
        .unwrap_err()
        .code,
        HEADER_MISMATCH
    );
    // The 2026-07-28 revision requires them.
    assert!(
        m.check_headers(&h(&[("mcp-protocol-version", MODERN)]))
            .is_err()
    );
    assert!(
        m.check_headers(&h(&[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call")
        ]))
        .is_err()
    );
    assert!(
        m.check_headers(&h(&[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "read_contact")
        ]))
        .is_ok()
    );
}

#[test]
fn base64_names_are_decoded_strictly() {
    let m = call("réad");
    assert!(
        m.check_headers(&h(&[("mcp-name", "=?base64?csOpYWQ=?=")]))
            .is_ok()
    );
    assert!(
        m.check_headers(&h(&[("mcp-name", "=?base64?csOpYWR=?=")]))
            .is_err()
    );
    assert_eq!(decode_header_value("=?base64?!!?="), None);
    assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
}
