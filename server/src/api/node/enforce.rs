//! What enforcement points report through their agents: denials and
//! held SVIDs to revoke.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A reported denial as the domain takes it.
fn denial(d: lanyard_proto::server::Denial) -> crate::enforce::Denial {
    crate::enforce::Denial {
        task_id: d.task_id,
        spiffe_id: d.spiffe_id,
        tool: d.tool,
        reason: d.reason,
        quarantine: d.quarantine,
        decision_id: d.decision_id,
        enforcement_point: d.enforcement_point,
        quarantine_entry: d.quarantine_entry,
        resource: d.resource,
        context_json: d.context_json,
    }
}

impl NodeApi {
    /// `report enforcement` (see the `Node` service).
    pub(super) async fn report_enforcement_rpc(
        &self,
        req: Request<ReportEnforcementRequest>,
    ) -> Result<Response<ReportEnforcementResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let denials = req.into_inner().denials;
        if denials.len() > MAX_BATCH {
            return Err(NodeError::BatchTooLarge.into());
        }
        let denials = denials.into_iter().map(denial).collect();
        self.enforce
            .report_denials(&agent.spiffe_id, denials)
            .await
            .map_err(|e| {
                tracing::error!(err = %e, "cannot record reported denials");
                Status::internal("cannot record the report")
            })?;
        Ok(Response::new(ReportEnforcementResponse {}))
    }

    /// `revoke held` (see the `Node` service).
    pub(super) async fn revoke_held_rpc(
        &self,
        req: Request<RevokeHeldRequest>,
    ) -> Result<Response<RevokeHeldResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        if req.certs.len() > MAX_BATCH {
            return Err(NodeError::BatchTooLarge.into());
        }
        let reason: String = if req.reason.is_empty() {
            "revoked by its agent".into()
        } else {
            req.reason.chars().take(256).collect()
        };
        let snap = self.ca.snapshot();
        let now = self.clock.now();
        let owned = self.registry.for_agent(&agent.spiffe_id);
        let mut items = Vec::new();
        for der in &req.certs {
            // Only SVIDs this CA set issued for one of the agent's entries:
            // an agent cannot revoke another node's workloads.
            let id = lanyard_core::x509::validate_x509_svid(
                std::slice::from_ref(der),
                self.ca.trust_domain(),
                &snap.authorities,
                lanyard_core::x509::PeerUsage::Client,
                now,
            )
            .map_err(|e| Status::invalid_argument(format!("certificate: {e}")))?;
            if !owned.iter().any(|e| e.spiffe_id == id) {
                return Err(Status::permission_denied(format!(
                    "{id} is not an identity of this agent's entries"
                )));
            }
            let info = lanyard_core::x509::CertInfo::parse(der)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            items.push(lanyard_core::revocation::Revocation {
                kind: lanyard_core::revocation::RevokedKind::Serial,
                value: info.serial,
                revoked_at: unix_secs(now),
                expires_at: unix_secs(info.not_after),
                reason: reason.clone(),
                issuer: info.authority_key_id,
            });
        }
        let n = self.enforce.revocations.revoke(items).await.map_err(|e| {
            tracing::error!(err = %e, "cannot store revocations");
            Status::internal("cannot store the revocations")
        })?;
        Ok(Response::new(RevokeHeldResponse {
            revoked: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }
}
