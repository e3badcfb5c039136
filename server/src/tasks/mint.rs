//! Minting a task's credentials: an X.509-SVID with the task claims
//! extension whose NotAfter never passes the task's end, and a JWT-SVID
//! with the task claims.

use std::time::{Duration, SystemTime};

use lanyard_core::clock::{from_unix_secs, unix_secs};
use lanyard_core::task::{TaskGrant, task_claims_oid_der};
use lanyard_core::x509::SvidParams;
use lanyard_core::{RegistrationEntry, SpiffeId};

use super::error::TaskServiceError;
use crate::ca::Ca;
use crate::ca::IssuanceSettings;

/// A task X.509-SVID as signed.
#[derive(Debug, Clone)]
pub struct TaskSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The leaf certificate (DER).
    pub cert_der: Vec<u8>,
    /// When it expires (Unix seconds).
    pub not_after: u64,
}

/// A task's freshly minted credentials.
#[derive(Debug, Default)]
pub struct MintedTask {
    /// The X.509-SVID, when a CSR was given.
    pub svid: Option<TaskSvid>,
    /// The JWT-SVID and its expiry (Unix seconds), when audiences were given.
    pub jwt: Option<(String, u64)>,
}

/// Checks JWT audiences ([`lanyard_core::jwt::audiences_ok`]), with the
/// message a caller gets.
pub(crate) fn check_audiences(audience: &[String]) -> Result<(), String> {
    if !lanyard_core::jwt::audiences_ok(audience) {
        return Err(format!(
            "at most {} audiences of 1 to {} bytes each",
            lanyard_core::jwt::MAX_AUDIENCES,
            lanyard_core::jwt::MAX_AUDIENCE_LEN
        ));
    }
    Ok(())
}

/// What minting needs besides the grant.
pub(crate) struct MintRequest<'a> {
    pub(crate) entry: &'a RegistrationEntry,
    pub(crate) node: &'a SpiffeId,
    pub(crate) csr: &'a [u8],
    pub(crate) audiences: &'a [String],
    pub(crate) exe_sha256: Option<&'a str>,
    /// Where a signed X.509-SVID is recorded (so revoking the task
    /// reaches its serial without the holder's agent).
    pub(crate) issued: &'a crate::enforce::Issued,
}

/// Mints the credentials of `grant` at `now`.
pub(crate) fn mint(
    ca: &Ca,
    settings: &IssuanceSettings,
    grant: &TaskGrant,
    req: &MintRequest<'_>,
    now: SystemTime,
) -> Result<MintedTask, TaskServiceError> {
    let end = from_unix_secs(grant.not_after);
    let remaining = end.duration_since(now).unwrap_or(Duration::ZERO);
    if remaining.is_zero() {
        return Err(TaskServiceError::NotActive(
            grant.task_id.to_string(),
            "expired",
        ));
    }
    let snap = ca.snapshot();
    let mut out = MintedTask::default();
    if !req.csr.is_empty() {
        let ttl = req
            .entry
            .x509_ttl
            .unwrap_or(settings.default_x509_svid_ttl)
            .min(remaining);
        let params = SvidParams {
            spiffe_id: grant.spiffe_id.clone(),
            dns_names: req.entry.dns_names.clone(),
            ttl,
            extensions: vec![(task_claims_oid_der(), grant.claims().to_der())],
        };
        let svid = snap
            .active
            .sign_x509_svid(req.csr, &params, now)
            .map_err(|e| match e {
                lanyard_core::x509::SvidError::Issue(_)
                | lanyard_core::x509::SvidError::Crypto(_) => TaskServiceError::signing(e),
                other => TaskServiceError::Invalid(format!("csr: {other}")),
            })?;
        req.issued.note(crate::enforce::IssuedSvid {
            serial: svid.serial.clone(),
            spiffe_id: grant.spiffe_id.to_string(),
            task_id: Some(grant.task_id.to_string()),
            issuer: snap.active.info().subject_key_id.clone(),
            issued_at: unix_secs(now),
            not_after: unix_secs(svid.not_after),
        });
        out.svid = Some(TaskSvid {
            spiffe_id: grant.spiffe_id.clone(),
            cert_der: svid.cert_der,
            not_after: unix_secs(svid.not_after),
        });
    }
    if !req.audiences.is_empty() {
        let ttl = req
            .entry
            .jwt_ttl
            .unwrap_or(settings.default_jwt_svid_ttl)
            .min(remaining);
        let minted = snap
            .jwt_active
            .sign_svid(
                &settings.jwt_issuer,
                &grant.spiffe_id,
                req.audiences,
                ttl,
                now,
                grant.jwt_claims(req.node, req.exe_sha256),
            )
            .map_err(TaskServiceError::signing)?;
        out.jwt = Some((minted.token, unix_secs(minted.expires_at)));
    }
    Ok(out)
}
