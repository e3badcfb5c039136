//! One `Check`: Envoy's view of a request (its path, headers, body and the
//! downstream peer's certificate), decided by the same rules as the
//! gateway's own listener: the caller's task credential, its destinations,
//! the MCP message or the HTTP route, the node agent's decision, and the
//! upstream credential to inject.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard_core::peer::Requirements;
use lanyard_core::x509::PeerUsage;

use crate::agent::Ask;
use crate::caller::{self, Caller};
use crate::config::{Inject, Kind, Upstream};
use crate::mcp::Classified;
use crate::mcp::message::Message;
use crate::state::{Gate, Live};

/// Envoy's partial-body marker (`allow_partial_message: true` sets it).
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// What Envoy is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through, with these request headers set (and the caller's
    /// `Authorization` removed), and this query parameter set.
    Allow {
        /// Headers to set.
        headers: Vec<(String, String)>,
        /// A query parameter to set.
        query: Option<(String, String)>,
    },
    /// Refuse it with this HTTP status and reason.
    Deny {
        /// 401, 403, 400, 502...
        status: u16,
        /// Why.
        reason: String,
        /// The deciding policies.
        policy_ids: Vec<String>,
    },
}

fn deny(status: u16, reason: impl Into<String>) -> Verdict {
    Verdict::Deny {
        status,
        reason: reason.into(),
        policy_ids: vec![],
    }
}

/// The request as Envoy describes it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The Host.
    pub host: String,
    /// Headers, lowercase names.
    pub headers: http::HeaderMap,
    /// The body Envoy sent (empty when none).
    pub body: Vec<u8>,
    /// The body's declared size (-1: unknown).
    pub size: i64,
    /// The downstream peer's certificate chain, URL-encoded PEM.
    pub certificate: String,
}

/// The caller's chain from Envoy's URL-encoded PEM.
fn chain_of(certificate: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem: String =
        form_urlencoded::parse(format!("c={}", certificate.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the source certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the source certificate holds no certificate".into());
    }
    Ok(chain)
}

/// Decides one request.
pub async fn check(gate: &Arc<Gate>, seen: Seen) -> Verdict {
    let live = gate.live();
    let (path, query) = match seen.path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (seen.path.clone(), None),
    };
    let Some(upstream) = live.config.upstream_for(&path).cloned() else {
        return deny(404, format!("no upstream is served at {path}"));
    };
    let caller = match who(gate, &seen).await {
        Ok(c) => c,
        Err(v) => return v,
    };
    if let Err(r) =
        caller::destination_allowed(&caller.claims, &upstream, live.config.require_destinations)
    {
        return deny(r.status.as_u16(), r.reason);
    }
    if seen.headers.get(PARTIAL_BODY).is_some_and(|v| v == "true")
        || (seen.size >= 0 && usize::try_from(seen.size).ok() != Some(seen.body.len()))
    {
        return deny(
            400,
            "the request body reached lanyard-gate cut short (set with_request_body and allow_partial_message: false)",
        );
    }
    let decided = match upstream.kind {
        Kind::Mcp => mcp(gate, &upstream, &caller, &seen).await,
        Kind::Http => http_route(gate, &upstream, &caller, &seen, &path, query.as_deref()).await,
    };
    match decided {
        Decided::Pass | Decided::Allowed => allow(gate, &live, &upstream, &caller).await,
        Decided::Denied(v) => v,
    }
}

async fn who(gate: &Arc<Gate>, seen: &Seen) -> Result<Caller, Verdict> {
    let now = SystemTime::now();
    let chain = if seen.certificate.is_empty() {
        None
    } else {
        Some(chain_of(&seen.certificate).map_err(|e| deny(403, e))?)
    };
    let peer = match &chain {
        Some(c) => Some(
            gate.identity
                .trust
                .current()
                .validate(c, PeerUsage::Client, &Requirements::default(), now)
                .map_err(|e| deny(403, format!("the caller's X.509-SVID: {e}")))?,
        ),
        None => None,
    };
    let with_chain = match (&peer, &chain) {
        (Some(p), Some(c)) => Some((p, c.as_slice())),
        _ => None,
    };
    caller::authenticate(
        with_chain,
        &seen.headers,
        &gate.agent,
        gate.spiffe_id(),
        now,
    )
    .await
    .map_err(|r| deny(r.status.as_u16(), r.reason))
}

enum Decided {
    /// No decision needed (lifecycle, tool lists).
    Pass,
    /// The decision point allowed it.
    Allowed,
    /// Refused.
    Denied(Verdict),
}

