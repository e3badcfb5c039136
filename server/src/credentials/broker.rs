//! The broker: hands a task a credential from a provider, for the task's
//! lifetime at most, and records the lease. The task side decides whether
//! the task may have it (active, the agent's, the entry's ceiling, the
//! policy); the provider decides what it is: a transaction token the server
//! signs, a secret it holds (only when declared `--reveal`), or a token an
//! authorization server issues for the task's JWT-SVID. Every request ends
//! in one audit record (`credential.issued` or `credential.denied`) naming
//! the task, provider, scopes and lease, never the credential.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::SpiffeId;
use lanyard_core::audit::Kind;
use lanyard_core::clock::{Clock, unix_secs};
use lanyard_fetch::Client;

use super::lease::{CredentialType, Lease, Leases, Revocable};
use super::oauth::{OauthError, TokenRequest, request_token, revoke_token};
use super::provider::{
    ClientAuth, CredentialProvider, Grant, ProviderKind, check_name, check_scopes, granted_scopes,
};
use super::registry::{CredentialError, Credentials};
use super::seal::Secret;
use super::txn_token::{TxnTokenParams, mint_txn_token};
use crate::tasks::{Caller, CredentialAsk, ReleaseAsk, TaskCredential, TaskServiceError, Tasks};

/// Lifetime of a transaction token (capped at the task's end).
pub const TXN_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Lifetime of a JWT-SVID presented to an authorization server.
pub const ASSERTION_TTL: Duration = Duration::from_secs(60);
/// Longest audience a request may name.
pub const MAX_AUDIENCE_LEN: usize = 2048;

/// Why no credential was handed out.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The task side refused (not active, not the agent's, the entry's
    /// ceiling, the policy).
    #[error(transparent)]
    Task(#[from] TaskServiceError),
    /// The provider is unknown or unusable.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The provider refuses this request.
    #[error("{0}")]
    Refused(String),
    /// The authorization server.
    #[error(transparent)]
    Oauth(#[from] OauthError),
    /// No way to reach authorization servers over TLS.
    #[error("{0}")]
    NoTrust(String),
}

/// A request for a credential, as the node API forwards it.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRequest<'a> {
    /// The agent holding the task.
    pub agent: &'a SpiffeId,
    /// The task.
    pub task_id: &'a str,
    /// The provider.
    pub name: &'a str,
    /// Scopes asked for.
    pub scopes: &'a [String],
    /// Where it will be used, or empty.
    pub audience: &'a str,
    /// The calling workload.
    pub caller: &'a Caller,
    /// An enforcement point acting for a task: its entry and the task
    /// credential its caller presented (`task_id` is then unused).
    pub release: Option<(&'a str, &'a TaskCredential)>,
}

/// A credential handed to a task.
pub struct Handed {
    /// The credential (wiped when dropped).
    pub credential: Secret,
    /// What it is.
    pub credential_type: CredentialType,
    /// Unix seconds, never after the task's end.
    pub expires_at: u64,
    /// The lease.
    pub lease_id: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// The task it belongs to.
    pub task_id: String,
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handed")
            .field("credential_type", &self.credential_type)
            .field("expires_at", &self.expires_at)
            .field("lease_id", &self.lease_id)
            .finish_non_exhaustive()
    }
}

/// The HTTP client for authorization servers, or why there is none.
pub type AsClient = Result<Client, String>;

/// The broker, behind a cheap clone.
#[derive(Clone)]
pub struct Broker {
    pub(super) inner: Arc<BrokerInner>,
}

pub(super) struct BrokerInner {
    pub(super) credentials: Credentials,
    pub(super) leases: Leases,
    pub(super) tasks: Tasks,
    /// What is revoked (a revoked workload's leases end).
    pub(super) revocations: crate::enforce::Revocations,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) http: AsClient,
    pub(super) audit: crate::audit::AuditHook,
}

/// What one issuance produced before it is recorded.
struct Minted {
    credential: Secret,
    credential_type: CredentialType,
    expires_at: u64,
    scopes: Vec<String>,
    revoke: Option<(String, Secret)>,
}

fn new_lease_id() -> Result<String, BrokerError> {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| BrokerError::Refused("no randomness for a lease ID".into()))?;
    Ok(hex::encode(id))
}

