//! The gateway's node agent: decisions (`AuthorizeToolCall`, probes for
//! tool lists), call records (`RecordToolCalls`), upstream credentials for
//! the caller's task (`GetCredential` as an enforcement point) and JWT-SVID
//! validation (`ValidateJWTSVID`), all on the agent's unix socket.

use std::path::Path;

use lanyard_proto::broker::credential_broker_client::CredentialBrokerClient;
use lanyard_proto::broker::get_credential_request::TaskCredential;
use lanyard_proto::broker::{GetCredentialRequest, X509Chain as BrokerChain};
use lanyard_proto::task::authorize_tool_call_request::Credential;
use lanyard_proto::task::task_identity_client::TaskIdentityClient;
use lanyard_proto::task::{
    AuthorizeToolCallRequest, RecordToolCallsRequest, ToolCallOutcome, X509Chain,
};
use lanyard_proto::workload::ValidateJwtsvidRequest;
use lanyard_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;

use crate::identity::header;

/// What a caller presented.
#[derive(Debug, Clone)]
pub enum CallerCredential {
    /// Its X.509-SVID chain from the TLS handshake (DER, leaf first).
    X509(Vec<Vec<u8>>),
    /// A JWT-SVID it sent as a bearer token.
    Jwt(String),
}

/// One decision, as the gateway uses it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Allowed.
    pub allow: bool,
    /// Why.
    pub reason: String,
    /// The deciding policies.
    pub policy_ids: Vec<String>,
    /// The record's ID (empty for a probe).
    pub decision_id: String,
    /// Waiting for a person's approval (`allow` is false): the caller
    /// retries the same call.
    pub pending: bool,
    /// The approval request, when the call needed one.
    pub approval_id: String,
    /// When a pending request lapses, Unix seconds.
    pub approval_expires_at: i64,
}

impl Decision {
    /// A denial with its reason and nothing else.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reason: reason.into(),
            policy_ids: vec![],
            decision_id: String::new(),
            pending: false,
            approval_id: String::new(),
            approval_expires_at: 0,
        }
    }

    /// `allow`, `deny` or `pending`, for metrics and logs.
    pub fn verdict(&self) -> &'static str {
        if self.allow {
            "allow"
        } else if self.pending {
            "pending"
        } else {
            "deny"
        }
    }
}

/// A call to decide.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    /// The Lanyard tool.
    pub tool: &'a str,
    /// What it acts on.
    pub resource: &'a str,
    /// The call's arguments, a JSON object.
    pub context_json: String,
    /// Decide without recording (tool lists).
    pub probe: bool,
    /// How long to hold a call that waits for a person's approval.
    pub wait: std::time::Duration,
}

/// The outcome of a forwarded call.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The decision it follows.
    pub decision_id: String,
    /// The upstream's name.
    pub upstream: String,
    /// What was called.
    pub method: String,
    /// The upstream's status (0: not reached).
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Answer bytes.
    pub bytes_out: u64,
    /// Arrival to end of answer.
    pub latency: std::time::Duration,
    /// What went wrong, if anything.
    pub error: String,
}

/// The node agent, reached on its socket.
#[derive(Clone)]
pub struct Agent {
    tasks: TaskIdentityClient<Channel>,
    broker: CredentialBrokerClient<Channel>,
    workload: SpiffeWorkloadApiClient<Channel>,
}

/// An agent call that failed: its gRPC status, said plainly.
#[derive(Debug, thiserror::Error)]
#[error("node agent: {}: {}", .0.code(), .0.message())]
pub struct AgentError(pub tonic::Status);

impl Agent {
    /// A client of the agent at `socket` (connects lazily).
    pub fn new(socket: &Path) -> anyhow::Result<Self> {
        let ch = lanyard_uds::unix_channel(socket)?;
        Ok(Self {
            tasks: TaskIdentityClient::new(ch.clone()),
            broker: CredentialBrokerClient::new(ch.clone()),
            workload: SpiffeWorkloadApiClient::new(ch),
        })
    }

    /// Decides `ask` for a caller holding `cred`.
    pub async fn authorize(
        &self,
        cred: &CallerCredential,
        ask: Ask<'_>,
    ) -> Result<Decision, AgentError> {
        let credential = match cred {
            CallerCredential::X509(c) => Credential::X509Chain(X509Chain { certs: c.clone() }),
            CallerCredential::Jwt(t) => Credential::JwtSvid(t.clone()),
        };
        let r = self
            .tasks
            .clone()
            .authorize_tool_call(header(AuthorizeToolCallRequest {
                credential: Some(credential),
                tool: ask.tool.to_owned(),
                resource: ask.resource.to_owned(),
                context_json: ask.context_json,
                audience: String::new(),
                probe: ask.probe,
                outcome_follows: !ask.probe,
                approval_id: String::new(),
                wait_ms: u32::try_from(ask.wait.as_millis()).unwrap_or(u32::MAX),
                target_uri: String::new(),
            }))
            .await
            .map_err(AgentError)?
            .into_inner();
        Ok(Decision {
            allow: r.allow,
            reason: r.reason,
            policy_ids: r.policy_ids,
            decision_id: r.decision_id,
            pending: r.pending,
            approval_id: r.approval_id,
            approval_expires_at: r.approval_expires_at,
        })
    }

    /// Records what became of calls (once per decision); returns the
    /// decision IDs the agent did not know.
    pub async fn record(&self, outcomes: Vec<Outcome>) -> Result<Vec<String>, AgentError> {
        let outcomes = outcomes
            .into_iter()
            .map(|o| ToolCallOutcome {
                decision_id: o.decision_id,
                upstream: o.upstream,
                method: o.method,
                status: u32::from(o.status),
                bytes_in: o.bytes_in,
                bytes_out: o.bytes_out,
                latency_us: u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX),
                error: o.error,
            })
            .collect();
        self.tasks
            .clone()
            .record_tool_calls(header(RecordToolCallsRequest { outcomes }))
            .await
            .map_err(AgentError)
            .map(|r| r.into_inner().unknown)
    }

    /// A credential from `provider` for the caller's task, released to the
    /// gateway as an enforcement point.
    pub async fn credential(
        &self,
        cred: &CallerCredential,
        task_id: &str,
        provider: &str,
        scopes: &[String],
        audience: &str,
    ) -> Result<String, AgentError> {
        let task_credential = match cred {
            CallerCredential::X509(c) => {
                TaskCredential::X509Chain(BrokerChain { certs: c.clone() })
            }
            CallerCredential::Jwt(t) => TaskCredential::JwtSvid(t.clone()),
        };
        let r = self
            .broker
            .clone()
            .get_credential(header(GetCredentialRequest {
                name: provider.to_owned(),
                scopes: scopes.to_vec(),
                audience: audience.to_owned(),
                task_id: task_id.to_owned(),
                task_credential: Some(task_credential),
            }))
            .await
            .map_err(AgentError)?
            .into_inner();
        Ok(r.credential)
    }

    /// Validates a JWT-SVID for `audience`: the holder's SPIFFE ID and
    /// claims (the agent checks signature, expiry and revocation).
    pub async fn validate_jwt(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(String, serde_json::Map<String, serde_json::Value>), AgentError> {
        let r = self
            .workload
            .clone()
            .validate_jwtsvid(header(ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token.to_owned(),
            }))
            .await
            .map_err(AgentError)?
            .into_inner();
        let claims = match r
            .claims
            .as_ref()
            .map(lanyard_proto::convert::struct_to_json)
        {
            Some(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        Ok((r.spiffe_id, claims))
    }
}
