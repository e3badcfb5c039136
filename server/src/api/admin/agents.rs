//! Attested agents: list, evict, ban.

#[allow(clippy::wildcard_imports)]
use super::*;

impl AdminApi {
    pub(super) async fn list_agents_rpc(
        &self,
        _req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let agents = self
            .agents
            .list()
            .await
            .map_err(AdminError::from)?
            .iter()
            .map(agent_msg)
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    pub(super) async fn evict_agent_rpc(
        &self,
        req: Request<AgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let actor = admin_actor(&req);
        let id = spiffe_id("spiffe_id", &req.into_inner().spiffe_id).map_err(AdminError::from)?;
        let a = self.agents.evict(&id).await.map_err(AdminError::from)?;
        tracing::info!(agent_id = %id, "agent evicted");
        let e = self.audit.event(Kind::AgentEvicted).actor(actor);
        self.audit
            .note(e.subject(id.to_string()).serial(a.serial.clone()))
            .await;
        self.revoke_agent_svid(&a, "agent evicted").await?;
        Ok(Response::new(agent_msg(&a)))
    }

    pub(super) async fn ban_agent_rpc(
        &self,
        req: Request<AgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let actor = admin_actor(&req);
        let id = spiffe_id("spiffe_id", &req.into_inner().spiffe_id).map_err(AdminError::from)?;
        let a = self.agents.ban(&id).await.map_err(AdminError::from)?;
        tracing::info!(agent_id = %id, "agent banned");
        let e = self.audit.event(Kind::AgentBanned).actor(actor);
        self.audit
            .note(e.subject(id.to_string()).serial(a.serial.clone()))
            .await;
        self.revoke_agent_svid(&a, "agent banned").await?;
        Ok(Response::new(agent_msg(&a)))
    }
}

fn agent_msg(a: &AgentRecord) -> Agent {
    Agent {
        spiffe_id: a.spiffe_id.to_string(),
        attestation_type: a.attestation_type.clone(),
        serial: a.serial.clone(),
        expires_at: i64::try_from(a.expires_at).unwrap_or(i64::MAX),
        banned: a.banned,
        attested_at: i64::try_from(a.attested_at).unwrap_or(i64::MAX),
        selectors: a.selectors.clone(),
    }
}
