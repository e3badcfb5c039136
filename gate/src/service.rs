//! A request on its way, as the MCP and the HTTP sides handle it: the
//! decision (fail closed), the upstream credential, the call upstream and
//! the answer streamed back and recorded once ([`Call::forward`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use lanyard_core::peer::Peer;
use serde_json::json;

use crate::agent::{AgentError, Decision, Outcome};
use crate::body::{Body, Counted, full};
use crate::caller::Caller;
use crate::config::{CredentialSource, Upstream};
use crate::state::{Gate, Live};
use crate::upstream::Outgoing;

/// What the connection says about the caller: the task X.509-SVID it
/// presented (validated in the handshake), if it did.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// The peer and its chain.
    pub peer: Option<(Peer, Vec<Vec<u8>>)>,
}

/// A request on its way, with everything the two sides need.
pub struct Call {
    /// The gateway.
    pub gate: Arc<Gate>,
    /// The configuration in force when it arrived.
    pub live: Arc<Live>,
    /// Where it goes.
    pub upstream: Upstream,
    /// Who sent it.
    pub caller: Caller,
    /// Its head.
    pub parts: http::request::Parts,
    /// Its body.
    pub body: Bytes,
    /// When it arrived.
    pub started: Instant,
}

/// A plain-text answer.
pub fn text(status: http::StatusCode, msg: &str) -> http::Response<Body> {
    let mut r = http::Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON answer.
pub fn json_answer(status: http::StatusCode, v: &serde_json::Value) -> http::Response<Body> {
    let mut r = http::Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Seconds a caller is told to wait before retrying a pending call.
pub const PENDING_RETRY_AFTER: u32 = 5;

/// The answer to an HTTP call still waiting for a person's approval: 503
/// with `Retry-After` (what HTTP clients retry on), the approval's ID in
/// `Lanyard-Approval-Id` and the body. The same call, retried, is allowed
/// once approved.
pub fn pending_answer(d: &Decision) -> http::Response<Body> {
    let mut r = json_answer(
        http::StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "error": "approval pending",
            "reason": d.reason,
            "approval_id": d.approval_id,
            "approval_expires_at": d.approval_expires_at,
            "policy_ids": d.policy_ids,
            "decision_id": d.decision_id,
        }),
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(PENDING_RETRY_AFTER),
    );
    if let Ok(v) = http::HeaderValue::from_str(&d.approval_id) {
        r.headers_mut().insert("lanyard-approval-id", v);
    }
    r
}

impl Call {
    /// Asks the decision point; a failure to get a decision is a denial
    /// (fail closed), with the reason.
    pub async fn decide(
        &self,
        tool: &str,
        resource: &str,
        context: &serde_json::Value,
    ) -> Decision {
        let ask = crate::agent::Ask {
            tool,
            resource,
            context_json: context.to_string(),
            probe: false,
            wait: self.live.config.approval_wait,
        };
        let d = match self
            .gate
            .agent
            .authorize(&self.caller.credential, ask)
            .await
        {
            Ok(d) => d,
            Err(AgentError(s)) => Decision::deny(match s.code() {
                tonic::Code::InvalidArgument => {
                    format!("the call cannot be decided: {}", s.message())
                }
                tonic::Code::PermissionDenied => s.message().to_owned(),
                _ => format!("no decision (node agent: {}); denied", s.message()),
            }),
        };
        let verdict = d.verdict();
        self.gate.metrics.call(&self.upstream.name, tool, verdict);
        tracing::info!(
            upstream = %self.upstream.name, tool, task = %self.caller.claims.task_id,
            principal = %self.caller.spiffe_id, decision = verdict, reason = %d.reason,
            decision_id = %d.decision_id, "tool call decided"
        );
        d
    }

    /// Records a call that never reached the upstream (denied, or failed
    /// before): one `tool.call` record.
    pub fn record_unsent(&self, d: &Decision, method: &str, error: &str) {
        self.gate.recorder.send(Outcome {
            decision_id: d.decision_id.clone(),
            upstream: self.upstream.name.clone(),
            method: method.to_owned(),
            status: 0,
            bytes_in: self.body.len() as u64,
            bytes_out: 0,
            latency: self.started.elapsed(),
            error: error.to_owned(),
        });
    }

    async fn credential(&self) -> Result<Option<String>, (http::StatusCode, String)> {
        upstream_credential(&self.gate, &self.live, &self.upstream, &self.caller).await
    }

