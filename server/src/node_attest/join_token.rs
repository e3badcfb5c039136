//! Join tokens as a node attestor: the evidence is the token itself.

use crate::attestation::{AttestationError, JoinTokens};

use super::{Attested, NodeAttestor};

/// Redeems single-use join tokens.
pub struct JoinTokenAttestor(pub JoinTokens);

#[async_trait::async_trait]
impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &'static str {
        "join_token"
    }

    async fn attest(&self, data: &[u8]) -> Result<Attested, AttestationError> {
        let token = std::str::from_utf8(data).map_err(|_| AttestationError::Malformed)?;
        Ok(Attested::new(self.0.redeem(token).await?))
    }
}
