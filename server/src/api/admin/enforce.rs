//! The admin API's revocation and quarantine calls (the `Admin` trait impl
//! in the service (`mod.rs`) forwards here): `svid revoke`, the revocation list and
//! CRLs, `quarantine add|list|show|release`.

use lanyard_core::clock::unix_secs;
use lanyard_core::revocation::{Revocation, RevokedKind, is_serial, normalize_serial};
use lanyard_proto::admin::{
    AddQuarantineRequest, ListQuarantinesRequest, ListQuarantinesResponse, ListRevocationsResponse,
    QuarantineRequest, RevokeSvidRequest, RevokeSvidResponse,
};
use lanyard_proto::types;
use tonic::Status;

use super::AdminApi;
#[allow(clippy::wildcard_imports)]
use super::*;
use crate::enforce::{EnforceError, QuarantineInput, QuarantineRecord, Scope};

impl From<EnforceError> for Status {
    fn from(e: EnforceError) -> Self {
        match e {
            EnforceError::Invalid(_) => Status::invalid_argument(e.to_string()),
            EnforceError::Task(t) => Status::from(t),
            EnforceError::Store(_) => {
                tracing::error!(err = %e, "enforcement store error");
                Status::internal("internal error")
            }
        }
    }
}

/// A quarantine record on the wire.
pub(crate) fn quarantine_msg(q: &QuarantineRecord) -> types::Quarantine {
    let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    types::Quarantine {
        id: q.id.clone(),
        spiffe_id: q.spiffe_id.clone(),
        node: q.node.clone().unwrap_or_default(),
        task_id: q.task_id.clone().unwrap_or_default(),
        scope: q.scope.as_str().into(),
        reason: q.reason.clone(),
        source: q.source.clone(),
        reported_by: q.reported_by.clone(),
        created_at: secs(q.created_at),
        released_at: q.released_at.map_or(0, secs),
        released_by: q.released_by.clone().unwrap_or_default(),
        pending: q.pending,
    }
}

fn reason_or(reason: &str, default: &str) -> Result<String, Status> {
    if reason.len() > 512 {
        return Err(Status::invalid_argument("reason: at most 512 bytes"));
    }
    Ok(if reason.is_empty() {
        default.to_owned()
    } else {
        reason.to_owned()
    })
}

