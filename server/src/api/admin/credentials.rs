//! Credential providers: add, list, show, rotate, delete. A secret's value
//! comes in and is sealed at once; nothing here sends it back, and the
//! audit records name it by digest.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::credentials::{
    ClientAuth, CredentialError, CredentialProvider as Provider, Grant, ProviderKind, ProviderSpec,
    Secret,
};
use lanyard_proto::admin::{
    AddCredentialRequest, CredentialProvider, CredentialProviderRequest, ListCredentialsResponse,
    RotateCredentialRequest,
};

fn provider_msg(p: &Provider) -> CredentialProvider {
    let secs = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    let mut m = CredentialProvider {
        name: p.name.clone(),
        kind: p.kind.name().into(),
        version: p.version,
        created_at: secs(p.created_at),
        updated_at: secs(p.updated_at),
        ..Default::default()
    };
    match &p.kind {
        ProviderKind::OauthExchange {
            token_url,
            audience,
            client_auth,
            scopes,
            revocation_url,
            grant,
        } => {
            m.token_url.clone_from(token_url);
            m.audience.clone_from(audience);
            m.client_auth = client_auth.name().into();
            m.grant = grant.name().into();
            m.scopes.clone_from(scopes);
            m.revocation_url = revocation_url.clone().unwrap_or_default();
        }
        ProviderKind::Secret { digest, reveal, .. } => {
            m.digest.clone_from(digest);
            m.reveal = *reveal;
        }
        ProviderKind::TxnToken { audience } => m.audience.clone_from(audience),
    }
    m
}

/// What the audit record says of a provider: never a secret, its digest.
fn provider_details(p: &Provider) -> serde_json::Value {
    let m = provider_msg(p);
    serde_json::json!({
        "name": m.name,
        "kind": m.kind,
        "version": m.version,
        "token_url": m.token_url,
        "grant": m.grant,
        "audience": m.audience,
        "scopes": m.scopes,
        "digest": m.digest,
        "reveal": m.reveal,
    })
}

fn spec(r: AddCredentialRequest) -> Result<ProviderSpec, CredentialError> {
    let unused = |what: &str, set: bool| {
        if set {
            Err(CredentialError::Invalid(format!(
                "{what} does not apply to a {} provider",
                r.kind
            )))
        } else {
            Ok(())
        }
    };
    match r.kind.as_str() {
        "oauth-exchange" => {
            unused("a secret value", !r.secret.is_empty() || r.reveal)?;
            Ok(ProviderSpec::Settings(ProviderKind::OauthExchange {
                token_url: r.token_url.clone(),
                audience: r.audience.clone(),
                client_auth: ClientAuth::parse(if r.client_auth.is_empty() {
                    "jwt-spiffe"
                } else {
                    &r.client_auth
                })
                .map_err(CredentialError::Invalid)?,
                scopes: r.scopes.clone(),
                revocation_url: (!r.revocation_url.is_empty()).then(|| r.revocation_url.clone()),
                grant: if r.grant.is_empty() {
                    Grant::TokenExchange
                } else {
                    Grant::parse(&r.grant).map_err(CredentialError::Invalid)?
                },
            }))
        }
        "secret" => {
            unused(
                "a token URL, audience, client auth, grant, scope or revocation URL",
                !r.grant.is_empty()
                    || !r.token_url.is_empty()
                    || !r.audience.is_empty()
                    || !r.client_auth.is_empty()
                    || !r.scopes.is_empty()
                    || !r.revocation_url.is_empty(),
            )?;
            Ok(ProviderSpec::Secret {
                value: Secret::new(r.secret),
                reveal: r.reveal,
            })
        }
        "txn-token" => {
            unused(
                "a secret, token URL, client auth, grant, scope or revocation URL",
                !r.grant.is_empty()
                    || !r.secret.is_empty()
                    || r.reveal
                    || !r.token_url.is_empty()
                    || !r.client_auth.is_empty()
                    || !r.scopes.is_empty()
                    || !r.revocation_url.is_empty(),
            )?;
            Ok(ProviderSpec::Settings(ProviderKind::TxnToken {
                audience: r.audience,
            }))
        }
        other => Err(CredentialError::Invalid(format!(
            "credential provider kind {other:?} is not one of oauth-exchange, secret, txn-token"
        ))),
    }
}