    /// Sends the call upstream (credentialed) and returns the answer's
    /// head with its body still to come, or an answer for the caller.
    pub async fn send(
        &self,
        rest: &str,
        d: Option<&Decision>,
        method: &str,
    ) -> Result<http::Response<Body>, Box<http::Response<Body>>> {
        let fail = |status: http::StatusCode, msg: String| {
            if let Some(d) = d {
                self.record_unsent(d, method, &msg);
            }
            Err(Box::new(json_answer(
                status,
                &json!({"error": "upstream", "reason": msg}),
            )))
        };
        let credential = match self.credential().await {
            Ok(c) => c,
            Err((status, msg)) => return fail(status, msg),
        };
        let req = Outgoing {
            upstream: &self.upstream,
            rest,
            query: self.parts.uri.query(),
            method: self.parts.method.clone(),
            headers: self.parts.headers.clone(),
            body: self.body.clone(),
            credential,
        }
        .build();
        let req = match req {
            Ok(r) => r,
            Err(e) => return fail(http::StatusCode::BAD_GATEWAY, e.to_string()),
        };
        let t = Instant::now();
        let resp = self.live.clients.send(&self.upstream, req).await;
        let labels = lanyard_metrics::labels(&[("upstream", &self.upstream.name)]);
        self.gate
            .metrics
            .upstream_seconds
            .get_or_create(&labels)
            .observe(t.elapsed().as_secs_f64());
        match resp {
            Ok(r) => Ok(r),
            Err(e) => {
                self.gate
                    .metrics
                    .upstream_errors
                    .get_or_create(&labels)
                    .inc();
                tracing::warn!(upstream = %self.upstream.name, err = %e, "upstream call failed");
                let status = match e {
                    crate::upstream::UpstreamError::Timeout(..) => {
                        http::StatusCode::GATEWAY_TIMEOUT
                    }
                    _ => http::StatusCode::BAD_GATEWAY,
                };
                fail(status, e.to_string())
            }
        }
    }

    /// Streams `resp` back to the caller: counted, cut if the caller's
    /// credential is revoked, recorded once at its end.
    pub fn stream_back(
        &self,
        resp: http::Response<Body>,
        d: Option<&Decision>,
        method: &str,
    ) -> http::Response<Body> {
        let (parts, body) = resp.into_parts();
        let trust = self.gate.identity.trust.clone();
        let peer = self.caller.peer.clone();
        let cut = Box::pin(async move {
            let why = trust.revoked(&peer).await.to_string();
            tracing::warn!(peer = %peer.spiffe_id, reason = %why, "caller revoked: answer cut");
            why
        });
        let recorder = self.gate.recorder.clone();
        let template = Outcome {
            decision_id: d.map(|d| d.decision_id.clone()).unwrap_or_default(),
            upstream: self.upstream.name.clone(),
            method: method.to_owned(),
            status: parts.status.as_u16(),
            bytes_in: self.body.len() as u64,
            ..Outcome::default()
        };
        let started = self.started;
        let on_end = Box::new(move |e: crate::body::Ended| {
            recorder.send(Outcome {
                bytes_out: e.bytes,
                latency: started.elapsed(),
                error: e.error,
                ..template
            });
        });
        let body = Counted::new(body, Some(cut), on_end);
        http::Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
    }

    /// Sends and streams back: the usual way of a decided call.
    pub async fn forward(
        &self,
        rest: &str,
        d: Option<&Decision>,
        method: &str,
    ) -> http::Response<Body> {
        match self.send(rest, d, method).await {
            Ok(resp) => self.stream_back(resp, d, method),
            Err(answer) => *answer,
        }
    }
}

/// The upstream credential for the caller's task, if the upstream has
/// one; an answer for the caller when it cannot be had.
/// The upstream credential for the caller's task, if the upstream has one;
/// an answer for the caller when it cannot be had.
pub async fn upstream_credential(
    gate: &Gate,
    live: &Live,
    upstream: &Upstream,
    caller: &Caller,
) -> Result<Option<String>, (http::StatusCode, String)> {
    let Some(c) = &upstream.credential else {
        return Ok(None);
    };
    match &c.source {
        CredentialSource::File(_) => Ok(live.statics.get(&upstream.name).cloned()),
        CredentialSource::Provider(p) => gate
            .agent
            .credential(
                &caller.credential,
                caller.claims.task_id.as_str(),
                p,
                &c.scopes,
                &upstream.host,
            )
            .await
            .map(Some)
            .map_err(|AgentError(s)| {
                let status = match s.code() {
                    tonic::Code::PermissionDenied
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition => http::StatusCode::FORBIDDEN,
                    _ => http::StatusCode::BAD_GATEWAY,
                };
                (status, format!("upstream credential {p}: {}", s.message()))
            }),
    }
}
