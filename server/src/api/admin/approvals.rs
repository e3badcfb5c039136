//! The admin API's approval calls: `approval list|show|approve|deny`.

use lanyard_proto::admin::{
    AnswerApprovalRequest, ApprovalRequest, ConsoleLoginRequest, ConsoleLoginResponse,
    ListApprovalsRequest, ListApprovalsResponse,
};
use lanyard_proto::types;
use tonic::{Request, Response, Status};

use super::{AdminApi, admin_actor};
use crate::approvals::AnswerError;

impl From<AnswerError> for Status {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::NotFound(_) => Status::not_found(e.to_string()),
            AnswerError::NotAllowed(_) => Status::permission_denied(e.to_string()),
            AnswerError::NotPending(..) => Status::failed_precondition(e.to_string()),
            AnswerError::Invalid(_) => Status::invalid_argument(e.to_string()),
            AnswerError::Store(_) => {
                tracing::error!(err = %e, "approval store error");
                Status::unavailable("the approval store is unavailable")
            }
        }
    }
}

impl AdminApi {
    pub(super) fn console_login_rpc(
        &self,
        req: Request<ConsoleLoginRequest>,
    ) -> Result<Response<ConsoleLoginResponse>, Status> {
        let via = admin_actor(&req);
        let approver = Some(req.into_inner().approver).filter(|a| !a.is_empty());
        let Some(console) = &self.console else {
            return Err(Status::failed_precondition(
                "the console is off: start the server with --console-bind (console_bind)",
            ));
        };
        let url = console
            .login_link(approver, via)
            .map_err(Status::permission_denied)?;
        Ok(Response::new(ConsoleLoginResponse {
            url,
            expires_in_seconds: i64::try_from(crate::console::LINK_TTL.as_secs()).unwrap_or(300),
        }))
    }

    pub(super) fn list_approvals_rpc(
        &self,
        req: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        let all = req.into_inner().all;
        Ok(Response::new(ListApprovalsResponse {
            approvals: self
                .approvals
                .list(all)
                .iter()
                .map(types::Approval::from)
                .collect(),
        }))
    }

    pub(super) fn get_approval_rpc(
        &self,
        req: Request<ApprovalRequest>,
    ) -> Result<Response<types::Approval>, Status> {
        let id = req.into_inner().id;
        self.approvals
            .get(&id)
            .map(|r| Response::new(types::Approval::from(&r)))
            .ok_or_else(|| Status::not_found(format!("approval {id} not found")))
    }

    pub(super) async fn answer_approval_rpc(
        &self,
        req: Request<AnswerApprovalRequest>,
    ) -> Result<Response<types::Approval>, Status> {
        let via = admin_actor(&req);
        let r = req.into_inner();
        if r.approver.is_empty() {
            return Err(Status::invalid_argument(
                "approver: the declared approver answering is required (--as NAME)",
            ));
        }
        let rec = self
            .approvals
            .answer(&r.id, r.approve, &r.approver, &r.reason, &via)
            .await?;
        Ok(Response::new(types::Approval::from(&rec)))
    }
}
