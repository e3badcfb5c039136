//! Who is calling: the task X.509-SVID the caller presented in the TLS
//! handshake (validated there by the peer verifier: chain, SVID rules,
//! revocation), or, where a client cannot do mutual TLS, a task JWT-SVID as
//! a bearer token whose audience is the gateway's SPIFFE ID (validated by
//! the node agent on every request). Either way the caller must be inside
//! a task, the task's window must be open, and the upstream's host must be
//! among the task's declared destinations.

use std::time::SystemTime;

use lanyard_core::peer::Peer;
use lanyard_core::task::TaskClaims;

use crate::agent::{Agent, CallerCredential};
use crate::config::Upstream;

/// A caller, authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its task.
    pub claims: TaskClaims,
    /// What it presented (handed to the decision point and the broker).
    pub credential: CallerCredential,
    /// As a peer, for the revocation watch.
    pub peer: Peer,
}

/// Why a caller was refused: HTTP status and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 (no credential) or 403.
    pub status: http::StatusCode,
    /// Why.
    pub reason: String,
}

impl Refusal {
    fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: http::StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

/// The caller of one request: the connection's peer, else a bearer JWT.
pub async fn authenticate(
    peer: Option<(&Peer, &[Vec<u8>])>,
    headers: &http::HeaderMap,
    agent: &Agent,
    gate_id: &str,
    now: SystemTime,
) -> Result<Caller, Refusal> {
    let caller = if let Some((peer, chain)) = peer {
        Caller {
            spiffe_id: peer.spiffe_id.to_string(),
            claims: peer
                .claims
                .clone()
                .ok_or_else(|| Refusal::forbidden(no_task(peer.spiffe_id.as_str())))?,
            credential: CallerCredential::X509(chain.to_vec()),
            peer: peer.clone(),
        }
    } else {
        let token = bearer(headers).ok_or_else(|| Refusal {
            status: http::StatusCode::UNAUTHORIZED,
            reason: "present a task X.509-SVID (mutual TLS) or a task JWT-SVID as a bearer token"
                .into(),
        })?;
        jwt_caller(token, agent, gate_id).await?
    };
    if caller.claims.not_after.is_some_and(|t| now >= t) {
        return Err(Refusal::forbidden(format!(
            "task {} has ended",
            caller.claims.task_id
        )));
    }
    Ok(caller)
}

fn no_task(id: &str) -> String {
    format!(
        "{id} holds no task: lanyard-gate serves callers inside a task (begin one, and present its SVID)"
    )
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

async fn jwt_caller(token: &str, agent: &Agent, gate_id: &str) -> Result<Caller, Refusal> {
    let (spiffe_id, claims) =
        agent
            .validate_jwt(token, gate_id)
            .await
            .map_err(|e| match e.0.code() {
                tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
                    Refusal::forbidden(format!("JWT-SVID refused: {}", e.0.message()))
                }
                _ => Refusal {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    reason: format!("cannot validate the JWT-SVID now: {e}"),
                },
            })?;
    let task = TaskClaims::from_jwt_claims(&claims)
        .map_err(|e| Refusal::forbidden(format!("JWT-SVID task claims: {e}")))?
        .ok_or_else(|| Refusal::forbidden(no_task(&spiffe_id)))?;
    let id = lanyard_core::SpiffeId::new(&spiffe_id)
        .map_err(|e| Refusal::forbidden(format!("JWT-SVID subject: {e}")))?;
    let secs = |k: &str| {
        claims
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .map(lanyard_core::clock::from_unix_secs)
    };
    let peer = Peer {
        spiffe_id: id,
        serial: String::new(),
        issued_at: secs("iat").unwrap_or(SystemTime::UNIX_EPOCH),
        not_after: secs("exp").unwrap_or(SystemTime::UNIX_EPOCH),
        issuer: None,
        claims: Some(task.clone()),
    };
    Ok(Caller {
        spiffe_id,
        claims: task,
        credential: CallerCredential::Jwt(token.to_owned()),
        peer,
    })
}

/// Whether the task may reach `u`: its declared destinations name the
/// upstream's host (`crm.example.com`, `crm.example.com:443`,
/// `https://crm.example.com/...`, or `*.example.com`). A task that declared
/// none is refused when `required`.
pub fn destination_allowed(
    claims: &TaskClaims,
    u: &Upstream,
    required: bool,
) -> Result<(), Refusal> {
    if claims.destinations.is_empty() {
        if required {
            return Err(Refusal::forbidden(format!(
                "task {} declared no destinations; this gateway requires them (upstream {} is {})",
                claims.task_id, u.name, u.host
            )));
        }
        return Ok(());
    }
    if claims
        .destinations
        .iter()
        .any(|d| names_host(d, &u.host, u.port))
    {
        return Ok(());
    }
    Err(Refusal::forbidden(format!(
        "upstream {} ({}) is not among task {}'s destinations",
        u.name, u.host, claims.task_id
    )))
}

fn names_host(d: &str, host: &str, port: u16) -> bool {
    let d = d.trim().to_ascii_lowercase();
    let authority = match d.split_once("://") {
        Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or_default(),
        None => d.as_str(),
    };
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (h, p) = split_port(authority);
    if p.is_some_and(|p| p != port) {
        return false;
    }
    match h.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => h == host,
    }
}

fn split_port(a: &str) -> (&str, Option<u16>) {
    if let Some(rest) = a.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (a, None),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (a, None),
        },
        _ => (a, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_name_hosts_ports_urls_and_wildcards() {
        assert!(names_host("crm.example.com", "crm.example.com", 443));
        assert!(names_host("CRM.example.com:443", "crm.example.com", 443));
        assert!(!names_host("crm.example.com:8443", "crm.example.com", 443));
        assert!(names_host(
            "https://crm.example.com/api",
            "crm.example.com",
            443
        ));
        assert!(names_host(
            "https://crm.example.com:443",
            "crm.example.com",
            443
        ));
        assert!(!names_host(
            "https://crm.example.com.evil.net/",
            "crm.example.com",
            443
        ));
        assert!(names_host("*.example.com", "crm.example.com", 443));
        assert!(!names_host("*.example.com", "example.com", 443));
        assert!(!names_host("*.example.com", "crmexample.com", 443));
        assert!(names_host("127.0.0.1", "127.0.0.1", 9000));
        assert!(names_host("[::1]:9000", "::1", 9000));
        assert!(!names_host("mail.example.com", "crm.example.com", 443));
        assert!(!names_host(
            "https://user@evil.net/crm.example.com",
            "crm.example.com",
            443
        ));
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer abc.def.ghi".parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some("abc.def.ghi"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
