//! Cedar policy sets: set, clear, show, check, test.

#[allow(clippy::wildcard_imports)]
use super::*;

impl AdminApi {
    pub(super) async fn set_policy_rpc(
        &self,
        req: Request<SetPolicyRequest>,
    ) -> Result<Response<types::PolicyInfo>, Status> {
        let actor = admin_actor(&req);
        let info = self.set_policy_impl(req.into_inner()).await?;
        self.audit
            .note(
                self.audit
                    .event(Kind::PolicySet)
                    .actor(actor)
                    .details(serde_json::json!({
                        "version": info.version,
                        "shadow": info.shadow,
                        "policies": info.policy_count,
                    })),
            )
            .await;
        Ok(Response::new(info))
    }

    pub(super) async fn clear_policy_rpc(
        &self,
        req: Request<ClearPolicyRequest>,
    ) -> Result<Response<ClearPolicyResponse>, Status> {
        let actor = admin_actor(&req);
        let shadow = req.into_inner().shadow;
        let version = self.policies.clear(shadow).await?;
        self.audit
            .note(
                self.audit
                    .event(Kind::PolicySet)
                    .actor(actor)
                    .details(serde_json::json!({
                        "version": version,
                        "shadow": shadow,
                        "cleared": true,
                    })),
            )
            .await;
        Ok(Response::new(ClearPolicyResponse { version }))
    }

    pub(super) async fn get_policy_rpc(
        &self,
        req: Request<GetPolicyRequest>,
    ) -> Result<Response<types::PolicyInfo>, Status> {
        self.get_policy_impl(req.into_inner())
            .await
            .map(Response::new)
    }

    pub(super) async fn check_policy_rpc(
        &self,
        req: Request<CheckPolicyRequest>,
    ) -> Result<Response<CheckPolicyResponse>, Status> {
        self.check_policy_impl(req.into_inner()).map(Response::new)
    }

    pub(super) async fn test_policy_rpc(
        &self,
        req: Request<TestPolicyRequest>,
    ) -> Result<Response<TestPolicyResponse>, Status> {
        self.test_policy_impl(req.into_inner()).map(Response::new)
    }
}
