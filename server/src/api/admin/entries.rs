//! Join tokens and registration entries.

#[allow(clippy::wildcard_imports)]
use super::*;

impl AdminApi {
    pub(super) async fn create_join_token_rpc(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let actor = admin_actor(&req);
        let req = req.into_inner();
        let agent_id = optional_id("agent_id", &req.agent_id)?;
        let ttl = match req.ttl_seconds {
            0 => self.default_token_ttl,
            s if s < 0 => return Err(AdminError::Proto(ProtoError::Negative("ttl")).into()),
            s => Duration::from_secs(s.unsigned_abs()),
        };
        let t = self
            .tokens
            .issue(agent_id, ttl)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(agent_id = %t.agent_id, "join token created");
        self.audit
            .note(
                self.audit
                    .event(Kind::TokenCreated)
                    .actor(actor)
                    .subject(t.agent_id.to_string())
                    .details(serde_json::json!({"expires_at": t.expires_at})),
            )
            .await;
        Ok(Response::new(CreateJoinTokenResponse {
            token: t.token,
            agent_id: t.agent_id.to_string(),
            expires_at: i64::try_from(t.expires_at).unwrap_or(i64::MAX),
        }))
    }

    pub(super) async fn create_entry_rpc(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let actor = admin_actor(&req);
        let mut msg = req
            .into_inner()
            .entry
            .ok_or(AdminError::Proto(ProtoError::Missing("entry")))?;
        if msg.id.is_empty() {
            msg.id = Self::new_entry_id()?.to_string();
        }
        msg.revision = 0;
        let since_epoch = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        msg.created_at = i64::try_from(since_epoch.as_secs()).unwrap_or(0);
        msg.created_at_nanos = since_epoch.subsec_nanos();
        let entry = RegistrationEntry::try_from(msg).map_err(AdminError::from)?;
        self.check_levels(&entry)?;
        let entry = self
            .registry
            .create(entry)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(entry_id = %entry.id, spiffe_id = %entry.spiffe_id, "entry created");
        self.audit
            .note(entry_event(&self.audit, Kind::EntryCreated, actor, &entry))
            .await;
        Ok(Response::new(types::Entry::from(&entry)))
    }

    pub(super) async fn update_entry_rpc(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let actor = admin_actor(&req);
        let msg = req
            .into_inner()
            .entry
            .ok_or(AdminError::Proto(ProtoError::Missing("entry")))?;
        let entry = RegistrationEntry::try_from(msg).map_err(AdminError::from)?;
        self.check_levels(&entry)?;
        let entry = self
            .registry
            .update(entry)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(entry_id = %entry.id, revision = entry.revision, "entry updated");
        self.audit
            .note(entry_event(&self.audit, Kind::EntryUpdated, actor, &entry))
            .await;
        Ok(Response::new(types::Entry::from(&entry)))
    }

    pub(super) async fn get_entry_rpc(
        &self,
        req: Request<GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let id = req.into_inner().id;
        let e = self
            .registry
            .get(&id)
            .ok_or(AdminError::Registry(RegistryError::NotFound(id)))?;
        Ok(Response::new(types::Entry::from(&e)))
    }

    pub(super) async fn list_entries_rpc(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let req = req.into_inner();
        let sid = optional_id("spiffe_id", &req.spiffe_id)?;
        let pid = optional_id("parent_id", &req.parent_id)?;
        let entries = self
            .registry
            .list(sid.as_ref(), pid.as_ref())
            .iter()
            .map(types::Entry::from)
            .collect();
        Ok(Response::new(ListEntriesResponse { entries }))
    }

    pub(super) async fn delete_entry_rpc(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let actor = admin_actor(&req);
        let e = self
            .registry
            .delete(&req.into_inner().id)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(entry_id = %e.id, "entry deleted");
        self.audit
            .note(entry_event(&self.audit, Kind::EntryDeleted, actor, &e))
            .await;
        self.enforce.entry_deleted(&e.spiffe_id).await?;
        Ok(Response::new(DeleteEntryResponse {
            entry: Some(types::Entry::from(&e)),
        }))
    }
}

/// The audit record of an entry change.
fn entry_event(
    audit: &crate::audit::Audit,
    kind: Kind,
    actor: String,
    e: &RegistrationEntry,
) -> lanyard_core::audit::Event {
    audit
        .event(kind)
        .actor(actor)
        .subject(e.spiffe_id.to_string())
        .node(e.parent_id.to_string())
        .details(serde_json::json!({
            "entry_id": e.id.to_string(),
            "revision": e.revision,
            "selectors": e.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "require_task": e.require_task,
        }))
}
