//! `lanyard.server.v1.Node`: what agents call over mTLS. This file holds
//! the service and its state; each concern is a file of its own.

use std::pin::Pin;
use std::sync::Arc;

use lanyard_core::clock::{Clock, unix_secs};
use lanyard_core::x509::{SvidError, SvidParams};
use lanyard_core::{EntryId, SpiffeId};
use lanyard_proto::server::node_server::Node;
use lanyard_proto::server::{
    AttestAgentRequest, AttestAgentResponse, BeginTaskRequest, BeginTaskResponse,
    DelegateTaskRequest, DelegateTaskResponse, EndTaskRequest, EndTaskResponse, RenewAgentRequest,
    RenewAgentResponse, ReportEnforcementRequest, ReportEnforcementResponse, RevokeHeldRequest,
    RevokeHeldResponse, SignJwtSvidRequest, SignJwtSvidResponse, SignResult, SignTaskSvidRequest,
    SignTaskSvidResponse, SignWitSvidRequest, SignWitSvidResponse, SignX509SvidsRequest,
    SignX509SvidsResponse, SyncRequest, SyncUpdate,
};
use lanyard_proto::types;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::agents::{AgentError, Agents};
use crate::attestation::AttestationError;
use crate::ca::Ca;
use crate::node_attest::{Attested, NodeAttestors};
use crate::policy::Policies;
use crate::registry::Registry;
use crate::store::{AgentRecord, StoreError};
use crate::tasks::{BeginInput, Caller, TaskSvid, Tasks};
use crate::tls::{ClientSvid, PeerInfo};
use lanyard_core::audit::{Event, Kind};

/// Most CSRs in one `SignX509Svids` call.
pub const MAX_BATCH: usize = 1000;
/// Most audiences in one JWT-SVID.
pub use lanyard_core::jwt::MAX_AUDIENCES;

mod approvals;
mod attest;
mod audit;
mod credentials;
mod enforce;
mod error;
mod metrics;
mod sign;
mod sync;
mod tasks;

pub(crate) use audit::{denied_task, unavailable};
pub use error::NodeError;
pub use metrics::{Metrics, NodeMetrics};
use metrics::{StreamGauge, attestor_label, refusal_reason};
use sign::{bundle_msg, svid_msg};

pub use crate::ca::IssuanceSettings;

/// The Node service.
#[derive(Clone)]
pub struct NodeApi {
    pub(crate) ca: Ca,
    pub(crate) registry: Registry,
    pub(crate) agents: Agents,
    pub(crate) attestors: NodeAttestors,
    pub(crate) tasks: Tasks,
    pub(crate) policies: Policies,
    pub(crate) enforce: crate::enforce::Enforcement,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: IssuanceSettings,
    /// Turns true when the server shuts down; open streams end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// What was signed.
    pub(crate) metrics: Arc<Metrics>,
    /// Where issuance and attestation are recorded.
    pub(crate) audit: crate::audit::Audit,
    /// Hands tasks credentials from providers.
    pub(crate) broker: crate::credentials::Broker,
    /// Calls held for approval.
    pub(crate) approvals: crate::approvals::Approvals,
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeApi {
    type SyncStream = SyncStream;

    #[instrument(skip_all)]
    async fn append_audit(
        &self,
        req: Request<lanyard_proto::server::AppendAuditRequest>,
    ) -> Result<Response<lanyard_proto::server::AppendAuditResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        self.append_audit_impl(&agent.spiffe_id, req.into_inner())
            .await
            .map(Response::new)
    }

    #[instrument(skip_all)]
    async fn attest_agent(
        &self,
        req: Request<AttestAgentRequest>,
    ) -> Result<Response<AttestAgentResponse>, Status> {
        self.attest_agent_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn renew_agent(
        &self,
        req: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        self.renew_agent_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        self.sync_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn sign_x509_svids(
        &self,
        req: Request<SignX509SvidsRequest>,
    ) -> Result<Response<SignX509SvidsResponse>, Status> {
        self.sign_x509_svids_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn sign_jwt_svid(
        &self,
        req: Request<SignJwtSvidRequest>,
    ) -> Result<Response<SignJwtSvidResponse>, Status> {
        self.sign_jwt_svid_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn sign_wit_svid(
        &self,
        req: Request<SignWitSvidRequest>,
    ) -> Result<Response<SignWitSvidResponse>, Status> {
        self.sign_wit_svid_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn get_credential(
        &self,
        req: Request<lanyard_proto::server::GetCredentialRequest>,
    ) -> Result<Response<lanyard_proto::server::GetCredentialResponse>, Status> {
        self.get_credential_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn begin_task(
        &self,
        req: Request<BeginTaskRequest>,
    ) -> Result<Response<BeginTaskResponse>, Status> {
        self.begin_task_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn sign_task_svid(
        &self,
        req: Request<SignTaskSvidRequest>,
    ) -> Result<Response<SignTaskSvidResponse>, Status> {
        self.sign_task_svid_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn end_task(
        &self,
        req: Request<EndTaskRequest>,
    ) -> Result<Response<EndTaskResponse>, Status> {
        self.end_task_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn delegate_task(
        &self,
        req: Request<DelegateTaskRequest>,
    ) -> Result<Response<DelegateTaskResponse>, Status> {
        self.delegate_task_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn request_approval(
        &self,
        req: Request<lanyard_proto::server::RequestApprovalRequest>,
    ) -> Result<Response<lanyard_proto::server::RequestApprovalResponse>, Status> {
        self.request_approval_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn report_enforcement(
        &self,
        req: Request<ReportEnforcementRequest>,
    ) -> Result<Response<ReportEnforcementResponse>, Status> {
        self.report_enforcement_rpc(req).await
    }

    #[instrument(skip_all)]
    async fn revoke_held(
        &self,
        req: Request<RevokeHeldRequest>,
    ) -> Result<Response<RevokeHeldResponse>, Status> {
        self.revoke_held_rpc(req).await
    }
}
