//! MCP through the gateway (the Streamable HTTP transport; revisions
//! 2025-06-18, 2025-11-25 and 2026-07-28). Per POSTed message:
//!
//! - lifecycle (`initialize`, `ping`, `server/discover`, notifications,
//!   and the client's responses to server requests) passes;
//! - `tools/call` maps the MCP tool to a Lanyard tool and is decided by the
//!   node agent with the arguments as the Cedar `call` context; a denial
//!   is a `CallToolResult` with `isError: true` (so the SDKs surface the
//!   reason to the model);
//! - `tools/list` passes, and its answer is cut to the tools the task may
//!   call;
//! - any other method is denied unless the configuration maps it to a
//!   tool.
//!
//! An `Mcp-Session-Id` is bound to the task that opened it.

pub mod classify;
pub mod list;
pub mod message;
pub mod sessions;

use std::collections::HashSet;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::agent::{Ask, Decision};
use crate::body::Body;
use crate::service::{Call, json_answer, text};
pub use classify::{Classified, classify};
use message::{METHOD_DENIED, Malformed, Message};
use sessions::SessionCheck;

const SESSION: &str = "mcp-session-id";
/// The `_meta` key of a denial's details.
pub const META_KEY: &str = "dev.lanyard/decision";

fn malformed(m: &Malformed) -> http::Response<Body> {
    let status = if m.code == message::HEADER_MISMATCH
        || m.code == message::INVALID_REQUEST
        || m.code == message::PARSE_ERROR
    {
        http::StatusCode::BAD_REQUEST
    } else {
        http::StatusCode::OK
    };
    json_answer(status, &m.to_json())
}

/// Serves one MCP request.
pub async fn handle(call: Call) -> http::Response<Body> {
    let session = call
        .parts
        .headers
        .get(SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session {
        let c = &call.caller;
        match call.gate.sessions.check(
            id,
            &call.upstream.name,
            c.claims.task_id.as_str(),
            &c.spiffe_id,
            SystemTime::now(),
        ) {
            SessionCheck::Ours => {}
            SessionCheck::Unknown => {
                return text(
                    http::StatusCode::NOT_FOUND,
                    "unknown MCP session: initialize a new one",
                );
            }
            SessionCheck::Foreign => {
                call.gate.metrics.call(&call.upstream.name, "", "refused");
                tracing::warn!(upstream = %call.upstream.name, task = %c.claims.task_id, principal = %c.spiffe_id, "MCP session of another task refused");
                return text(
                    http::StatusCode::FORBIDDEN,
                    "this MCP session belongs to another task",
                );
            }
        }
    }
    match call.parts.method {
        http::Method::POST => post(call, session).await,
        http::Method::GET => {
            // The server's own stream (legacy revisions): within the session.
            if session.is_none() {
                return text(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "GET needs an Mcp-Session-Id",
                );
            }
            call.gate.metrics.call(&call.upstream.name, "", "pass");
            call.forward("", None, "GET").await
        }
        http::Method::DELETE => {
            let Some(id) = session else {
                return text(
                    http::StatusCode::BAD_REQUEST,
                    "DELETE needs an Mcp-Session-Id",
                );
            };
            let r = call.forward("", None, "DELETE").await;
            if r.status().is_success() {
                call.gate.sessions.end(&id);
            }
            r
        }
        _ => text(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "MCP takes POST, GET and DELETE",
        ),
    }
}

async fn post(call: Call, session: Option<String>) -> http::Response<Body> {
    let msg = match Message::parse(&call.body) {
        Ok(m) => m,
        Err(m) => return malformed(&m),
    };
    if let Err(m) = msg.check_headers(&call.parts.headers) {
        call.gate.metrics.call(&call.upstream.name, "", "refused");
        tracing::warn!(upstream = %call.upstream.name, task = %call.caller.claims.task_id, err = %m.message, "MCP headers disagree with the body");
        return malformed(&m);
    }
    match classify(&call.upstream, &msg) {
        Classified::Pass(label) => {
            call.gate.metrics.call(&call.upstream.name, "", "pass");
            let r = call.forward("", None, &label).await;
            if label == "initialize" && session.is_none() {
                bind_session(&call, &r);
            }
            r
        }
        Classified::List => tools_list(call, &msg).await,
        Classified::Unmapped { reason, tool_call } => {
            call.gate.metrics.call(&call.upstream.name, "", "deny");
            tracing::info!(upstream = %call.upstream.name, task = %call.caller.claims.task_id, %reason, "unmapped MCP call denied");
            denied(&msg, &Decision::deny(reason), tool_call, modern(&call))
        }
        Classified::Decide {
            tool,
            resource,
            context,
            label,
            tool_call,
        } => {
            let d = call.decide(&tool, &resource, &context).await;
            if !d.allow {
                call.record_unsent(&d, &label, "");
                return denied(&msg, &d, tool_call, modern(&call));
            }
            call.forward("", Some(&d), &label).await
        }
    }
}

/// A denial as the client's SDK shows it: a tool result with `isError`
/// for `tools/call` (so the model reads the reason), a JSON-RPC error for
/// any other method.
/// Whether the request speaks revision 2026-07-28, whose results carry
/// `resultType`.
fn modern(call: &Call) -> bool {
    call.parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        == Some(message::MODERN)
}

fn denied(msg: &Message, d: &Decision, tool_call: bool, modern: bool) -> http::Response<Body> {
    if tool_call {
        let mut r = denied_result(&msg.reply_id(), d);
        if modern {
            // Required from 2026-07-28: a client refuses a result without it.
            r["result"]["resultType"] = json!("complete");
        }
        return json_answer(http::StatusCode::OK, &r);
    }
    let data = json!({
        "decision": d.verdict(), "reason": d.reason, "policy_ids": d.policy_ids,
        "decision_id": d.decision_id, "approval_id": d.approval_id,
    });
    let text = if d.pending {
        format!(
            "pending approval by a person, retry the same call later: {}",
            d.reason
        )
    } else {
        format!("denied by Lanyard: {}", d.reason)
    };
    json_answer(
        http::StatusCode::OK,
        &message::error_response(&msg.reply_id(), METHOD_DENIED, &text, Some(data)),
    )
}

fn bind_session(call: &Call, r: &http::Response<Body>) {
    if let Some(id) = r.headers().get(SESSION).and_then(|v| v.to_str().ok()) {
        let until = call
            .caller
            .claims
            .not_after
            .unwrap_or_else(|| SystemTime::now() + std::time::Duration::from_secs(3600));
        call.gate.sessions.bind(
            id,
            &call.upstream.name,
            call.caller.claims.task_id.as_str(),
            &call.caller.spiffe_id,
            until,
        );
    }
}

fn denied_result(id: &Value, d: &Decision) -> Value {
    let mut text = if d.pending {
        format!(
            "Pending: this call needs a person's approval and has not been answered yet. Retry the same call with the same arguments later; it is allowed once approved. ({})",
            d.reason
        )
    } else {
        format!("Denied by Lanyard: {}", d.reason)
    };
    if !d.policy_ids.is_empty() {
        text.push_str(&format!(" (policies: {})", d.policy_ids.join(", ")));
    }
    let mut meta = json!({"decision": d.verdict(), "reason": d.reason, "policy_ids": d.policy_ids, "decision_id": d.decision_id});
    if !d.approval_id.is_empty() {
        meta["approval_id"] = json!(d.approval_id);
        meta["approval_expires_at"] = json!(d.approval_expires_at);
    }
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "isError": true,
            "_meta": {META_KEY: meta},
        }
    })
}

