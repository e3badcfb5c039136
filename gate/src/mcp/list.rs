//! Filtering a `tools/list` answer: the upstream's answer (one JSON object,
//! or an SSE stream whose events carry JSON-RPC messages) is read whole,
//! the response to the caller's request found, and its `tools` cut down to
//! the ones the caller's task may call. Every other event passes as it
//! came.

use std::collections::HashSet;

use serde_json::Value;

/// An answer read for filtering.
#[derive(Debug)]
pub struct ListAnswer {
    sse: bool,
    /// JSON: one part. SSE: the events, as text, in order.
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    /// Passed as it came.
    Raw(String),
    /// The response to filter (and, for SSE, the event's other lines).
    Response { message: Value, lines: Vec<String> },
}

impl ListAnswer {
    /// Reads `body` (of content type `ct`) looking for the response to `id`.
    pub fn parse(body: &[u8], ct: &str, id: &Value) -> Result<Self, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_owned())?;
        if ct.starts_with("text/event-stream") {
            let mut parts = Vec::new();
            for event in split_events(text) {
                let (data, others): (Vec<&str>, Vec<&str>) =
                    event.lines().partition(|l| l.starts_with("data:"));
                let joined: String = data
                    .iter()
                    .map(|l| l.strip_prefix("data:").unwrap_or_default().trim_start())
                    .collect::<Vec<_>>()
                    .join("\n");
                match serde_json::from_str::<Value>(&joined) {
                    Ok(m) if is_response_to(&m, id) => parts.push(Part::Response {
                        message: m,
                        lines: others.iter().map(|s| (*s).to_owned()).collect(),
                    }),
                    _ => parts.push(Part::Raw(event.to_owned())),
                }
            }
            Ok(Self { sse: true, parts })
        } else {
            let m: Value =
                serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
            let part = if is_response_to(&m, id) {
                Part::Response {
                    message: m,
                    lines: vec![],
                }
            } else {
                Part::Raw(text.to_owned())
            };
            Ok(Self {
                sse: false,
                parts: vec![part],
            })
        }
    }

    /// Whether the response to the request was found (if not, nothing of
    /// the answer may reach the caller: it could list anything).
    pub fn has_response(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Response { .. }))
    }

    /// The tool names the response lists.
    pub fn names(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Response { message, .. } => {
                    message.pointer("/result/tools")?.as_array().cloned()
                }
                Part::Raw(_) => None,
            })
            .flatten()
            .filter_map(|t| t.get("name")?.as_str().map(str::to_owned))
            .collect()
    }

    /// The answer with only the tools in `keep`.
    pub fn retain(mut self, keep: &HashSet<String>) -> String {
        for p in &mut self.parts {
            if let Part::Response { message, .. } = p
                && let Some(tools) = message
                    .pointer_mut("/result/tools")
                    .and_then(Value::as_array_mut)
            {
                tools.retain(|t| {
                    t.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| keep.contains(n))
                });
            }
        }
        if !self.sse {
            return match self.parts.pop() {
                Some(Part::Response { message, .. }) => message.to_string(),
                Some(Part::Raw(s)) => s,
                None => String::new(),
            };
        }
        let mut out = String::new();
        for p in self.parts {
            match p {
                Part::Raw(s) => out.push_str(&s),
                Part::Response { message, lines } => {
                    for l in lines {
                        out.push_str(&l);
                        out.push('\n');
                    }
                    out.push_str("data: ");
                    out.push_str(&message.to_string());
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        out
    }
}

fn is_response_to(m: &Value, id: &Value) -> bool {
    m.get("id") == Some(id) && m.get("result").is_some()
}

/// SSE events: blocks separated by a blank line (LF or CRLF).
fn split_events(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let sep = if b[i..].starts_with(b"\r\n\r\n") {
            4
        } else if b[i..].starts_with(b"\n\n") {
            2
        } else {
            0
        };
        if sep > 0 {
            out.push(&text[start..i]);
            i += sep;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < text.len() && !text[start..].trim().is_empty() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keep(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_json_answer_keeps_only_the_allowed_tools() {
        let body = json!({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
            {"name": "read_contact", "inputSchema": {}},
            {"name": "delete_contact", "inputSchema": {}}
        ]}})
        .to_string();
        let a = ListAnswer::parse(body.as_bytes(), "application/json", &json!(3)).unwrap();
        assert_eq!(a.names(), vec!["read_contact", "delete_contact"]);
        let out: Value = serde_json::from_str(&a.retain(&keep(&["read_contact"]))).unwrap();
        assert_eq!(out["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(out["result"]["tools"][0]["name"], "read_contact");
    }

    #[test]
    fn an_sse_answer_is_filtered_and_other_events_pass() {
        let body = concat!(
            "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\n",
            "event: message\r\nid: 7\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"tools\":[{\"name\":\"x\"},{\"name\":\"y\"}]}}\r\n\r\n"
        );
        let a = ListAnswer::parse(body.as_bytes(), "text/event-stream", &json!("a")).unwrap();
        assert_eq!(a.names(), vec!["x", "y"]);
        let out = a.retain(&keep(&["y"]));
        assert!(out.contains("notifications/progress"));
        assert!(out.contains("id: 7\n"));
        assert!(out.contains("\"name\":\"y\""));
        assert!(!out.contains("\"name\":\"x\""));
    }

    #[test]
    fn a_response_to_another_id_is_not_touched() {
        let body =
            json!({"jsonrpc": "2.0", "id": 9, "result": {"tools": [{"name": "x"}]}}).to_string();
        let a = ListAnswer::parse(body.as_bytes(), "application/json", &json!(3)).unwrap();
        assert!(a.names().is_empty());
        assert!(!a.has_response());
        assert!(ListAnswer::parse(b"not json", "application/json", &json!(3)).is_err());
    }
}