impl AdminApi {
    pub(crate) async fn revoke_svid_impl(
        &self,
        r: RevokeSvidRequest,
    ) -> Result<RevokeSvidResponse, Status> {
        let reason = reason_or(&r.reason, "revoked by operator")?;
        let given = [&r.serial, &r.spiffe_id, &r.jwt_id]
            .iter()
            .filter(|s| !s.is_empty())
            .count();
        if given != 1 {
            return Err(Status::invalid_argument(
                "give exactly one of a serial, a SPIFFE ID or a JWT ID",
            ));
        }
        if !r.spiffe_id.is_empty() {
            let id = lanyard_proto::convert::spiffe_id("spiffe_id", &r.spiffe_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let rev = self.enforce.revoke_spiffe_id(&id, &reason).await?;
            return Ok(RevokeSvidResponse {
                revocation: Some(types::Revocation::from(&rev)),
            });
        }
        let (kind, value) = if r.jwt_id.is_empty() {
            if !is_serial(&r.serial) {
                return Err(Status::invalid_argument(format!(
                    "serial {:?} is not a hex serial number",
                    r.serial
                )));
            }
            (RevokedKind::Serial, normalize_serial(&r.serial))
        } else {
            if r.jwt_id.len() > 256 {
                return Err(Status::invalid_argument("jwt_id: at most 256 bytes"));
            }
            (RevokedKind::Jwt, r.jwt_id)
        };
        // What it names was issued by an unknown CA until an unknown time:
        // a serial is listed in the CRL of every CA of this server, and
        // either is kept as long as the longest SVID could live.
        let now = unix_secs(self.clock.now());
        let rev = Revocation {
            kind,
            value,
            revoked_at: now,
            expires_at: now + lanyard_core::entry::MAX_SVID_TTL.as_secs(),
            reason,
            issuer: None,
        };
        self.enforce
            .revocations
            .revoke(vec![rev.clone()])
            .await
            .map_err(EnforceError::from)?;
        Ok(RevokeSvidResponse {
            revocation: Some(types::Revocation::from(&rev)),
        })
    }

    pub(crate) fn list_revocations_impl(&self) -> ListRevocationsResponse {
        ListRevocationsResponse {
            revocations: self
                .enforce
                .revocations
                .items()
                .iter()
                .map(types::Revocation::from)
                .collect(),
            crls: self.enforce.revocations.crls(),
        }
    }

    pub(crate) async fn add_quarantine_impl(
        &self,
        r: AddQuarantineRequest,
        uid: Option<u32>,
    ) -> Result<types::Quarantine, Status> {
        let reason = reason_or(&r.reason, "quarantined by operator")?;
        let reported_by = uid.map_or_else(|| "admin".to_owned(), |u| format!("uid:{u}"));
        let input = if r.task_id.is_empty() {
            if r.spiffe_id.is_empty() {
                return Err(Status::invalid_argument("give a SPIFFE ID or a task ID"));
            }
            let node = if r.node.is_empty() {
                None
            } else {
                Some(
                    lanyard_proto::convert::spiffe_id("node", &r.node)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?
                        .to_string(),
                )
            };
            QuarantineInput {
                spiffe_id: r.spiffe_id,
                scope: if node.is_some() {
                    Scope::Instance
                } else {
                    Scope::Entry
                },
                node,
                task_id: None,
                reason,
                source: "operator".into(),
                reported_by,
                pending: false,
            }
        } else {
            let task = self.tasks.get(&r.task_id).await.map_err(Status::from)?;
            QuarantineInput {
                spiffe_id: task.grant.spiffe_id.to_string(),
                node: Some(task.agent_id.to_string()),
                task_id: Some(r.task_id),
                scope: Scope::Instance,
                reason,
                source: "operator".into(),
                reported_by,
                pending: false,
            }
        };
        Ok(quarantine_msg(&self.enforce.quarantine(input).await?))
    }

    pub(crate) fn list_quarantines_impl(
        &self,
        r: ListQuarantinesRequest,
    ) -> ListQuarantinesResponse {
        ListQuarantinesResponse {
            quarantines: self
                .enforce
                .quarantines
                .list()
                .iter()
                .filter(|q| r.all || q.active())
                .map(quarantine_msg)
                .collect(),
        }
    }

    pub(crate) fn get_quarantine_impl(
        &self,
        r: &QuarantineRequest,
    ) -> Result<types::Quarantine, Status> {
        self.enforce
            .quarantines
            .get(&r.id)
            .map(|q| quarantine_msg(&q))
            .ok_or_else(|| Status::not_found(format!("no quarantine {}", r.id)))
    }

    pub(crate) async fn release_quarantine_impl(
        &self,
        r: QuarantineRequest,
        uid: Option<u32>,
    ) -> Result<types::Quarantine, Status> {
        let by = uid.map_or_else(|| "admin".to_owned(), |u| format!("uid:{u}"));
        self.enforce
            .quarantines
            .release(&r.id, &by)
            .await
            .map_err(EnforceError::from)?
            .map(|q| quarantine_msg(&q))
            .ok_or_else(|| Status::not_found(format!("no quarantine {}", r.id)))
    }

    pub(crate) async fn confirm_quarantine_impl(
        &self,
        r: QuarantineRequest,
        uid: Option<u32>,
    ) -> Result<types::Quarantine, Status> {
        let by = uid.map_or_else(|| "admin".to_owned(), |u| format!("uid:{u}"));
        let q = self
            .enforce
            .confirm_quarantine(&r.id, &by)
            .await?
            .ok_or_else(|| Status::not_found(format!("no quarantine {}", r.id)))?;
        if !q.active() {
            return Err(Status::failed_precondition(format!(
                "quarantine {} was released",
                r.id
            )));
        }
        Ok(quarantine_msg(&q))
    }
}

impl AdminApi {
    pub(super) async fn revoke_svid_rpc(
        &self,
        req: Request<RevokeSvidRequest>,
    ) -> Result<Response<RevokeSvidResponse>, Status> {
        self.revoke_svid_impl(req.into_inner())
            .await
            .map(Response::new)
    }

    pub(super) async fn list_revocations_rpc(
        &self,
        _req: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        Ok(Response::new(self.list_revocations_impl()))
    }

    pub(super) async fn add_quarantine_rpc(
        &self,
        req: Request<AddQuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        let uid = caller_uid(&req);
        self.add_quarantine_impl(req.into_inner(), uid)
            .await
            .map(Response::new)
    }

    pub(super) async fn list_quarantines_rpc(
        &self,
        req: Request<ListQuarantinesRequest>,
    ) -> Result<Response<ListQuarantinesResponse>, Status> {
        Ok(Response::new(self.list_quarantines_impl(req.into_inner())))
    }

    pub(super) async fn get_quarantine_rpc(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        self.get_quarantine_impl(&req.into_inner())
            .map(Response::new)
    }

    pub(super) async fn release_quarantine_rpc(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        let uid = caller_uid(&req);
        let q = self.release_quarantine_impl(req.into_inner(), uid).await?;
        self.audit
            .note(
                self.audit
                    .event(Kind::QuarantineReleased)
                    .actor(crate::audit::Actor::Admin(uid).name())
                    .subject(q.spiffe_id.clone())
                    .node(q.node.clone())
                    .task(q.task_id.clone())
                    .details(serde_json::json!({"quarantine_id": q.id})),
            )
            .await;
        Ok(Response::new(q))
    }

    pub(super) async fn confirm_quarantine_rpc(
        &self,
        req: Request<QuarantineRequest>,
    ) -> Result<Response<types::Quarantine>, Status> {
        let uid = caller_uid(&req);
        let q = self.confirm_quarantine_impl(req.into_inner(), uid).await?;
        Ok(Response::new(q))
    }
}
