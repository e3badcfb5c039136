//! Revocations between the domain type and the wire.

use lanyard_core::revocation::{Revocation, RevokedKind};

use super::ProtoError;
use crate::types;

impl From<&Revocation> for types::Revocation {
    fn from(r: &Revocation) -> Self {
        Self {
            kind: r.kind.as_str().to_owned(),
            value: r.value.clone(),
            revoked_at: i64::try_from(r.revoked_at).unwrap_or(i64::MAX),
            expires_at: i64::try_from(r.expires_at).unwrap_or(i64::MAX),
            reason: r.reason.clone(),
            issuer: r.issuer.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<types::Revocation> for Revocation {
    type Error = ProtoError;

    fn try_from(r: types::Revocation) -> Result<Self, ProtoError> {
        let kind = match r.kind.as_str() {
            "serial" => RevokedKind::Serial,
            "task" => RevokedKind::Task,
            "jwt" => RevokedKind::Jwt,
            "spiffe_id" => RevokedKind::SpiffeId,
            _ => return Err(ProtoError::Missing("a known revocation kind")),
        };
        if r.value.is_empty() {
            return Err(ProtoError::Missing("revocation value"));
        }
        Ok(Self {
            kind,
            value: r.value,
            revoked_at: u64::try_from(r.revoked_at)
                .map_err(|_| ProtoError::Negative("revoked_at"))?,
            expires_at: u64::try_from(r.expires_at)
                .map_err(|_| ProtoError::Negative("expires_at"))?,
            reason: r.reason,
            issuer: Some(r.issuer).filter(|i| !i.is_empty()),
        })
    }
}
