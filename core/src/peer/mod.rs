//! Peer validation: one validator for everything a peer checks about an
//! X.509-SVID it was shown (chain to the bundle, the X.509-SVID rules,
//! revocation, and optional requirements on the task claims), the live
//! trust state it reads (bundle and revocations, swapped without a
//! restart, with a watch so servers can drop connections of a peer that
//! gets revoked), and rustls verifiers built on it ([`tls`]).

pub mod tls;

pub use tls::{
    PeerCheck, PeerClientVerifier, PeerServerVerifier, SvidResolver, client_config, server_config,
};

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::clock::unix_secs;
use crate::revocation::{CredentialRef, Revocation, RevocationSet, RevokedKind};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::task::TaskClaims;
use crate::x509::{BACKDATE, CertInfo, PeerUsage, SvidError, parse_crl, validate_x509_svid};

/// Why a peer's credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The chain or the X.509-SVID rules failed.
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// The credential is revoked.
    #[error("credential revoked ({kind} {value}): {reason}")]
    Revoked {
        /// What the revocation names.
        kind: RevokedKind,
        /// The revoked value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The task claims are missing, unreadable or do not meet a requirement.
    #[error("task claims: {0}")]
    Claims(String),
}

/// What a validated peer credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The leaf's serial, normalised hex.
    pub serial: String,
    /// When it was issued (NotBefore plus the backdating).
    pub issued_at: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
    /// Subject key ID of its issuing CA.
    pub issuer: Option<String>,
    /// Its task claims, when it is a task SVID.
    pub claims: Option<TaskClaims>,
}

/// Optional requirements on a peer's task claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// The peer must hold a task SVID (standing SVIDs are refused).
    pub require_task: bool,
    /// The task must be of this type.
    pub task_type: Option<String>,
    /// The task must have been granted this tool.
    pub tool: Option<String>,
}

impl Requirements {
    fn check(&self, claims: Option<&TaskClaims>, now: SystemTime) -> Result<(), PeerError> {
        let Some(c) = claims else {
            if self.require_task || self.task_type.is_some() || self.tool.is_some() {
                return Err(PeerError::Claims("the peer holds no task SVID".into()));
            }
            return Ok(());
        };
        if c.not_after.is_some_and(|t| now >= t) {
            return Err(PeerError::Claims(format!("task {} has ended", c.task_id)));
        }
        if let Some(t) = &self.task_type
            && *t != c.task_type
        {
            return Err(PeerError::Claims(format!(
                "task type is {}, not {t}",
                c.task_type
            )));
        }
        if let Some(tool) = &self.tool
            && !c.tools.iter().any(|g| g == tool)
        {
            return Err(PeerError::Claims(format!(
                "tool {tool} was not granted to the task"
            )));
        }
        Ok(())
    }
}

/// The trust a validator reads: one trust domain's X.509 authorities and
/// the revocations in force.
#[derive(Debug, Clone)]
pub struct TrustState {
    /// The trust domain.
    pub td: TrustDomain,
    /// DER CA certificates.
    pub authorities: Arc<Vec<Vec<u8>>>,
    /// What is revoked.
    pub revocations: Arc<RevocationSet>,
    /// Bumped on every change (caches key on it).
    pub generation: u64,
}

impl TrustState {
    /// A state with `authorities` and nothing revoked.
    pub fn new(td: TrustDomain, authorities: Vec<Vec<u8>>) -> Self {
        Self {
            td,
            authorities: Arc::new(authorities),
            revocations: Arc::new(RevocationSet::new()),
            generation: 0,
        }
    }

    /// Validates an X.509-SVID chain (leaf first) as a peer: chain, SVID
    /// rules, revocation, then `req` on the task claims.
    pub fn validate(
        &self,
        chain: &[Vec<u8>],
        usage: PeerUsage,
        req: &Requirements,
        now: SystemTime,
    ) -> Result<Peer, PeerError> {
        let spiffe_id = validate_x509_svid(chain, &self.td, &self.authorities, usage, now)?;
        let leaf = chain.first().ok_or(SvidError::Empty("certificate chain"))?;
        let info = CertInfo::parse(leaf)?;
        let claims = TaskClaims::from_x509(leaf).map_err(|e| PeerError::Claims(e.to_string()))?;
        let peer = Peer {
            serial: crate::revocation::normalize_serial(&info.serial),
            issued_at: info.not_before + BACKDATE,
            not_after: info.not_after,
            issuer: info.authority_key_id,
            spiffe_id,
            claims,
        };
        self.check_revoked(&peer, None)?;
        req.check(peer.claims.as_ref(), now)?;
        Ok(peer)
    }

