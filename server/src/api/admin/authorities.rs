//! The signing authorities: the bundle, and rotation by hand.

#[allow(clippy::wildcard_imports)]
use super::*;

impl AdminApi {
    pub(super) async fn get_bundle_rpc(
        &self,
        _req: Request<GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        Ok(Response::new(crate::api::bundle_proto(
            &self.ca.snapshot(),
            self.ca.trust_domain(),
        )))
    }

    pub(super) async fn list_authorities_rpc(
        &self,
        _req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        Ok(Response::new(authorities(&self.ca).await))
    }

    pub(super) async fn prepare_authorities_rpc(
        &self,
        req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.ca.prepare().await.map_err(AdminError::from)?;
        self.audit_authority(Kind::AuthorityPrepared, admin_actor(&req), "")
            .await;
        Ok(Response::new(authorities(&self.ca).await))
    }

    pub(super) async fn activate_authorities_rpc(
        &self,
        req: Request<ListAuthoritiesRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        self.ca.activate().await.map_err(AdminError::from)?;
        self.audit_authority(Kind::AuthorityActivated, admin_actor(&req), "")
            .await;
        Ok(Response::new(authorities(&self.ca).await))
    }

    pub(super) async fn taint_authority_rpc(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        let actor = admin_actor(&req);
        let id = req.into_inner().id;
        self.ca.taint(&id).await.map_err(AdminError::from)?;
        self.audit_authority(Kind::AuthorityTainted, actor, &id)
            .await;
        Ok(Response::new(authorities(&self.ca).await))
    }

    pub(super) async fn revoke_authority_rpc(
        &self,
        req: Request<AuthorityRequest>,
    ) -> Result<Response<ListAuthoritiesResponse>, Status> {
        let actor = admin_actor(&req);
        let id = req.into_inner().id;
        self.ca.revoke(&id).await.map_err(AdminError::from)?;
        self.audit_authority(Kind::AuthorityRevoked, actor, &id)
            .await;
        Ok(Response::new(authorities(&self.ca).await))
    }
}
