//! Which SPIFFE IDs an agent (node) may be given.
//!
//! Every agent accepts `spiffe://TD/lanyard/server` as the server, and every
//! workload trusts the trust domain, so neither may ever be an agent's ID;
//! the rest of `/lanyard/` is reserved for what Lanyard names itself, with
//! `/lanyard/agent/...` the agents' own namespace. Aliases outside it
//! (`spiffe://TD/node/n1`) are fine.

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The path of the server's own SPIFFE ID.
pub const SERVER_PATH: &str = "/lanyard/server";
/// The namespace of agent IDs Lanyard generates.
pub const AGENT_PREFIX: &str = "/lanyard/agent/";

/// Why an ID cannot be an agent's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    /// Another trust domain.
    #[error("agent ID {0} is not in trust domain {1}")]
    Foreign(SpiffeId, TrustDomain),
    /// The bare trust domain ID.
    #[error("agent ID {0} is the trust domain itself")]
    TrustDomainRoot(SpiffeId),
    /// The server's ID.
    #[error("agent ID {0} is the server's own ID")]
    ServerId(SpiffeId),
    /// Another reserved `/lanyard/` path.
    #[error(
        "agent ID {0} is in the reserved /lanyard/ namespace (only {AGENT_PREFIX}... is for agents)"
    )]
    Reserved(SpiffeId),
}

/// The server's SPIFFE ID in `td`.
pub fn server_id(td: &TrustDomain) -> Option<SpiffeId> {
    td.id_with_segments(["lanyard", "server"]).ok()
}

/// Checks that `id` may name an agent of `td`.
pub fn check_agent_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), AgentIdError> {
    if !id.is_member_of(td) {
        return Err(AgentIdError::Foreign(id.clone(), td.clone()));
    }
    if id.is_trust_domain_id() {
        return Err(AgentIdError::TrustDomainRoot(id.clone()));
    }
    let path = id.path();
    if path == SERVER_PATH || path.starts_with("/lanyard/server/") {
        return Err(AgentIdError::ServerId(id.clone()));
    }
    if (path == "/lanyard" || path.starts_with("/lanyard/")) && !path.starts_with(AGENT_PREFIX) {
        return Err(AgentIdError::Reserved(id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_server_root_and_reserved_ids() {
        let td = TrustDomain::new("td").unwrap();
        let ok = |s: &str| check_agent_id(&SpiffeId::new(s).unwrap(), &td);
        assert!(ok("spiffe://td/node/n1").is_ok());
        assert!(ok("spiffe://td/lanyard/agent/join_token/abc").is_ok());
        assert!(matches!(
            ok("spiffe://td"),
            Err(AgentIdError::TrustDomainRoot(_))
        ));
        assert!(matches!(
            ok("spiffe://td/lanyard/server"),
            Err(AgentIdError::ServerId(_))
        ));
        assert!(matches!(
            ok("spiffe://td/lanyard/server/x"),
            Err(AgentIdError::ServerId(_))
        ));
        assert!(matches!(
            ok("spiffe://td/lanyard/audit"),
            Err(AgentIdError::Reserved(_))
        ));
        assert!(matches!(
            ok("spiffe://td/lanyard"),
            Err(AgentIdError::Reserved(_))
        ));
        assert!(matches!(
            ok("spiffe://other/node"),
            Err(AgentIdError::Foreign(..))
        ));
        assert_eq!(server_id(&td).unwrap().path(), SERVER_PATH);
    }
}
