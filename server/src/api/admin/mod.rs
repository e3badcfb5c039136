//! `lanyard.admin.v1.Admin`: entry, token, agent and bundle management on a
//! local unix socket. Only root and the server's own user may call it.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::{EntryId, RegistrationEntry, SpiffeId};
use lanyard_proto::admin::admin_server::Admin;
use lanyard_proto::admin::{
    AddQuarantineRequest, ListQuarantinesRequest, ListQuarantinesResponse, ListRevocationsRequest,
    ListRevocationsResponse, QuarantineRequest, RevokeSvidRequest, RevokeSvidResponse,
};
use lanyard_proto::admin::{
    Agent, AgentRequest, Authority, AuthorityRequest, CreateEntryRequest, CreateJoinTokenRequest,
    CreateJoinTokenResponse, DeleteEntryRequest, DeleteEntryResponse, GetBundleRequest,
    GetEntryRequest, ListAgentsRequest, ListAgentsResponse, ListAuthoritiesRequest,
    ListAuthoritiesResponse, ListEntriesRequest, ListEntriesResponse, UpdateEntryRequest,
};
use lanyard_proto::admin::{
    CheckPolicyRequest, CheckPolicyResponse, ClearPolicyRequest, ClearPolicyResponse,
    GetPolicyRequest, ListTasksRequest, ListTasksResponse, SetPolicyRequest, TaskRequest,
    TestPolicyRequest, TestPolicyResponse,
};
use lanyard_proto::convert::{ProtoError, spiffe_id};
use lanyard_proto::types;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tracing::instrument;

use lanyard_core::audit::Kind;
use lanyard_proto::admin::{AuditKeyResponse, AuditLine, GetAuditKeyRequest, ReadAuditRequest};

use crate::agents::{AgentError, Agents};
use crate::attestation::{AttestationError, JoinTokens};
use crate::ca::{Ca, CaError};
use crate::registry::{Registry, RegistryError};
use crate::store::CaKeyState;
use crate::store::{AgentRecord, StoreError};

mod agents;
mod approvals;
mod audit;
mod authorities;
mod credentials;
mod enforce;
mod entries;
mod policy;
mod tasks;

pub(crate) use enforce::quarantine_msg;

/// Why an admin call failed. Mapped to a status in one place below.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// A registry rule refused it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Token issuance failed.
    #[error(transparent)]
    Token(#[from] AttestationError),
    /// An agent life-cycle change was refused.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// An authority operation was refused or failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match &e {
            AdminError::Proto(_) | AdminError::Registry(RegistryError::Invalid(_)) => {
                Status::invalid_argument(e.to_string())
            }
            AdminError::Token(
                AttestationError::AgentId(_)
                | AttestationError::CollidesWithEntry(_)
                | AttestationError::BadTtl,
            )
            | AdminError::Registry(RegistryError::AgentId(_)) => {
                Status::invalid_argument(e.to_string())
            }
            AdminError::Agent(AgentError::Banned(_)) => Status::failed_precondition(format!(
                "{e}; a ban is permanent and eviction does not lift it"
            )),
            AdminError::Registry(RegistryError::Duplicate(_)) => {
                Status::already_exists(e.to_string())
            }
            AdminError::Registry(RegistryError::NotFound(_))
            | AdminError::Agent(AgentError::Unknown(_))
            | AdminError::Ca(CaError::UnknownKey(_)) => Status::not_found(e.to_string()),
            AdminError::Ca(
                CaError::NothingPrepared | CaError::ActiveKey(_) | CaError::NotTainted(_),
            ) => Status::failed_precondition(e.to_string()),
            _ => {
                tracing::error!(err = %e, "admin API internal error");
                Status::internal(e.to_string())
            }
        }
    }
}

/// The admin service.
#[derive(Clone)]
pub struct AdminApi {
    pub(crate) ca: Ca,
    pub(crate) registry: Registry,
    pub(crate) agents: Agents,
    pub(crate) tokens: JoinTokens,
    pub(crate) tasks: crate::tasks::Tasks,
    pub(crate) policies: crate::policy::Policies,
    pub(crate) enforce: crate::enforce::Enforcement,
    pub(crate) credentials: crate::credentials::Credentials,
    /// Credentials handed to tasks.
    pub(crate) leases: crate::credentials::Leases,
    /// Calls held for approval.
    pub(crate) approvals: crate::approvals::Approvals,
    /// The operator console, when served.
    pub(crate) console: Option<crate::console::Console>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) default_token_ttl: Duration,
    /// Where admin changes are recorded.
    pub(crate) audit: crate::audit::Audit,
    /// Turns true when the server shuts down (ends followed reads).
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
}

