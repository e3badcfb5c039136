//! One MCP message as POSTed on the Streamable HTTP transport: a single
//! JSON-RPC object (batches were removed from the protocol and are
//! refused), what kind it is, and whether the routing headers agree with
//! it (`Mcp-Method`, `Mcp-Name`; required from revision 2026-07-28, checked
//! whenever present before it).

use serde_json::{Value, json};

/// JSON-RPC: not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a request object (also: a batch).
pub const INVALID_REQUEST: i64 = -32600;
/// MCP 2026-07-28: headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// A method the gateway does not pass.
pub const METHOD_DENIED: i64 = -32001;

/// The revision that requires the routing headers.
pub const MODERN: &str = "2026-07-28";
/// Revisions served.
pub const REVISIONS: [&str; 4] = ["2025-06-18", "2025-11-25", MODERN, "2025-03-26"];

/// A JSON-RPC message from the client.
#[derive(Debug, Clone)]
pub struct Message {
    /// The whole object.
    pub body: Value,
    /// Its method (requests and notifications).
    pub method: Option<String>,
    /// Its id (requests and responses).
    pub id: Option<Value>,
}

/// Why a POST was refused before any decision: a JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// JSON-RPC error code.
    pub code: i64,
    /// Why.
    pub message: String,
    /// The request's id, when it had one.
    pub id: Value,
}

impl Malformed {
    fn new(code: i64, message: impl Into<String>, id: Value) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }

    /// The error response body.
    pub fn to_json(&self) -> Value {
        error_response(&self.id, self.code, &self.message, None)
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

/// The params key mirrored in `Mcp-Name` for a method, if any.
pub fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

impl Message {
    /// Parses a POST body.
    pub fn parse(body: &[u8]) -> Result<Self, Malformed> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Malformed::new(PARSE_ERROR, format!("not JSON: {e}"), Value::Null))?;
        let obj = match &v {
            Value::Object(o) => o,
            Value::Array(_) => {
                return Err(Malformed::new(
                    INVALID_REQUEST,
                    "JSON-RPC batches are not supported (removed from MCP): send one message per POST",
                    Value::Null,
                ));
            }
            _ => {
                return Err(Malformed::new(
                    INVALID_REQUEST,
                    "not a JSON-RPC object",
                    Value::Null,
                ));
            }
        };
        let id = obj.get("id").cloned();
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(Malformed::new(
                INVALID_REQUEST,
                "jsonrpc must be \"2.0\"",
                id.unwrap_or(Value::Null),
            ));
        }
        if let Some(i) = &id
            && !(i.is_string() || i.is_i64() || i.is_u64())
        {
            return Err(Malformed::new(
                INVALID_REQUEST,
                "id must be a string or an integer",
                Value::Null,
            ));
        }
        let method = match obj.get("method") {
            None => None,
            Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
            Some(_) => {
                return Err(Malformed::new(
                    INVALID_REQUEST,
                    "method must be a non-empty string",
                    id.unwrap_or(Value::Null),
                ));
            }
        };
        if method.is_none() && !(obj.contains_key("result") || obj.contains_key("error")) {
            return Err(Malformed::new(
                INVALID_REQUEST,
                "neither a request, a notification nor a response",
                id.unwrap_or(Value::Null),
            ));
        }
        if let Some(p) = obj.get("params")
            && !p.is_object()
        {
            return Err(Malformed::new(
                INVALID_REQUEST,
                "params must be an object",
                id.unwrap_or(Value::Null),
            ));
        }
        Ok(Self {
            method,
            id,
            body: v,
        })
    }

    /// The id for an answer (null for a notification).
    pub fn reply_id(&self) -> Value {
        self.id.clone().unwrap_or(Value::Null)
    }

    /// `params.KEY` as a string.
    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.body.get("params")?.get(key)?.as_str()
    }

    /// `params.arguments` (a `tools/call`'s), `{}` when absent.
    pub fn arguments(&self) -> Value {
        self.body
            .get("params")
            .and_then(|p| p.get("arguments"))
            .cloned()
            .unwrap_or_else(|| json!({}))
    }

    /// Checks the routing headers against the body: each present header
    /// must agree, and from revision 2026-07-28 on they must be present.
    /// A header given twice is refused.
    pub fn check_headers(&self, h: &http::HeaderMap) -> Result<(), Malformed> {
        let mismatch = |what: &str| {
            Malformed::new(
                HEADER_MISMATCH,
                format!("{what} header does not match the request body"),
                self.reply_id(),
            )
        };
        for name in ["mcp-method", "mcp-name", "mcp-protocol-version"] {
            if h.get_all(name).iter().count() > 1 {
                return Err(Malformed::new(
                    HEADER_MISMATCH,
                    format!("{name} header given more than once"),
                    self.reply_id(),
                ));
            }
        }
        let version = h.get("mcp-protocol-version").and_then(|v| v.to_str().ok());
        let modern = version == Some(MODERN);
        let Some(method) = &self.method else {
            return Ok(());
        };
        match h.get("mcp-method") {
            Some(v) if v.to_str().ok() != Some(method.as_str()) => {
                return Err(mismatch("Mcp-Method"));
            }
            None if modern => return Err(mismatch("Mcp-Method")),
            _ => {}
        }
        if modern {
            let envelope = self
                .body
                .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
                .and_then(Value::as_str);
            if envelope.is_some_and(|e| Some(e) != version) {
                return Err(mismatch("MCP-Protocol-Version"));
            }
        }
        if let Some(key) = name_key(method) {
            let body_value = self.param_str(key);
            match h.get("mcp-name") {
                Some(v) => {
                    let decoded = v.to_str().ok().and_then(decode_header_value);
                    if decoded.as_deref() != body_value {
                        return Err(mismatch("Mcp-Name"));
                    }
                }
                None if modern && body_value.is_some() => return Err(mismatch("Mcp-Name")),
                None => {}
            }
        }
        Ok(())
    }
}

/// A header value, decoding the `=?base64?...?=` form MCP uses for values
/// that are not plain visible ASCII. `None` for a malformed encoding.
pub fn decode_header_value(v: &str) -> Option<String> {
    use base64::Engine as _;
    let Some(payload) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(v.to_owned());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    if base64::engine::general_purpose::STANDARD.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
