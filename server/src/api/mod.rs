//! The gRPC services, at the edge: they convert between the wire and the
//! domain modules, which never import them.

pub mod admin;
pub(crate) mod http1;
pub mod node;
pub mod oidc;
mod status;

use lanyard_core::TrustDomain;
use lanyard_proto::types;

use crate::ca::{CaSnapshot, REFRESH_HINT_SECS};

/// The bundle as both services send it.
pub(crate) fn bundle_proto(snap: &CaSnapshot, td: &TrustDomain) -> types::Bundle {
    types::Bundle {
        trust_domain: td.to_string(),
        x509_authorities: snap.authorities.to_vec(),
        sequence: snap.sequence,
        refresh_hint_seconds: i64::try_from(REFRESH_HINT_SECS).unwrap_or(60),
        jwt_authorities: snap
            .jwt_authorities
            .iter()
            .map(types::JwtAuthority::from)
            .collect(),
        tainted_key_ids: snap.tainted.to_vec(),
        wit_authorities: snap
            .wit_authorities
            .iter()
            .map(types::JwtAuthority::from)
            .collect(),
    }
}
