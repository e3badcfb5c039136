//! The other way a credential leaves: to an enforcement point (a gateway)
//! acting for a task, which shows the task credential its caller
//! presented. The server checks that credential itself (its own CAs and
//! JWT keys, the task's state, the revocations), so an agent that owns an
//! enforcement point's entry still cannot name an arbitrary task; the
//! enforcement point's entry must list the provider, the task's entry
//! must allow it, and the policy must permit `GetCredential` for the
//! task's workload with the enforcement point as `target`.

use lanyard_core::SpiffeId;
use lanyard_core::clock::unix_secs;
use lanyard_core::peer::{Requirements, TrustState};
use lanyard_core::revocation::RevokedKind;
use lanyard_core::task::{TaskClaims, TaskState};
use lanyard_core::x509::PeerUsage;
use lanyard_policy::{Action, TaskContext};

use super::credential::CredentialGrant;
use super::decide::denial_text;
use super::error::TaskServiceError;
use super::service::Tasks;

/// Most certificates in a presented chain.
pub const MAX_CHAIN: usize = 8;

/// The task credential an enforcement point's caller presented.
#[derive(Debug, Clone)]
pub enum TaskCredential {
    /// An X.509-SVID chain (DER, leaf first).
    X509(Vec<Vec<u8>>),
    /// A JWT-SVID, whose audience must be the enforcement point.
    Jwt(String),
}

/// A release request.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseAsk<'a> {
    /// The agent asking.
    pub agent: &'a SpiffeId,
    /// The enforcement point's entry.
    pub ep_entry_id: &'a str,
    /// What its caller presented.
    pub credential: &'a TaskCredential,
    /// The provider.
    pub provider: &'a str,
    /// Scopes asked for.
    pub scopes: &'a [String],
}

/// A release the server allows: the task, and the enforcement point.
#[derive(Debug, Clone)]
pub struct Release {
    /// The task and its entry.
    pub grant: CredentialGrant,
    /// The enforcement point's SPIFFE ID.
    pub enforcement_point: SpiffeId,
}

fn refused(why: impl std::fmt::Display) -> TaskServiceError {
    TaskServiceError::Denied(format!("credential refused: {why}"))
}

impl Tasks {
    /// Decides a release to an enforcement point (see the module).
    pub async fn authorize_release(
        &self,
        ask: ReleaseAsk<'_>,
    ) -> Result<Release, TaskServiceError> {
        let inner = &self.inner;
        let ep = self.owned_entry(ask.agent, ask.ep_entry_id)?;
        if !ep.enforcement_point {
            return Err(refused(
                "the caller is not an enforcement point (its entry needs --enforcement-point)",
            ));
        }
        lanyard_core::task::credential_allowed(&ep.task_limits, ask.provider)
            .map_err(|why| refused(format!("the enforcement point's entry: {why}")))?;
        let now = inner.clock.now();
        let snap = inner.ca.snapshot();
        let (task_id, jwt_id, serial) = match ask.credential {
            TaskCredential::X509(chain) => {
                if chain.is_empty() || chain.len() > MAX_CHAIN {
                    return Err(TaskServiceError::Invalid(format!(
                        "x509_chain: 1 to {MAX_CHAIN} certificates"
                    )));
                }
                let state =
                    TrustState::new(inner.ca.trust_domain().clone(), (*snap.authorities).clone());
                let peer = state
                    .validate(chain, PeerUsage::Client, &Requirements::default(), now)
                    .map_err(refused)?;
                let claims = peer
                    .claims
                    .ok_or_else(|| refused("the credential carries no task"))?;
                (claims.task_id, None, Some(peer.serial))
            }
            TaskCredential::Jwt(token) => {
                let v = lanyard_core::jwt::validate_jwt_svid(
                    token,
                    ep.spiffe_id.as_str(),
                    inner.ca.trust_domain(),
                    &snap.jwt_authorities,
                    now,
                )
                .map_err(|e| {
                    refused(format!("JWT-SVID (audience must be {}): {e}", ep.spiffe_id))
                })?;
                let claims = TaskClaims::from_jwt_claims(&v.claims)
                    .map_err(refused)?
                    .ok_or_else(|| refused("the credential carries no task"))?;
                let jti = v
                    .claims
                    .get("jti")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned);
                (claims.task_id, jti, None)
            }
        };
        let revocations = &inner.revocations;
        if serial.is_some_and(|s| revocations.contains(RevokedKind::Serial, &s))
            || jwt_id.is_some_and(|j| revocations.contains(RevokedKind::Jwt, &j))
        {
            return Err(refused("the credential is revoked"));
        }
        let task = self.get(task_id.as_str()).await?;
        match task.state_at(unix_secs(now)) {
            TaskState::Active => {}
            s => return Err(TaskServiceError::NotActive(task_id.to_string(), s.as_str())),
        }
        let entry = inner
            .registry
            .get(task.entry_id.as_str())
            .ok_or_else(|| refused("the task's entry is gone"))?;
        lanyard_core::task::credential_allowed(&entry.task_limits, ask.provider)
            .map_err(|why| refused(format!("the task's entry: {why}")))?;
        if let Some(policy) = inner.policies.enforced() {
            let g = &task.grant;
            let ctx = TaskContext::for_credential(
                g,
                &inner.levels,
                now,
                ask.scopes,
                ep.spiffe_id.as_str(),
            );
            // The workload is not the caller here: what its agent attested
            // (selectors, program) is not known, and a policy reading it
            // fails closed.
            let principal = lanyard_policy::Principal {
                spiffe_id: g.spiffe_id.to_string(),
                node: task.agent_id.to_string(),
                unknown: lanyard_policy::Unknown {
                    selectors: true,
                    exe_path: true,
                    exe_sha256: true,
                    node: false,
                },
                ..Default::default()
            };
            let d = policy.book.decide(&lanyard_policy::Request {
                principal: &principal,
                action: Action::GetCredential,
                resource: ask.provider,
                context: &ctx,
            });
            if !d.allowed {
                return Err(refused(denial_text(
                    Action::GetCredential,
                    ask.provider,
                    &d,
                )));
            }
        }
        Ok(Release {
            grant: CredentialGrant { task, entry },
            enforcement_point: ep.spiffe_id,
        })
    }
}