    /// Refuses `peer` when a revocation names it (or `jwt_id`).
    pub fn check_revoked(&self, peer: &Peer, jwt_id: Option<&str>) -> Result<(), PeerError> {
        match revocation_of(&self.revocations, peer, jwt_id) {
            Some(r) => Err(revoked(r)),
            None => Ok(()),
        }
    }
}

/// The revocation in `set` naming `peer`'s credential (its serial, JWT ID
/// `jwt_id`, task, or its SPIFFE ID at its issue time), if any.
pub fn revocation_of<'a>(
    set: &'a RevocationSet,
    peer: &Peer,
    jwt_id: Option<&str>,
) -> Option<&'a Revocation> {
    let task = peer.claims.as_ref().map(|c| c.task_id.to_string());
    set.check(&CredentialRef {
        spiffe_id: peer.spiffe_id.as_str(),
        issued_at: peer.issued_at,
        serial: (!peer.serial.is_empty()).then_some(peer.serial.as_str()),
        jwt_id,
        task_id: task.as_deref(),
    })
}

/// A revocation as the validator's error.
pub fn revoked(r: &Revocation) -> PeerError {
    PeerError::Revoked {
        kind: r.kind,
        value: r.value.clone(),
        reason: r.reason.clone(),
    }
}

/// A trust state that changes while servers run: the bundle and the CRLs
/// (or a whole revocation set) are swapped in place; verifiers read the
/// newest state on every handshake; [`LiveTrust::watch`] tells open
/// connections when something changed.
#[derive(Debug)]
pub struct LiveTrust {
    state: RwLock<Arc<TrustState>>,
    changes: watch::Sender<u64>,
}

impl LiveTrust {
    /// Live trust starting from `state`.
    pub fn new(state: TrustState) -> Arc<Self> {
        Arc::new(Self {
            changes: watch::channel(state.generation).0,
            state: RwLock::new(Arc::new(state)),
        })
    }

    /// The state right now.
    pub fn current(&self) -> Arc<TrustState> {
        match self.state.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, f: impl FnOnce(&TrustState) -> TrustState) {
        let mut g = match self.state.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = f(&g);
        next.generation = g.generation + 1;
        let generation = next.generation;
        *g = Arc::new(next);
        drop(g);
        self.changes.send_replace(generation);
    }

