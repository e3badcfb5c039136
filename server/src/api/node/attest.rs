//! Node attestation and renewal: AttestAgent, RenewAgent, and the
//! authentication of every other call by the agent's SVID.

#[allow(clippy::wildcard_imports)]
use super::*;

impl NodeApi {
    /// Identifies the calling agent from its verified client certificate,
    /// on every call: the certificate must still be valid now (not only at
    /// the handshake) and its CA still in the bundle.
    pub(super) async fn authenticate<T: Sync>(
        &self,
        req: &Request<T>,
    ) -> Result<(AgentRecord, ClientSvid), NodeError> {
        let client = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.client.clone())
            .ok_or(NodeError::NoClientCert)??;
        if self.clock.now() >= client.not_after {
            return Err(NodeError::SvidNoLongerValid(
                client.serial,
                "it has expired",
            ));
        }
        let snap = self.ca.snapshot();
        if !client
            .issuer
            .as_ref()
            .is_some_and(|i| snap.authority_ids.iter().any(|a| a == i))
        {
            return Err(NodeError::SvidNoLongerValid(
                client.serial,
                "its CA is no longer in the trust bundle",
            ));
        }
        let agent = self
            .agents
            .authenticate(&client.spiffe_id, &client.serial)
            .await?;
        self.registry.note_node(&agent);
        Ok((agent, client))
    }

    /// Checks the node's evidence with the attestor it names and signs the
    /// agent's SVID.
    pub(super) async fn attest(
        &self,
        req: &AttestAgentRequest,
    ) -> Result<(Attested, lanyard_core::x509::IssuedSvid), NodeError> {
        // Check the CSR before spending the evidence, so a bad CSR does not
        // burn a join token.
        lanyard_core::x509::parse_csr_public_key(&req.csr)?;
        let attestor = self.attestors.get(&req.attestor)?;
        let data = if attestor.name() == "join_token" && req.attestation_data.is_empty() {
            req.join_token.as_bytes()
        } else {
            &req.attestation_data
        };
        let node = attestor.attest(data).await?;
        lanyard_core::agent_id::check_agent_id(&node.agent_id, self.ca.trust_domain())
            .map_err(AttestationError::from)?;
        self.agents.check_not_banned(&node.agent_id).await?;
        let svid = self.sign_agent(&node.agent_id, &req.csr)?;
        Ok((node, svid))
    }

    /// A refused attestation: counted by attestor and reason, recorded in
    /// the audit log (with the agent ID once known), answered as a status.
    pub(super) async fn attestation_refused(
        &self,
        method: &str,
        agent_id: Option<&SpiffeId>,
        err: NodeError,
    ) -> Status {
        self.metrics
            .prom
            .attestation_failures
            .get_or_create(&lanyard_metrics::labels(&[
                ("attestor", attestor_label(method)),
                ("reason", refusal_reason(&err)),
            ]))
            .inc();
        let mut event = self
            .audit
            .event(Kind::NodeRefused)
            .reason(err.to_string())
            .details(serde_json::json!({"method": method}));
        if let Some(id) = agent_id {
            event = event.subject(id.to_string());
        }
        self.audit.note(event).await;
        err.into()
    }

    pub(super) fn sign_agent(
        &self,
        id: &SpiffeId,
        csr: &[u8],
    ) -> Result<lanyard_core::x509::IssuedSvid, NodeError> {
        let params = SvidParams {
            spiffe_id: id.clone(),
            dns_names: vec![],
            ttl: self.settings.agent_svid_ttl,
            extensions: vec![],
        };
        let started = std::time::Instant::now();
        let svid = self
            .ca
            .snapshot()
            .active
            .sign_x509_svid(csr, &params, self.clock.now())?;
        self.metrics.signed("agent", started);
        Ok(svid)
    }

    /// `attest agent` (see the `Node` service).
    pub(super) async fn attest_agent_rpc(
        &self,
        req: Request<AttestAgentRequest>,
    ) -> Result<Response<AttestAgentResponse>, Status> {
        let req = req.into_inner();
        let method = if req.attestor.is_empty() {
            "join_token".to_owned()
        } else {
            req.attestor.chars().take(64).collect()
        };
        let (node, svid) = match self.attest(&req).await {
            Ok(v) => v,
            Err(e) => return Err(self.attestation_refused(&method, None, e).await),
        };
        let agent_id = node.agent_id.clone();
        if let Err(e) = self
            .agents
            .attested(
                &agent_id,
                &method,
                &svid.serial,
                unix_secs(svid.not_after),
                &node,
            )
            .await
        {
            return Err(self
                .attestation_refused(&method, Some(&agent_id), e.into())
                .await);
        }
        tracing::info!(%agent_id, %method, serial = %svid.serial, "agent attested");
        self.audited(
            self.audit
                .event(Kind::NodeAttested)
                .actor(agent_id.to_string())
                .subject(agent_id.to_string())
                .serial(svid.serial.clone())
                .details(serde_json::json!({
                    "method": method,
                    "selectors": node.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
        )
        .await?;
        Ok(Response::new(AttestAgentResponse {
            svid: Some(svid_msg(&agent_id, vec![svid.cert_der], svid.not_after)),
            bundle: Some(bundle_msg(&self.ca)),
        }))
    }

    /// `renew agent` (see the `Node` service).
    pub(super) async fn renew_agent_rpc(
        &self,
        req: Request<RenewAgentRequest>,
    ) -> Result<Response<RenewAgentResponse>, Status> {
        let (agent, client) = self.authenticate(&req).await?;
        let svid = self.sign_agent(&agent.spiffe_id, &req.get_ref().csr)?;
        // Written only if the record is still the one authenticated against
        // (or a compatible renewal): a concurrent ban or eviction wins.
        let agent = self
            .agents
            .renewed(
                agent,
                &client.serial,
                &svid.serial,
                unix_secs(svid.not_after),
            )
            .await
            .map_err(NodeError::from)?;
        tracing::info!(agent_id = %agent.spiffe_id, serial = %svid.serial, "agent SVID renewed");
        self.audited(
            self.audit
                .event(Kind::AgentRenewed)
                .actor(agent.spiffe_id.to_string())
                .subject(agent.spiffe_id.to_string())
                .serial(svid.serial.clone()),
        )
        .await?;
        Ok(Response::new(RenewAgentResponse {
            svid: Some(svid_msg(
                &agent.spiffe_id,
                vec![svid.cert_der],
                svid.not_after,
            )),
        }))
    }
}