impl AdminApi {
    /// An entry's highest sensitivity must be one of the configured levels
    /// (a name the levels do not hold would deny every task of the entry).
    #[allow(clippy::result_large_err)]
    fn check_levels(&self, entry: &RegistrationEntry) -> Result<(), Status> {
        match &entry.task_limits.max_sensitivity {
            Some(level) => self
                .tasks
                .levels()
                .rank(level)
                .map(|_| ())
                .map_err(|e| Status::invalid_argument(format!("max sensitivity: {e}"))),
            None => Ok(()),
        }
    }
}

/// Rejects callers whose uid is neither root nor the server's own.
#[allow(clippy::result_large_err)]
pub fn check_peer_uid(req: Request<()>) -> Result<Request<()>, Status> {
    let own = lanyard_uds::own_uid();
    let uid = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    match uid {
        Some(u) if u == 0 || Some(u) == own => Ok(req),
        Some(u) => {
            tracing::warn!(uid = u, "admin call refused");
            Err(Status::permission_denied(format!(
                "uid {u} may not use the admin API"
            )))
        }
        None => Err(Status::permission_denied("caller credentials unavailable")),
    }
}

fn optional_id(field: &'static str, s: &str) -> Result<Option<SpiffeId>, AdminError> {
    if s.is_empty() {
        Ok(None)
    } else {
        Ok(Some(spiffe_id(field, s)?))
    }
}

async fn authorities(ca: &Ca) -> ListAuthoritiesResponse {
    let secs = |t| i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
    ListAuthoritiesResponse {
        authorities: ca
            .list()
            .await
            .into_iter()
            .map(|a| Authority {
                id: a.id,
                kind: a.kind.into(),
                state: match a.state {
                    CaKeyState::Prepared => "prepared",
                    CaKeyState::Active => "active",
                    CaKeyState::Old => "old",
                }
                .into(),
                tainted: a.tainted,
                not_before: secs(a.not_before),
                not_after: secs(a.not_after),
                server_id: a.owner,
            })
            .collect(),
    }
}

fn caller_uid<T>(req: &Request<T>) -> Option<u32> {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid())
}

impl AdminApi {
    /// Records an authority change (`id` empty: this server's own next or
    /// active authority; the active one is named in the details).
    async fn audit_authority(&self, kind: Kind, actor: String, id: &str) {
        let snap = self.ca.snapshot();
        let e = self
            .audit
            .event(kind)
            .actor(actor)
            .details(serde_json::json!({
                "authority_id": id,
                "active": snap.active.info().subject_key_id,
                "server_id": self.ca.server_id(),
            }));
        self.audit.note(e).await;
    }

    /// Revokes a banned or evicted agent's SVIDs (current and previous).
    async fn revoke_agent_svid(&self, a: &AgentRecord, reason: &str) -> Result<(), Status> {
        let now = unix_secs(self.clock.now());
        let items = std::iter::once(&a.serial)
            .chain(a.previous_serial.as_ref())
            .filter(|s| !s.is_empty())
            .map(|s| lanyard_core::revocation::Revocation {
                kind: lanyard_core::revocation::RevokedKind::Serial,
                value: s.clone(),
                revoked_at: now,
                expires_at: a.expires_at.max(now + 1),
                reason: reason.to_owned(),
                issuer: None,
            })
            .collect();
        self.enforce
            .revocations
            .revoke(items)
            .await
            .map_err(crate::enforce::EnforceError::from)?;
        Ok(())
    }

    fn new_entry_id() -> Result<EntryId, AdminError> {
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b)
            .map_err(|_| AdminError::Store(StoreError::backend("random source failed")))?;
        Ok(EntryId::from_random(b))
    }
}

/// The stream `ReadAudit` answers with.
type ReadAuditStream = tokio_stream::wrappers::ReceiverStream<Result<AuditLine, Status>>;

#[tonic::async_trait]
impl Admin for AdminApi {
    type ReadAuditStream = ReadAuditStream;