    /// Replaces the authorities and the revoked serials with what `crls`
    /// list (each must be signed by one of `authorities`; the others are
    /// skipped and returned as errors, so one bad CRL never hides the rest).
    pub fn update_from_workload_api(
        &self,
        authorities: Vec<Vec<u8>>,
        crls: &[Vec<u8>],
        now: SystemTime,
    ) -> Vec<SvidError> {
        let mut errors = Vec::new();
        let mut set = RevocationSet::new();
        for der in crls {
            match parse_crl(der, &authorities) {
                Ok(crl) => {
                    let expires = crl.next_update.unwrap_or(now + Duration::from_secs(3600));
                    for s in crl.serials {
                        set.insert(Revocation {
                            kind: RevokedKind::Serial,
                            value: s,
                            revoked_at: unix_secs(crl.this_update),
                            expires_at: unix_secs(expires),
                            reason: "listed in the CRL".into(),
                            issuer: Some(crl.issuer_key_id.clone()),
                        });
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        self.replace(|s| TrustState {
            td: s.td.clone(),
            authorities: Arc::new(authorities),
            revocations: Arc::new(set),
            generation: s.generation,
        });
        errors
    }

    /// Replaces the authorities and the whole revocation set.
    pub fn update(&self, authorities: Arc<Vec<Vec<u8>>>, revocations: Arc<RevocationSet>) {
        self.replace(|s| TrustState {
            td: s.td.clone(),
            authorities,
            revocations,
            generation: s.generation,
        });
    }

    /// A receiver that sees every change (its value is the generation).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until `peer` is revoked: what a server awaits beside each
    /// connection to drop it at once (the certificate's expiry is the
    /// caller's to watch with its own timer).
    pub async fn revoked(&self, peer: &Peer) -> PeerError {
        let mut rx = self.watch();
        loop {
            if let Err(e) = self.current().check_revoked(peer, None) {
                return e;
            }
            // `self` holds the sender, so this only fails if it is dropped
            // while we borrow it, which cannot happen.
            let _ = rx.changed().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix_secs;
    use crate::task::{TaskId, task_claims_oid_der};
    use crate::x509::{SvidKey, SvidParams, X509Authority};

    const T0: u64 = 1_800_000_000;

    #[test]
    fn the_validator_checks_revocation_and_task_requirements() {
        let td = TrustDomain::new("td").unwrap();
        let now = from_unix_secs(T0);
        let ca = X509Authority::generate_root(&td, now, Duration::from_secs(3600)).unwrap();
        let id = SpiffeId::new("spiffe://td/agent").unwrap();
        let key = SvidKey::generate().unwrap();
        let claims = TaskClaims {
            task_id: TaskId::from_random([7; 16]),
            task_type: "report".into(),
            tools: vec!["crm.read".into()],
            data_sensitivity: "internal".into(),
            grant_digest: [0; 32],
            on_behalf_of: None,
            not_after: Some(now + Duration::from_secs(120)),
            parent_task_id: None,
            destinations: vec![],
        };
        let params = SvidParams {
            spiffe_id: id.clone(),
            dns_names: vec![],
            ttl: Duration::from_secs(60),
            extensions: vec![(task_claims_oid_der(), claims.to_der())],
        };
        let svid = ca
            .sign_x509_svid(&key.csr(&id).unwrap(), &params, now)
            .unwrap();
        let chain = vec![svid.cert_der.clone()];
        let live = LiveTrust::new(TrustState::new(td, vec![ca.cert_der().to_vec()]));
        let tool = |t: &str| Requirements {
            tool: Some(t.into()),
            ..Requirements::default()
        };
        let peer = live
            .current()
            .validate(&chain, PeerUsage::Client, &tool("crm.read"), now)
            .unwrap();
        assert_eq!(
            peer.claims.as_ref().map(|c| c.task_id.clone()),
            Some(claims.task_id.clone())
        );
        assert!(matches!(
            live.current()
                .validate(&chain, PeerUsage::Client, &tool("email.send"), now),
            Err(PeerError::Claims(_))
        ));
        let late = now + Duration::from_secs(130);
        assert!(
            live.current()
                .validate(&chain, PeerUsage::Client, &Requirements::default(), late)
                .is_err()
        );
        // A CRL from the CA listing the serial revokes it; the watch fires.
        let mut watch = live.watch();
        let crl = ca
            .sign_crl(
                &[crate::x509::CrlEntry {
                    serial: svid.serial.clone(),
                    revoked_at: now,
                }],
                1,
                now,
                Duration::from_secs(600),
            )
            .unwrap();
        let errors = live.update_from_workload_api(
            vec![ca.cert_der().to_vec()],
            &[crl, b"junk".to_vec()],
            now,
        );
        assert_eq!(errors.len(), 1);
        assert!(watch.has_changed().unwrap());
        watch.mark_unchanged();
        assert!(matches!(
            live.current()
                .validate(&chain, PeerUsage::Client, &Requirements::default(), now),
            Err(PeerError::Revoked {
                kind: RevokedKind::Serial,
                ..
            })
        ));
        // A revoked task ID refuses every credential carrying it.
        let set = RevocationSet::from_items([Revocation {
            kind: RevokedKind::Task,
            value: claims.task_id.to_string(),
            revoked_at: T0,
            expires_at: T0 + 120,
            reason: "revoked by operator".into(),
            issuer: None,
        }]);
        live.update(Arc::new(vec![ca.cert_der().to_vec()]), Arc::new(set));
        let err = live
            .current()
            .validate(&chain, PeerUsage::Client, &Requirements::default(), now)
            .unwrap_err();
        assert!(err.to_string().contains("revoked by operator"), "{err}");
    }
}
