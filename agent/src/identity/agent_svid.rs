//! The agent's own X.509-SVID: renewed over the session, once per
//! half-life, with backoff (bounded by its expiry) when the server fails.

use std::sync::Arc;

use lanyard_core::backoff::retry_delay;
use lanyard_core::rotation::renew_at;
use lanyard_core::x509::SvidKey;
use lanyard_proto::server::RenewAgentRequest;
use lanyard_proto::server::node_client::NodeClient;
use tonic::transport::Channel;

use super::manager::{BACKOFF_BASE, BACKOFF_MAX, CALL_TIMEOUT, Manager};
use super::signed::jitter_sample;
use crate::upstream::creds::AgentIdentity;

impl Manager {
    /// Renews the agent's own SVID; true when it was replaced. Awaited in
    /// the loop: it happens once per half-life, and the session reconnects
    /// right after it anyway.
    pub(super) async fn renew_agent(&mut self, client: &mut NodeClient<Channel>) -> bool {
        let now = self.clock.now();
        let result = async {
            let id = self.creds.identity().ok_or("no agent identity")?;
            let key = SvidKey::generate().map_err(|e| e.to_string())?;
            let csr = key.csr(&id.spiffe_id).map_err(|e| e.to_string())?;
            let resp =
                tokio::time::timeout(CALL_TIMEOUT, client.renew_agent(RenewAgentRequest { csr }))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|s| s.message().to_string())?
                    .into_inner();
            let chain = resp.svid.ok_or("empty response")?.cert_chain;
            let identity = AgentIdentity::new(chain, key.pkcs8_der()).map_err(|e| e.to_string())?;
            self.storage
                .save_svid(&identity.chain, &identity.key_pkcs8)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(identity)
        }
        .await;
        match result {
            Ok(identity) => {
                tracing::info!(agent_id = %identity.spiffe_id, not_after = ?identity.not_after, "agent SVID renewed");
                self.agent_renew_at = Some(renew_at(
                    now.clamp(identity.not_before, identity.not_after),
                    identity.not_after,
                    jitter_sample(),
                ));
                self.agent_failures = 0;
                self.creds.set_identity(Some(Arc::new(identity)));
                true
            }
            Err(err) => {
                let expires = self.creds.identity().map_or(now, |i| i.not_after);
                let delay =
                    retry_delay(self.agent_failures, BACKOFF_BASE, BACKOFF_MAX, now, expires);
                self.agent_failures = self.agent_failures.saturating_add(1);
                self.agent_renew_at = Some(now + delay);
                tracing::warn!(%err, retry_in = ?delay, "agent SVID renewal failed");
                false
            }
        }
    }
}