impl AdminApi {
    async fn credential_event(&self, kind: Kind, actor: String, p: &Provider) {
        self.audit
            .note(
                self.audit
                    .event(kind)
                    .actor(actor)
                    .details(provider_details(p)),
            )
            .await;
    }

    pub(super) async fn add_credential_rpc(
        &self,
        req: Request<AddCredentialRequest>,
    ) -> Result<Response<CredentialProvider>, Status> {
        let actor = admin_actor(&req);
        let r = req.into_inner();
        let name = r.name.clone();
        let p = self.credentials.add(&name, spec(r)?).await?;
        if matches!(p.kind, ProviderKind::Secret { reveal: true, .. }) {
            tracing::warn!(provider = %p.name, "secret provider added with reveal: workloads will hold a long-lived secret");
        }
        self.credential_event(Kind::CredentialAdded, actor, &p)
            .await;
        Ok(Response::new(provider_msg(&p)))
    }

    pub(super) async fn list_credentials_rpc(
        &self,
    ) -> Result<Response<ListCredentialsResponse>, Status> {
        let providers = self.credentials.list().await?;
        Ok(Response::new(ListCredentialsResponse {
            providers: providers.iter().map(provider_msg).collect(),
        }))
    }

    pub(super) async fn list_leases_rpc(
        &self,
        req: Request<lanyard_proto::admin::ListLeasesRequest>,
    ) -> Result<Response<lanyard_proto::admin::ListLeasesResponse>, Status> {
        let r = req.into_inner();
        let secs = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        let mut leases: Vec<_> = self
            .leases
            .list()
            .await?
            .into_iter()
            .filter(|l| r.task_id.is_empty() || l.task_id == r.task_id)
            .filter(|l| r.all || l.ended_at.is_none())
            .collect();
        leases.sort_by(|a, b| (b.issued_at, &b.lease_id).cmp(&(a.issued_at, &a.lease_id)));
        Ok(Response::new(lanyard_proto::admin::ListLeasesResponse {
            leases: leases
                .into_iter()
                .map(|l| lanyard_proto::admin::Lease {
                    revocation_pending: l.revoke.is_some(),
                    r#type: l.credential_type.as_str().into(),
                    issued_at: secs(l.issued_at),
                    expires_at: secs(l.expires_at),
                    ended_at: l.ended_at.map_or(0, secs),
                    lease_id: l.lease_id,
                    task_id: l.task_id,
                    spiffe_id: l.spiffe_id,
                    agent: l.agent,
                    provider: l.provider,
                    scopes: l.scopes,
                    audience: l.audience,
                    end_reason: l.end_reason,
                    enforcement_point: l.enforcement_point,
                })
                .collect(),
        }))
    }

    pub(super) async fn get_credential_provider_rpc(
        &self,
        req: Request<CredentialProviderRequest>,
    ) -> Result<Response<CredentialProvider>, Status> {
        let p = self.credentials.get(&req.into_inner().name).await?;
        Ok(Response::new(provider_msg(&p)))
    }

    pub(super) async fn rotate_credential_rpc(
        &self,
        req: Request<RotateCredentialRequest>,
    ) -> Result<Response<CredentialProvider>, Status> {
        let actor = admin_actor(&req);
        let r = req.into_inner();
        let p = self
            .credentials
            .rotate(&r.name, Secret::new(r.secret))
            .await?;
        self.credential_event(Kind::CredentialRotated, actor, &p)
            .await;
        Ok(Response::new(provider_msg(&p)))
    }

    pub(super) async fn delete_credential_rpc(
        &self,
        req: Request<CredentialProviderRequest>,
    ) -> Result<Response<CredentialProvider>, Status> {
        let actor = admin_actor(&req);
        let p = self.credentials.delete(&req.into_inner().name).await?;
        self.credential_event(Kind::CredentialDeleted, actor, &p)
            .await;
        Ok(Response::new(provider_msg(&p)))
    }
}
