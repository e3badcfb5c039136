//! The Sync stream: each agent's entries, bundle, policy, revocations,
//! CRLs and quarantines, pushed as they change.

#[allow(clippy::wildcard_imports)]
use super::*;

impl NodeApi {
    pub(super) fn sync_update(&self, agent: &SpiffeId) -> SyncUpdate {
        let policy = self.policies.enforced();
        SyncUpdate {
            entries: self
                .registry
                .for_agent(agent)
                .iter()
                .map(types::Entry::from)
                .collect(),
            bundle: Some(bundle_msg(&self.ca)),
            ended_task_ids: self.tasks.ended_for(agent),
            policy_version: policy.as_ref().map_or(0, |p| p.record.version),
            policy_text: policy.map(|p| p.record.text.clone()).unwrap_or_default(),
            revocations: vec![],
            revocations_reset: false,
            crls: self.enforce.revocations.crls(),
            quarantines: self
                .enforce
                .quarantines
                .in_force()
                .iter()
                .map(crate::api::admin::quarantine_msg)
                .collect(),
            sensitivity_levels: self.tasks.levels().as_slice().to_vec(),
        }
    }

    /// `sync` (see the `Node` service).
    pub(super) async fn sync_rpc(
        &self,
        req: Request<SyncRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let (agent, client) = self.authenticate(&req).await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        let mut entries = self.registry.subscribe();
        let mut bundle = self.ca.subscribe();
        let mut agents = self.agents.subscribe();
        let mut tasks = self.tasks.subscribe();
        let mut policies = self.policies.subscribe();
        let mut revocations = self.enforce.revocations.subscribe();
        let mut quarantines = self.enforce.quarantines.subscribe();
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            let _open = StreamGauge::open(&api.metrics.prom.sync_streams);
            let id = agent.spiffe_id;
            let mut last: Option<SyncUpdate> = None;
            // The revocation log position last sent: later updates carry
            // only what was added since (agents drop entries once they
            // expire).
            let mut sent: Option<u64> = None;
            loop {
                // Re-check the agent on every wake-up: an evicted or banned
                // agent's stream ends with an error (authenticated against
                // the store when the stream opened; changes since come from
                // this server's ban/evict calls and the change feed).
                if api.agents.is_gone(&id) {
                    let _ = tx
                        .send(Err(Status::permission_denied(format!(
                            "agent {id} has been evicted or banned"
                        ))))
                        .await;
                    return;
                }
                // The stream outlives no certificate: once the SVID that
                // opened it expires or its CA leaves the bundle, it ends and
                // the agent reconnects with its renewed SVID.
                let snap = api.ca.snapshot();
                let issuer_ok = client
                    .issuer
                    .as_ref()
                    .is_some_and(|i| snap.authority_ids.iter().any(|a| a == i));
                if api.clock.now() >= client.not_after || !issuer_ok {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the agent SVID that opened this stream is no longer valid; reconnect",
                        )))
                        .await;
                    return;
                }
                let until_expiry = client
                    .not_after
                    .duration_since(api.clock.now())
                    .unwrap_or_default();
                let update = api.sync_update(&id);
                let delta = api.enforce.revocations.delta(sent);
                if last.as_ref() != Some(&update) || delta.reset || !delta.items.is_empty() {
                    let mut msg = update.clone();
                    msg.revocations = delta.items.iter().map(types::Revocation::from).collect();
                    msg.revocations_reset = delta.reset;
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(update);
                }
                sent = Some(delta.seq);
                tokio::select! {
                    r = entries.changed() => if r.is_err() { return },
                    r = bundle.changed() => if r.is_err() { return },
                    r = agents.changed() => if r.is_err() { return },
                    r = tasks.changed() => if r.is_err() { return },
                    r = policies.changed() => if r.is_err() { return },
                    r = revocations.changed() => if r.is_err() { return },
                    r = quarantines.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(until_expiry) => {}
                    () = tx.closed() => return,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