async fn decide(
    gate: &Gate,
    u: &Upstream,
    caller: &Caller,
    tool: &str,
    resource: &str,
    context: &serde_json::Value,
) -> Decided {
    let ask = Ask {
        tool,
        resource,
        context_json: context.to_string(),
        probe: false,
        // Envoy waits for this check within its own short timeout: a call
        // held for approval is answered "pending" at once.
        wait: std::time::Duration::ZERO,
    };
    match gate.agent.authorize(&caller.credential, ask).await {
        Ok(d) => {
            gate.metrics.call(&u.name, tool, d.verdict());
            if d.allow {
                Decided::Allowed
            } else if d.pending {
                Decided::Denied(Verdict::Deny {
                    status: 503,
                    reason: format!(
                        "approval pending (approval {}), retry the same call later: {}",
                        d.approval_id, d.reason
                    ),
                    policy_ids: d.policy_ids,
                })
            } else {
                Decided::Denied(Verdict::Deny {
                    status: 403,
                    reason: d.reason,
                    policy_ids: d.policy_ids,
                })
            }
        }
        Err(e) => {
            gate.metrics.call(&u.name, tool, "deny");
            Decided::Denied(deny(403, format!("no decision ({e}); denied")))
        }
    }
}

async fn mcp(gate: &Gate, u: &Upstream, caller: &Caller, seen: &Seen) -> Decided {
    if seen.method != "POST" {
        // The server's stream and the end of a session carry no tool call.
        return Decided::Pass;
    }
    if seen.body.is_empty() {
        return Decided::Denied(deny(
            400,
            "no request body: configure Envoy with with_request_body",
        ));
    }
    let msg = match Message::parse(&seen.body) {
        Ok(m) => m,
        Err(m) => return Decided::Denied(deny(400, m.message)),
    };
    if let Err(m) = msg.check_headers(&seen.headers) {
        return Decided::Denied(deny(400, m.message));
    }
    match crate::mcp::classify(u, &msg) {
        Classified::Pass(_) | Classified::List => Decided::Pass,
        Classified::Unmapped { reason, .. } => {
            gate.metrics.call(&u.name, "", "deny");
            Decided::Denied(deny(403, reason))
        }
        Classified::Decide {
            tool,
            resource,
            context,
            ..
        } => decide(gate, u, caller, &tool, &resource, &context).await,
    }
}

async fn http_route(
    gate: &Gate,
    u: &Upstream,
    caller: &Caller,
    seen: &Seen,
    path: &str,
    query: Option<&str>,
) -> Decided {
    let rest = path
        .strip_prefix(u.path.trim_end_matches('/'))
        .unwrap_or(path);
    let rest = if rest.is_empty() { "/" } else { rest };
    let Some(m) = crate::routes::find(&u.routes, &seen.method, Some(&seen.host), rest) else {
        gate.metrics.call(&u.name, "", "deny");
        return Decided::Denied(deny(
            403,
            format!(
                "no route of upstream {} maps {} {rest} to a tool",
                u.name, seen.method
            ),
        ));
    };
    let ct = seen
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ctx = match crate::routes::context(query, ct, &seen.body) {
        Ok(c) => c,
        Err(e) => return Decided::Denied(deny(400, e)),
    };
    decide(gate, u, caller, &m.route.tool, &m.resource(), &ctx).await
}

async fn allow(gate: &Gate, live: &Live, u: &Upstream, caller: &Caller) -> Verdict {
    let cred = match crate::service::upstream_credential(gate, live, u, caller).await {
        Ok(c) => c,
        Err((status, msg)) => return deny(status.as_u16(), msg),
    };
    let mut headers = vec![];
    let mut query = None;
    if let (Some(c), Some(value)) = (&u.credential, cred) {
        match &c.inject {
            Inject::Header { name, prefix } => {
                headers.push((name.as_str().to_owned(), format!("{prefix}{value}")))
            }
            Inject::Query(q) => query = Some((q.clone(), value)),
        }
    }
    Verdict::Allow { headers, query }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_certificates_are_url_encoded_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // Percent-encoded as Envoy does (a space is %20; a literal + stays).
        let encoded: String = form_urlencoded::byte_serialize(cert.pem().as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        let chain = chain_of(&encoded).unwrap();
        assert_eq!(chain, vec![cert.der().to_vec()]);
        assert!(chain_of("not%20a%20certificate").is_err());
    }
}
