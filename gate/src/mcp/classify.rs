//! What an MCP message asks of an enforcement point, the same for the
//! gateway's own listener and for Envoy's checks: pass it (lifecycle, the
//! client's answers), filter a tool list, decide a tool, or deny it
//! outright because nothing maps it to a tool.

use serde_json::{Value, json};

use super::message::Message;
use crate::config::Upstream;

/// The verdict on a message before any decision point is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// Passes without a decision (`initialize`, `ping`, `server/discover`,
    /// notifications, the client's responses); the label names it.
    Pass(String),
    /// `tools/list`: passes, its answer filtered where the gateway sees it.
    List,
    /// Decided by the node agent.
    Decide {
        /// The Lanyard tool.
        tool: String,
        /// What it acts on (`params.uri` or `params.name` of a mapped
        /// method; empty for `tools/call`).
        resource: String,
        /// The Cedar `call` context.
        context: Value,
        /// What the call record names (`tools/call read_contact`).
        label: String,
        /// A `tools/call` (denied as a tool result) rather than another
        /// method (denied as a JSON-RPC error).
        tool_call: bool,
    },
    /// Denied: nothing maps it to a tool.
    Unmapped {
        /// Why.
        reason: String,
        /// As in [`Classified::Decide`].
        tool_call: bool,
    },
}

/// Messages that pass without a decision.
pub fn is_lifecycle(method: &str) -> bool {
    matches!(method, "initialize" | "ping" | "server/discover")
        || method.starts_with("notifications/")
}

/// The Cedar call context of `args`: the object itself (without `_meta`),
/// `{}` otherwise.
pub fn context_of(args: &Value) -> Value {
    match args {
        Value::Object(m) => {
            let mut m = m.clone();
            m.remove("_meta");
            Value::Object(m)
        }
        _ => json!({}),
    }
}

/// Classifies `msg` for upstream `u`.
pub fn classify(u: &Upstream, msg: &Message) -> Classified {
    let Some(method) = msg.method.as_deref() else {
        return Classified::Pass("response".into());
    };
    if is_lifecycle(method) {
        return Classified::Pass(method.to_owned());
    }
    match method {
        "tools/list" => Classified::List,
        "tools/call" => {
            let name = msg.param_str("name").unwrap_or_default();
            match u.lanyard_tool(name) {
                Some(tool) => Classified::Decide {
                    tool,
                    resource: String::new(),
                    context: context_of(&msg.arguments()),
                    label: format!("tools/call {name}"),
                    tool_call: true,
                },
                None => Classified::Unmapped {
                    reason: format!(
                        "MCP tool {name:?} of upstream {} is not mapped to a Lanyard tool",
                        u.name
                    ),
                    tool_call: true,
                },
            }
        }
        other => match u.methods.get(other) {
            Some(tool) => Classified::Decide {
                tool: tool.clone(),
                resource: msg
                    .param_str("uri")
                    .or_else(|| msg.param_str("name"))
                    .unwrap_or_default()
                    .to_owned(),
                context: context_of(msg.body.get("params").unwrap_or(&Value::Null)),
                label: other.to_owned(),
                tool_call: false,
            },
            None => Classified::Unmapped {
                reason: format!("{other} is not mapped to a tool for upstream {}", u.name),
                tool_call: false,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let text = "[[upstream]]\nname = \"crm\"\nkind = \"mcp\"\npath = \"/mcp\"\nurl = \"http://127.0.0.1:1/\"\n[upstream.tools]\nread_contact = \"crm.read\"\n[upstream.methods]\n\"resources/read\" = \"crm.read\"\n";
        crate::config::Config::parse(text, &Default::default())
            .unwrap()
            .upstreams
            .remove(0)
    }

    fn msg(v: Value) -> Message {
        Message::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn each_kind_of_message_is_told_apart() {
        let u = upstream();
        let c = |v| classify(&u, &msg(v));
        assert_eq!(
            c(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})),
            Classified::Pass("initialize".into())
        );
        assert_eq!(
            c(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Classified::Pass("notifications/initialized".into())
        );
        assert_eq!(
            c(json!({"jsonrpc": "2.0", "id": 1, "result": {}})),
            Classified::Pass("response".into())
        );
        assert_eq!(
            c(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
            Classified::List
        );
        match c(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_contact", "arguments": {"id": "4", "_meta": {}}}}),
        ) {
            Classified::Decide {
                tool,
                context,
                tool_call,
                ..
            } => {
                assert_eq!(tool, "crm.read");
                assert_eq!(context, json!({"id": "4"}));
                assert!(tool_call);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "drop_db"}})
            ),
            Classified::Unmapped {
                tool_call: true,
                ..
            }
        ));
        match c(
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "crm://42"}}),
        ) {
            Classified::Decide {
                resource,
                tool_call,
                ..
            } => {
                assert_eq!(resource, "crm://42");
                assert!(!tool_call);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c(json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "x"}})),
            Classified::Unmapped {
                tool_call: false,
                ..
            }
        ));
    }
}
