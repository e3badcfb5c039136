//! Envoy external authorization (`envoy.service.auth.v3.Authorization/
//! Check`), so that Envoy and the gateways built on its protocol use
//! Lanyard's decisions without code changes. Served only on a unix socket
//! whose peers are checked by uid (the gateway's own, and those the
//! configuration names): the source certificate in a request is trusted
//! only because the caller is the local proxy that terminated the caller's
//! TLS (certificates are public; anyone else could name any one).
//!
//! OK carries the upstream credential as a header mutation (the caller's
//! `Authorization` removed); a denial carries the reason as a JSON body.
//! Tool lists cannot be filtered here (Envoy does not show the answer):
//! use the gateway's own listener where that matters.

mod check;

use std::path::Path;
use std::sync::Arc;

use lanyard_proto::ext_authz::authorization_server::{Authorization, AuthorizationServer};
use lanyard_proto::ext_authz::check_response::HttpResponse;
use lanyard_proto::ext_authz::header_value_option::HeaderAppendAction;
use lanyard_proto::ext_authz::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse, QueryParameter, RpcStatus,
};
use tokio::sync::watch;
use tokio_stream::StreamExt;

pub use check::{Seen, Verdict, check};

use crate::state::Gate;

/// gRPC codes of the answer.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

struct Service {
    gate: Arc<Gate>,
}

fn seen(req: CheckRequest) -> Result<Seen, tonic::Status> {
    let attrs = req
        .attributes
        .ok_or_else(|| tonic::Status::invalid_argument("attributes are required"))?;
    let http = attrs
        .request
        .and_then(|r| r.http)
        .ok_or_else(|| tonic::Status::invalid_argument("attributes.request.http is required"))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &http.headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) else {
            return Err(tonic::Status::invalid_argument(format!(
                "header {k:?} is not a valid HTTP header"
            )));
        };
        headers.append(name, value);
    }
    let body = if http.raw_body.is_empty() {
        http.body.into_bytes()
    } else {
        http.raw_body
    };
    Ok(Seen {
        method: http.method,
        path: http.path,
        host: http.host,
        headers,
        body,
        size: http.size,
        certificate: attrs.source.map(|p| p.certificate).unwrap_or_default(),
    })
}

fn answer(v: Verdict) -> CheckResponse {
    match v {
        Verdict::Allow { headers, query } => {
            let headers = headers
                .into_iter()
                .map(|(key, value)| HeaderValueOption {
                    header: Some(HeaderValue {
                        key,
                        value,
                        raw_value: vec![],
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                })
                .collect();
            CheckResponse {
                status: Some(RpcStatus {
                    code: OK,
                    message: String::new(),
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    headers_to_remove: vec!["authorization".into()],
                    query_parameters_to_set: query
                        .map(|(key, value)| QueryParameter { key, value })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })),
            }
        }
        Verdict::Deny {
            status,
            reason,
            policy_ids,
        } => CheckResponse {
            status: Some(RpcStatus {
                code: PERMISSION_DENIED,
                message: reason.clone(),
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "content-type".into(),
                        value: "application/json".into(),
                        raw_value: vec![],
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                }],
                body: serde_json::json!({"error": "denied", "reason": reason, "policy_ids": policy_ids})
                    .to_string(),
            })),
        },
    }
}

#[tonic::async_trait]
impl Authorization for Service {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let seen = seen(req.into_inner())?;
        let v = check::check(&self.gate, seen).await;
        if let Verdict::Deny { status, reason, .. } = &v {
            tracing::info!(status, %reason, "ext_authz: denied");
        }
        Ok(tonic::Response::new(answer(v)))
    }
}

/// Most connections at once, and per uid.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_UID: usize = 128;

type Conn = lanyard_uds::Limited<lanyard_uds::AuthorityShim<tokio::net::UnixStream>, u32>;

/// Serves `Check` on the unix socket `path` for peers of uid `uids` (and
/// this process's own) until `stop`. The socket's directories must be
/// writable by nobody else (as for every Lanyard socket); each connection
/// goes through the `:authority` shim, so gRPC clients of every stack
/// (Envoy's, C-core's) are understood.
pub async fn serve(
    gate: Arc<Gate>,
    path: &Path,
    uids: Vec<u32>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Other uids reach the socket only when named; their uid is checked
    // either way.
    let (mode, dir) = if uids.is_empty() {
        (0o600, lanyard_uds::SocketDir::Private)
    } else {
        (0o666, lanyard_uds::SocketDir::Shared)
    };
    let listener = lanyard_uds::bind_unix_listener(path, mode, dir)
        .await
        .map_err(|e| anyhow::anyhow!("ext_authz_socket: {e}"))?;
    let me = lanyard_uds::own_uid().unwrap_or(u32::MAX);
    let limits = lanyard_uds::ConnLimiter::new(MAX_CONNECTIONS, MAX_PER_UID);
    let shim = lanyard_uds::ShimLimits::default();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(
        move |c| -> Option<std::io::Result<Conn>> {
            let conn = match c {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            let uid = match conn.peer_cred() {
                Ok(cred) if cred.uid() == me || uids.contains(&cred.uid()) => cred.uid(),
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid(), "ext_authz: a peer of another uid refused");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(err = %e, "ext_authz: peer credentials unreadable; refused");
                    return None;
                }
            };
            match limits.try_acquire(uid) {
                Ok(permit) => Some(Ok(lanyard_uds::Limited::new(
                    lanyard_uds::AuthorityShim::new(conn, &shim),
                    permit,
                ))),
                Err(e) => {
                    tracing::warn!(uid, %e, "ext_authz: connection refused");
                    None
                }
            }
        },
    );
    let svc = AuthorizationServer::new(Service { gate });
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(err = %e, "ext_authz service stopped");
        }
    });
    Ok(())
}