    #[instrument(skip_all)]
    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        self.create_join_token_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        self.create_entry_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        self.update_entry_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_entry(
        &self,
        req: Request<GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        self.get_entry_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        self.list_entries_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        self.delete_entry_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn list_agents(
        &self,
        _req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        self.list_agents_rpc(_req).await
    }

    #[instrument(skip_all)]
    async fn evict_agent(&self, req: Request<AgentRequest>) -> Result<Response<Agent>, Status> {
        self.evict_agent_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn ban_agent(&self, req: Request<AgentRequest>) -> Result<Response<Agent>, Status> {
        self.ban_agent_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_bundle(
        &self,
        _req: Request<GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        self.get_bundle_rpc(_req).await
    }

    #[instrument(skip_all)]
    async fn list_authorities(
        &self,
        _req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.list_authorities_rpc(_req).await
    }

    #[instrument(skip_all)]
    async fn prepare_authorities(
        &self,
        req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.prepare_authorities_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn activate_authorities(
        &self,
        req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.activate_authorities_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn taint_authority(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.taint_authority_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn revoke_authority(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.revoke_authority_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn set_policy(
        &self,
        req: Request<SetPolicyRequest>,
    ) -> Result<Response<types::PolicyInfo>, Status> {
        self.set_policy_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn clear_policy(
        &self,
        req: Request<ClearPolicyRequest>,
    ) -> Result<Response<ClearPolicyResponse>, Status> {
        self.clear_policy_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_policy(
        &self,
        req: Request<GetPolicyRequest>,
    ) -> Result<Response<types::PolicyInfo>, Status> {
        self.get_policy_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn check_policy(
        &self,
        req: Request<CheckPolicyRequest>,
    ) -> Result<Response<CheckPolicyResponse>, Status> {
        self.check_policy_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn test_policy(
        &self,
        req: Request<TestPolicyRequest>,
    ) -> Result<Response<TestPolicyResponse>, Status> {
        self.test_policy_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.list_tasks_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_task(
        &self,
        req: Request<TaskRequest>,
    ) -> Result<Response<types::TaskInfo>, Status> {
        self.get_task_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn revoke_task(
        &self,
        req: Request<TaskRequest>,
    ) -> Result<Response<types::TaskInfo>, Status> {
        self.revoke_task_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn revoke_svid(
        &self,
        req: Request<RevokeSvidRequest>,
    ) -> Result<Response<RevokeSvidResponse>, Status> {
        self.revoke_svid_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn list_revocations(
        &self,
        _req: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        self.list_revocations_rpc(_req).await
    }

    #[instrument(skip_all)]
    async fn add_quarantine(
        &self,
        req: Request<AddQuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        self.add_quarantine_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn list_quarantines(
        &self,
        req: Request<ListQuarantinesRequest>,
    ) -> Result<Response<ListQuarantinesResponse>, Status> {
        self.list_quarantines_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_quarantine(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        self.get_quarantine_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn release_quarantine(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        self.release_quarantine_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn confirm_quarantine(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        self.confirm_quarantine_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn read_audit(
        &self,
        req: Request<ReadAuditRequest>,
    ) -> Result<Response<Self::ReadAuditStream>, Status> {
        self.read_audit_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_audit_key(
        &self,
        _req: Request<GetAuditKeyRequest>,
    ) -> Result<Response<AuditKeyResponse>, Status> {
        self.get_audit_key_rpc(_req).await
    }

    async fn add_credential(
        &self,
        req: Request<lanyard_proto::admin::AddCredentialRequest>,
    ) -> Result<Response<lanyard_proto::admin::CredentialProvider>, Status> {
        self.add_credential_rpc(req).await
    }

    async fn list_credentials(
        &self,
        _req: Request<lanyard_proto::admin::ListCredentialsRequest>,
    ) -> Result<Response<lanyard_proto::admin::ListCredentialsResponse>, Status> {
        self.list_credentials_rpc().await
    }

    async fn get_credential_provider(
        &self,
        req: Request<lanyard_proto::admin::CredentialProviderRequest>,
    ) -> Result<Response<lanyard_proto::admin::CredentialProvider>, Status> {
        self.get_credential_provider_rpc(req).await
    }

    async fn rotate_credential(
        &self,
        req: Request<lanyard_proto::admin::RotateCredentialRequest>,
    ) -> Result<Response<lanyard_proto::admin::CredentialProvider>, Status> {
        self.rotate_credential_rpc(req).await
    }

    async fn delete_credential(
        &self,
        req: Request<lanyard_proto::admin::CredentialProviderRequest>,
    ) -> Result<Response<lanyard_proto::admin::CredentialProvider>, Status> {
        self.delete_credential_rpc(req).await
    }

    async fn list_leases(
        &self,
        req: Request<lanyard_proto::admin::ListLeasesRequest>,
    ) -> Result<Response<lanyard_proto::admin::ListLeasesResponse>, Status> {
        self.list_leases_rpc(req).await
    }

    async fn list_approvals(
        &self,
        req: Request<lanyard_proto::admin::ListApprovalsRequest>,
    ) -> Result<Response<lanyard_proto::admin::ListApprovalsResponse>, Status> {
        self.list_approvals_rpc(req)
    }

    async fn get_approval(
        &self,
        req: Request<lanyard_proto::admin::ApprovalRequest>,
    ) -> Result<Response<lanyard_proto::types::Approval>, Status> {
        self.get_approval_rpc(req)
    }

    async fn answer_approval(
        &self,
        req: Request<lanyard_proto::admin::AnswerApprovalRequest>,
    ) -> Result<Response<lanyard_proto::types::Approval>, Status> {
        self.answer_approval_rpc(req).await
    }

    async fn console_login(
        &self,
        req: Request<lanyard_proto::admin::ConsoleLoginRequest>,
    ) -> Result<Response<lanyard_proto::admin::ConsoleLoginResponse>, Status> {
        self.console_login_rpc(req)
    }
}

/// The admin caller, as audit records name it.
fn admin_actor<T>(req: &Request<T>) -> String {
    crate::audit::Actor::Admin(caller_uid(req)).name()
}
