//! GetCredential through the node API: a credential from a provider for a
//! task the calling agent holds.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::credentials::CredentialRequest;
use crate::tasks::TaskCredential;
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
        let presented = match (r.x509_chain.is_empty(), r.jwt_svid.is_empty()) {
            (true, true) => None,
            (false, true) => Some(TaskCredential::X509(r.x509_chain)),
            (true, false) => Some(TaskCredential::Jwt(r.jwt_svid)),
            (false, false) => {
                return Err(Status::invalid_argument("x509_chain or jwt_svid, not both"));
            }
        };
        let release = match (&presented, r.enforcement_point_entry_id.is_empty()) {
            (None, true) => None,
            (Some(c), false) => Some((r.enforcement_point_entry_id.as_str(), c)),
            _ => {
                return Err(Status::invalid_argument(
                    "enforcement_point_entry_id and a task credential go together",
                ));
            }
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
                release,
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
            task_id: handed.task_id.clone(),
        }))
    }
}