async fn tools_list(call: Call, msg: &Message) -> http::Response<Body> {
    call.gate.metrics.call(&call.upstream.name, "", "pass");
    let resp = match call.send("", None, "tools/list").await {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let (mut parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        return http::Response::from_parts(parts, body);
    }
    let max = call.live.config.max_body.max(4 * 1024 * 1024);
    let read =
        tokio::time::timeout(call.upstream.timeout, crate::body::read_limited(body, max)).await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return text(
                http::StatusCode::BAD_GATEWAY,
                &format!("upstream tools/list answer: {e:?}"),
            );
        }
        Err(_) => {
            return text(
                http::StatusCode::GATEWAY_TIMEOUT,
                "upstream tools/list answer did not end in time",
            );
        }
    };
    let ct = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let answer = match list::ListAnswer::parse(&bytes, &ct, &msg.reply_id()) {
        Ok(a) if a.has_response() => a,
        Ok(_) | Err(_) => {
            return text(
                http::StatusCode::BAD_GATEWAY,
                "the upstream's tools/list answer holds no response to the request",
            );
        }
    };
    let mut keep = HashSet::new();
    for name in answer.names() {
        let Some(tool) = call.upstream.lanyard_tool(&name) else {
            continue;
        };
        if !call.caller.claims.tools.contains(&tool) {
            continue;
        }
        let ask = Ask {
            tool: &tool,
            resource: "",
            context_json: "{}".into(),
            probe: true,
            wait: std::time::Duration::ZERO,
        };
        if call
            .gate
            .agent
            .authorize(&call.caller.credential, ask)
            .await
            .is_ok_and(|d| d.allow)
        {
            keep.insert(name);
        }
    }
    let out = answer.retain(&keep);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Response::from_parts(parts, crate::body::full(out))
}
