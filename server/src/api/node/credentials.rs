//! GetCredential through the node API: a credential from a provider for a
//! task the calling agent holds.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::credentials::CredentialRequest;
use lanyard_proto::server::{GetCredentialRequest, GetCredentialResponse};

impl NodeApi {
    /// `get credential` (see the `Node` service).
    pub(super) async fn get_credential_rpc(
        &self,
        req: Request<GetCredentialRequest>,
    ) -> Result<Response<GetCredentialResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let r = req.into_inner();
        let caller = Caller {
            agent_id: Some(agent.spiffe_id.clone()),
            selectors: r.selectors,
            exe_path: r.exe_path,
            exe_sha256: r.exe_sha256,
        };
        let handed = self
            .broker
            .get(CredentialRequest {
                agent: &agent.spiffe_id,
                task_id: &r.task_id,
                name: &r.name,
                scopes: &r.scopes,
                audience: &r.audience,
                caller: &caller,
            })
            .await?;
        let credential = String::from_utf8(handed.credential.expose().to_vec())
            .map_err(|_| Status::internal("the credential is not text"))?;
        Ok(Response::new(GetCredentialResponse {
            credential,
            r#type: handed.credential_type.as_str().to_owned(),
            expires_at: i64::try_from(handed.expires_at).unwrap_or(i64::MAX),
            lease_id: handed.lease_id.clone(),
            scopes: handed.scopes.clone(),
        }))
    }
}
