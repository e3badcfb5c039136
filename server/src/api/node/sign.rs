//! Signing for agents: X.509-SVIDs from CSRs and JWT-SVIDs, for the
//! entries an agent may obtain.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn bundle_msg(ca: &Ca) -> types::Bundle {
    crate::api::bundle_proto(&ca.snapshot(), ca.trust_domain())
}

pub(super) fn svid_msg(
    id: &SpiffeId,
    chain: Vec<Vec<u8>>,
    not_after: std::time::SystemTime,
) -> types::X509Svid {
    types::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: chain,
        expires_at: i64::try_from(unix_secs(not_after)).unwrap_or(i64::MAX),
    }
}

impl NodeApi {
    /// The entry `entry_id` if `agent` is its parent.
    pub(super) fn owned_entry(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
    ) -> Result<lanyard_core::RegistrationEntry, NodeError> {
        EntryId::new(entry_id)
            .ok()
            .and_then(|id| self.registry.get(id.as_str()))
            .filter(|e| self.registry.owns(agent, e))
            .ok_or_else(|| NodeError::NotAuthorized(entry_id.to_owned(), agent.to_string()))
    }

    pub(super) fn sign_one(
        &self,
        agent: &SpiffeId,
        entry_id: &str,
        csr: &[u8],
    ) -> Result<(types::X509Svid, Event), String> {
        let entry = self
            .owned_entry(agent, entry_id)
            .map_err(|e| e.to_string())?;
        let params = SvidParams {
            spiffe_id: entry.spiffe_id.clone(),
            dns_names: entry.dns_names.clone(),
            ttl: entry
                .x509_ttl
                .unwrap_or(self.settings.default_x509_svid_ttl),
            extensions: vec![],
        };
        let snap = self.ca.snapshot();
        let started = std::time::Instant::now();
        let svid = snap
            .active
            .sign_x509_svid(csr, &params, self.clock.now())
            .map_err(|e| e.to_string())?;
        self.metrics.signed("x509", started);
        self.metrics
            .x509_svids_signed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%agent, spiffe_id = %entry.spiffe_id, serial = %svid.serial, "signed X.509-SVID");
        // Recorded (batched, off this path) so that revoking the SPIFFE ID
        // reaches this serial without the holder's agent.
        self.enforce
            .revocations
            .issued()
            .note(crate::enforce::IssuedSvid {
                serial: svid.serial.clone(),
                spiffe_id: entry.spiffe_id.to_string(),
                task_id: None,
                issuer: snap.active.info().subject_key_id.clone(),
                issued_at: unix_secs(self.clock.now()),
                not_after: unix_secs(svid.not_after),
            });
        let event = self
            .audit
            .event(Kind::SvidIssued)
            .actor(agent.to_string())
            .subject(entry.spiffe_id.to_string())
            .node(agent.to_string())
            .serial(svid.serial.clone())
            .details(serde_json::json!({
                "entry_id": entry.id.to_string(),
                "ttl_seconds": params.ttl.as_secs(),
            }));
        Ok((
            svid_msg(&entry.spiffe_id, vec![svid.cert_der], svid.not_after),
            event,
        ))
    }

    /// `sign x509 svids` (see the `Node` service).
    pub(super) async fn sign_x509_svids_rpc(
        &self,
        req: Request<SignX509SvidsRequest>,
    ) -> Result<Response<SignX509SvidsResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let csrs = req.into_inner().csrs;
        if csrs.len() > MAX_BATCH {
            return Err(NodeError::BatchTooLarge.into());
        }
        let mut events = Vec::new();
        let results = csrs
            .into_iter()
            .map(|item| match self.sign_one(&agent.spiffe_id, &item.entry_id, &item.csr) {
                Ok((svid, event)) => {
                    events.push(event);
                    SignResult {
                        entry_id: item.entry_id,
                        svid: Some(svid),
                        error: String::new(),
                    }
                }
                Err(error) => {
                    tracing::info!(agent_id = %agent.spiffe_id, entry_id = %item.entry_id, %error, "refused to sign");
                    SignResult {
                        entry_id: item.entry_id,
                        svid: None,
                        error,
                    }
                }
            })
            .collect();
        // No SVID leaves before its issuance is on disk.
        if !events.is_empty() {
            self.audit.record_all(events).await.map_err(unavailable)?;
        }
        Ok(Response::new(SignX509SvidsResponse { results }))
    }

    /// `sign jwt svid` (see the `Node` service).
    pub(super) async fn sign_jwt_svid_rpc(
        &self,
        req: Request<SignJwtSvidRequest>,
    ) -> Result<Response<SignJwtSvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(NodeError::BadJwtRequest("audience must be specified".into()).into());
        }
        crate::tasks::check_audiences(&req.audience).map_err(NodeError::BadJwtRequest)?;
        let entry = self.owned_entry(&agent.spiffe_id, &req.entry_id)?;
        let ttl = entry.jwt_ttl.unwrap_or(self.settings.default_jwt_svid_ttl);
        let started = std::time::Instant::now();
        let minted = self
            .ca
            .snapshot()
            .jwt_active
            .sign_svid(
                &self.settings.jwt_issuer,
                &entry.spiffe_id,
                &req.audience,
                ttl,
                self.clock.now(),
                serde_json::Map::new(),
            )
            .map_err(NodeError::from)?;
        self.metrics.signed("jwt", started);
        self.metrics
            .jwt_svids_signed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(agent_id = %agent.spiffe_id, spiffe_id = %entry.spiffe_id, jti = %minted.jti, "signed JWT-SVID");
        let mut e = self
            .audit
            .event(Kind::JwtIssued)
            .actor(agent.spiffe_id.to_string())
            .subject(entry.spiffe_id.to_string())
            .node(agent.spiffe_id.to_string())
            .details(serde_json::json!({"audience": req.audience, "ttl_seconds": ttl.as_secs()}));
        e.correlation.jti = minted.jti.clone();
        self.audited(e).await?;
        let secs = |t| i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
        Ok(Response::new(SignJwtSvidResponse {
            token: minted.token,
            issued_at: secs(minted.issued_at),
            expires_at: secs(minted.expires_at),
        }))
    }

    /// `sign wit svid` (see the `Node` service): a WIT-SVID for one of the
    /// agent's entries, on the same TTL as its JWT-SVIDs, bound to the
    /// workload's public key (rebuilt from its EC P-256 members only).
    pub(super) async fn sign_wit_svid_rpc(
        &self,
        req: Request<SignWitSvidRequest>,
    ) -> Result<Response<SignWitSvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        let cnf = lanyard_core::jwt::wit::issuable_cnf(&req.public_jwk)
            .map_err(|e| NodeError::BadJwtRequest(e.to_string()))?;
        let started = std::time::Instant::now();
        let (minted, subject) = if req.task_id.is_empty() {
            let entry = self.owned_entry(&agent.spiffe_id, &req.entry_id)?;
            let ttl = entry.jwt_ttl.unwrap_or(self.settings.default_jwt_svid_ttl);
            let minted = lanyard_core::jwt::wit::sign_wit(
                &self.ca.snapshot().wit_active,
                &entry.spiffe_id,
                &cnf,
                ttl,
                self.clock.now(),
                serde_json::Map::new(),
            )
            .map_err(|e| NodeError::BadJwtRequest(e.to_string()))?;
            (minted, entry.spiffe_id)
        } else {
            let minted = self
                .tasks
                .sign_wit(&agent.spiffe_id, &req.task_id, &cnf, &req.exe_sha256)
                .await?;
            let task = self.tasks.get(&req.task_id).await?;
            (minted, task.grant.spiffe_id)
        };
        self.metrics.signed("wit", started);
        tracing::debug!(agent_id = %agent.spiffe_id, spiffe_id = %subject, jti = %minted.jti, "signed WIT-SVID");
        // Recorded as a JWT-format SVID, with its profile: the jti is what
        // `svid revoke --jwt-id` names.
        let ttl = minted
            .expires_at
            .duration_since(minted.issued_at)
            .unwrap_or_default();
        let mut e = self
            .audit
            .event(Kind::JwtIssued)
            .actor(agent.spiffe_id.to_string())
            .subject(subject.to_string())
            .node(agent.spiffe_id.to_string())
            .details(serde_json::json!({"profile": "wit-svid", "ttl_seconds": ttl.as_secs()}));
        if !req.task_id.is_empty() {
            e = e.task(req.task_id.clone());
        }
        e.correlation.jti = minted.jti.clone();
        self.audited(e).await?;
        Ok(Response::new(SignWitSvidResponse {
            token: minted.token,
            expires_at: i64::try_from(unix_secs(minted.expires_at)).unwrap_or(i64::MAX),
            jti: minted.jti,
        }))
    }
}