impl Broker {
    /// The broker over the providers and tasks; `http` reaches
    /// authorization servers.
    pub fn new(
        credentials: Credentials,
        leases: Leases,
        tasks: Tasks,
        revocations: crate::enforce::Revocations,
        clock: Arc<dyn Clock>,
        http: AsClient,
    ) -> Self {
        Self {
            inner: Arc::new(BrokerInner {
                credentials,
                leases,
                tasks,
                revocations,
                clock,
                http,
                audit: crate::audit::AuditHook::default(),
            }),
        }
    }

    /// Connects the audit log.
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        self.inner.audit.set(audit);
    }

    /// The leases.
    pub fn leases(&self) -> &Leases {
        &self.inner.leases
    }

    /// Hands the task a credential from the provider, or says why not
    /// (and records either).
    pub async fn get(&self, r: CredentialRequest<'_>) -> Result<Handed, BrokerError> {
        check_name(r.name).map_err(BrokerError::Invalid)?;
        check_scopes(r.scopes).map_err(|e| BrokerError::Invalid(format!("scopes: {e}")))?;
        if r.audience.len() > MAX_AUDIENCE_LEN
            || r.audience
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(BrokerError::Invalid(format!(
                "audience must be at most {MAX_AUDIENCE_LEN} characters without spaces"
            )));
        }
        match self.issue(&r).await {
            Ok((handed, lease)) => {
                self.note(Kind::CredentialIssued, &lease, "").await;
                Ok(handed)
            }
            Err(e) => {
                // The workload, where the task is known (not for a task
                // credential that did not verify).
                let spiffe_id = match self.inner.tasks.get(r.task_id).await {
                    Ok(t) if !r.task_id.is_empty() => t.grant.spiffe_id.to_string(),
                    _ => String::new(),
                };
                let lease = Lease {
                    lease_id: String::new(),
                    task_id: r.task_id.to_owned(),
                    spiffe_id,
                    agent: r.agent.to_string(),
                    provider: r.name.to_owned(),
                    credential_type: CredentialType::Bearer,
                    scopes: r.scopes.to_vec(),
                    audience: r.audience.to_owned(),
                    issued_at: 0,
                    expires_at: 0,
                    revoke: None,
                    ended_at: None,
                    end_reason: String::new(),
                    enforcement_point: String::new(),
                };
                tracing::info!(task_id = r.task_id, provider = r.name, err = %e, "credential refused");
                self.note(Kind::CredentialDenied, &lease, &e.to_string())
                    .await;
                Err(e)
            }
        }
    }

    async fn issue(&self, r: &CredentialRequest<'_>) -> Result<(Handed, Lease), BrokerError> {
        let inner = &self.inner;
        let provider = inner.credentials.get(r.name).await?;
        let scopes = match &provider.kind {
            ProviderKind::OauthExchange { scopes, .. } => {
                granted_scopes(scopes, r.scopes).map_err(BrokerError::Refused)?
            }
            ProviderKind::TxnToken { .. } => r.scopes.to_vec(),
            ProviderKind::Secret { .. } if !r.scopes.is_empty() => {
                return Err(BrokerError::Invalid(format!(
                    "credential provider {:?} holds a secret: it has no scopes",
                    r.name
                )));
            }
            ProviderKind::Secret { .. } => vec![],
        };
        let (grant, enforcement_point) = match r.release {
            None => (
                inner
                    .tasks
                    .authorize_credential(CredentialAsk {
                        agent: r.agent,
                        task_id: r.task_id,
                        provider: r.name,
                        scopes: &scopes,
                        target: r.audience,
                        caller: r.caller,
                    })
                    .await?,
                None,
            ),
            Some((ep_entry_id, credential)) => {
                let release = inner
                    .tasks
                    .authorize_release(ReleaseAsk {
                        agent: r.agent,
                        ep_entry_id,
                        credential,
                        provider: r.name,
                        scopes: &scopes,
                    })
                    .await?;
                (release.grant, Some(release.enforcement_point))
            }
        };
        let task = grant.task;
        let now = unix_secs(inner.clock.now());
        let minted = match &provider.kind {
            ProviderKind::TxnToken { audience } => {
                let m = mint_txn_token(
                    &inner.tasks.jwt_signer(),
                    &TxnTokenParams {
                        issuer: inner.tasks.jwt_issuer(),
                        audience,
                        grant: &task.grant,
                        // An enforcement point asks for the task: it is
                        // the requesting workload.
                        requester: enforcement_point.as_ref().unwrap_or(&task.grant.spiffe_id),
                        scopes: &scopes,
                        ttl: TXN_TOKEN_TTL,
                        now: inner.clock.now(),
                    },
                )?;
                Minted {
                    credential: Secret::new(m.token.into_bytes()),
                    credential_type: CredentialType::TxnToken,
                    expires_at: m.expires_at,
                    scopes,
                    revoke: None,
                }
            }
            ProviderKind::Secret { reveal, .. } => {
                if !reveal && enforcement_point.is_none() {
                    return Err(BrokerError::Refused(format!(
                        "credential provider {:?} is released only to an enforcement point acting for the task (it is not declared --reveal)",
                        r.name
                    )));
                }
                let value = inner.credentials.open(&provider)?;
                if std::str::from_utf8(value.expose()).is_err() {
                    return Err(BrokerError::Refused(format!(
                        "credential provider {:?} holds a value that is not UTF-8 text",
                        r.name
                    )));
                }
                Minted {
                    credential: value,
                    credential_type: CredentialType::Secret,
                    expires_at: task.grant.not_after,
                    scopes,
                    revoke: None,
                }
            }
            ProviderKind::OauthExchange { .. } => {
                self.exchange(&provider, &task, scopes, r.audience, now)
                    .await?
            }
        };
        let lease_id = new_lease_id()?;
        let revoke = match minted.revoke {
            Some((url, token)) => Some(Revocable {
                url,
                sealed: inner
                    .credentials
                    .seal_for_lease(token.expose(), &lease_id)?,
            }),
            None => None,
        };
        let lease = Lease {
            lease_id: lease_id.clone(),
            task_id: task.grant.task_id.to_string(),
            spiffe_id: task.grant.spiffe_id.to_string(),
            agent: r.agent.to_string(),
            provider: r.name.to_owned(),
            credential_type: minted.credential_type,
            scopes: minted.scopes.clone(),
            audience: r.audience.to_owned(),
            issued_at: now,
            expires_at: minted.expires_at,
            revoke,
            ended_at: None,
            end_reason: String::new(),
            enforcement_point: enforcement_point
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        };
        if let Err(e) = inner.leases.record(&lease).await {
            // Not on record, so nothing would end it: give the token back.
            if let Some(r) = &lease.revoke
                && let Err(why) = self.try_revoke(&lease, r).await
            {
                tracing::warn!(provider = %lease.provider, err = %why, "a token whose lease could not be recorded could not be revoked either");
            }
            return Err(e.into());
        }
        // The task may have ended while the token was being fetched: the
        // lease then ends at once (revoking what the provider can).
        if inner.tasks.get(&lease.task_id).await.is_ok_and(|t| {
            t.state_at(unix_secs(inner.clock.now())) != lanyard_core::task::TaskState::Active
        }) {
            self.end_lease(&lease.lease_id, "task ended during issuance")
                .await;
            return Err(BrokerError::Task(TaskServiceError::NotActive(
                lease.task_id.clone(),
                "ended",
            )));
        }
        let handed = Handed {
            credential: minted.credential,
            credential_type: minted.credential_type,
            expires_at: minted.expires_at,
            lease_id,
            scopes: minted.scopes,
            task_id: lease.task_id.clone(),
        };
        Ok((handed, lease))
    }

    /// Asks the provider's authorization server for a token for `task`.
    async fn exchange(
        &self,
        provider: &CredentialProvider,
        task: &lanyard_core::task::TaskRecord,
        scopes: Vec<String>,
        target: &str,
        now: u64,
    ) -> Result<Minted, BrokerError> {
        let ProviderKind::OauthExchange {
            token_url,
            audience,
            client_auth,
            revocation_url,
            grant,
            ..
        } = &provider.kind
        else {
            return Err(BrokerError::Refused(
                "not an oauth-exchange provider".into(),
            ));
        };
        let inner = &self.inner;
        let http = inner
            .http
            .as_ref()
            .map_err(|e| BrokerError::NoTrust(e.clone()))?;
        let tasks = &inner.tasks;
        // Token exchange: the subject is the root task the work is done
        // for; a delegated task acts for it (RFC 8693 `act`).
        let (subject, actor) = if *grant == Grant::TokenExchange {
            let root = tasks.root_of(task).await?;
            let subject = tasks.task_jwt(&root, audience, ASSERTION_TTL)?.0;
            let actor = if root.grant.task_id == task.grant.task_id {
                None
            } else {
                Some(tasks.task_jwt(task, audience, ASSERTION_TTL)?.0)
            };
            (subject, actor)
        } else {
            (String::new(), None)
        };
        let assertion = if *client_auth == ClientAuth::JwtSpiffe {
            Some(tasks.task_jwt(task, audience, ASSERTION_TTL)?.0)
        } else {
            None
        };
        let client_id = task.grant.spiffe_id.to_string();
        let issued = request_token(
            http,
            &TokenRequest {
                token_url,
                grant: *grant,
                scopes: &scopes,
                audience: Some(target).filter(|t| !t.is_empty()),
                subject_token: &subject,
                actor_token: actor.as_deref(),
                client_assertion: assertion.as_deref().map(|a| (a, client_id.as_str())),
            },
        )
        .await?;
        let task_end = task.grant.not_after;
        let issued_until = issued.expires_in.map(|s| now.saturating_add(s));
        let token = Secret::new(issued.access_token.into_bytes());
        // Scopes beyond those asked for are refused (and the token given
        // back where the provider can take it).
        let granted = issued.scope.unwrap_or_else(|| scopes.clone());
        // (A provider that declares no scopes leaves them to the server.)
        let extra: Vec<_> = granted
            .iter()
            .filter(|s| !scopes.is_empty() && !scopes.contains(s))
            .collect();
        let outlives = issued_until.is_none_or(|t| t > task_end);
        let refusal = if !extra.is_empty() {
            Some(format!(
                "the authorization server granted scopes not asked for ({})",
                extra
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        } else if outlives && revocation_url.is_none() {
            Some(match issued.expires_in {
                Some(s) => format!(
                    "the authorization server issued a token for {s} s, past the task's end, and provider {:?} has no revocation endpoint to end it with the task",
                    provider.name
                ),
                None => format!(
                    "the authorization server's token has no stated lifetime, and provider {:?} has no revocation endpoint to end it with the task",
                    provider.name
                ),
            })
        } else {
            None
        };
        if let Some(why) = refusal {
            if let Some(url) = revocation_url {
                let assertion = (*client_auth == ClientAuth::JwtSpiffe)
                    .then(|| tasks.task_jwt(task, audience, ASSERTION_TTL))
                    .transpose()?
                    .map(|(t, _)| t);
                if let Err(e) = revoke_token(
                    http,
                    url,
                    std::str::from_utf8(token.expose()).unwrap_or_default(),
                    assertion.as_deref().map(|a| (a, client_id.as_str())),
                )
                .await
                {
                    tracing::warn!(provider = %provider.name, err = %e, "a refused token could not be revoked");
                }
            }
            return Err(BrokerError::Refused(why));
        }
        Ok(Minted {
            expires_at: issued_until.map_or(task_end, |t| t.min(task_end)),
            credential: Secret::new(token.expose().to_vec()),
            credential_type: CredentialType::Bearer,
            scopes: granted,
            revoke: revocation_url.clone().map(|u| (u, token)),
        })
    }

    pub(super) async fn note(&self, kind: Kind, lease: &Lease, reason: &str) {
        self.inner
            .audit
            .note(|a| {
                a.event(kind)
                    .actor(if lease.enforcement_point.is_empty() {
                        lease.agent.clone()
                    } else {
                        lease.enforcement_point.clone()
                    })
                    .subject(lease.spiffe_id.clone())
                    .node(lease.agent.clone())
                    .task(lease.task_id.clone())
                    .reason(reason)
                    .details(serde_json::json!({
                        "provider": lease.provider,
                        "scopes": lease.scopes,
                        "audience": lease.audience,
                        "lease_id": lease.lease_id,
                        "type": lease.credential_type.as_str(),
                        "expires_at": lease.expires_at,
                        "enforcement_point": lease.enforcement_point,
                    }))
            })
            .await;
    }
}
