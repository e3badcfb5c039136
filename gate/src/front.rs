//! The front of one request: find the upstream by path, know the caller
//! (and refuse it before anything else when it holds no live task or the
//! upstream is not among its destinations), read the body within the cap,
//! then hand it to the MCP or the HTTP side.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::json;

use crate::body::Body;
use crate::caller::{self, Refusal};
use crate::service::{Call, Conn, json_answer, text};
use crate::state::Gate;

/// Time for a request's body to arrive whole.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn refusal(r: &Refusal) -> http::Response<Body> {
    let mut resp = json_answer(r.status, &json!({"error": "refused", "reason": r.reason}));
    if r.status == http::StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// Serves one request.
pub async fn handle(
    gate: Arc<Gate>,
    conn: Arc<Conn>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let started = Instant::now();
    let live = gate.live();
    let Some(upstream) = live.config.upstream_for(req.uri().path()).cloned() else {
        return text(
            http::StatusCode::NOT_FOUND,
            "no upstream is served at this path",
        );
    };
    // A match, not `Option::map`: the closure's borrow would make the
    // connection's future lose `Send`.
    #[allow(clippy::manual_map)]
    let peer = match &conn.peer {
        Some((p, c)) => Some((p, c.as_slice())),
        None => None,
    };
    let caller = match caller::authenticate(
        peer,
        req.headers(),
        &gate.agent,
        gate.spiffe_id(),
        SystemTime::now(),
    )
    .await
    {
        Ok(c) => c,
        Err(r) => {
            gate.metrics.call(&upstream.name, "", "refused");
            tracing::info!(upstream = %upstream.name, reason = %r.reason, "caller refused");
            return refusal(&r);
        }
    };
    if let Err(r) =
        caller::destination_allowed(&caller.claims, &upstream, live.config.require_destinations)
    {
        gate.metrics.call(&upstream.name, "", "refused");
        tracing::info!(upstream = %upstream.name, task = %caller.claims.task_id, reason = %r.reason, "destination refused");
        return refusal(&r);
    }
    let (parts, body) = req.into_parts();
    let max = live.config.max_body;
    // A body trickled in byte by byte must not hold a connection forever.
    let read = tokio::time::timeout(BODY_TIMEOUT, crate::body::read_limited(body, max)).await;
    let Ok(read) = read else {
        return text(
            http::StatusCode::REQUEST_TIMEOUT,
            &format!(
                "request body not received within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        );
    };
    let body = match read {
        Ok(b) => b,
        Err(crate::body::ReadError::TooLarge(_)) => {
            return text(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {max} bytes (max_body)"),
            );
        }
        Err(crate::body::ReadError::Broken(e)) => {
            return text(http::StatusCode::BAD_REQUEST, &format!("request body: {e}"));
        }
    };
    let call = Call {
        gate,
        live,
        upstream,
        caller,
        parts,
        body,
        started,
    };
    match call.upstream.kind {
        crate::config::Kind::Mcp => crate::mcp::handle(call).await,
        crate::config::Kind::Http => crate::routes::handle(call).await,
    }
}
