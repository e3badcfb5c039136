//! Getting the agent's first identity: reuse the SVID stored in the data
//! directory, or attest with a join token.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::clock::Clock;
use lanyard_core::tls::{InsecureBootstrapVerifier, SpiffeServerVerifier, StaticBundle};
use lanyard_core::x509::{PeerUsage, SvidKey, pem_to_der_certs, validate_x509_svid};
use lanyard_proto::server::AttestAgentRequest;
use rustls::client::danger::ServerCertVerifier;

use crate::config::{Bootstrap, Config};
use crate::storage::AgentStorage;
use crate::upstream::client::{node_client_with, tls_config};
use crate::upstream::creds::{AgentIdentity, Credentials};

/// Why the agent could not obtain an identity.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No stored SVID and no join token.
    #[error(
        "no stored agent SVID in the data directory; pass --join-token (from `lanyard-server token generate`)"
    )]
    NeedToken,
    /// A token but no way to authenticate the server.
    #[error(
        "pass --trust-bundle FILE (from `lanyard-server bundle show`) or --insecure-bootstrap to attest with a join token"
    )]
    NeedTrust,
    /// The trust bundle file is unreadable or invalid.
    #[error("trust bundle {0}: {1}")]
    TrustBundle(String, String),
    /// The server refused the attestation.
    #[error("server refused attestation: {0}")]
    Refused(String),
    /// The server could not be reached.
    #[error("cannot reach server {0}: {1}")]
    Unreachable(String, String),
    /// The server's certificate does not chain to the trust bundle or has
    /// the wrong SPIFFE ID.
    #[error("server {0} is not trusted: {1}")]
    ServerNotTrusted(String, String),
    /// Something else failed.
    #[error("{0}")]
    Other(String),
}

/// Loads or obtains the agent identity and puts it into `creds`.
pub async fn ensure_identity(
    cfg: &Config,
    storage: &AgentStorage,
    creds: &Arc<Credentials>,
    clock: &dyn Clock,
) -> Result<(), BootstrapError> {
    let stored = match storage.load() {
        Ok(Some(stored)) => match AgentIdentity::new(stored.chain, stored.key_pkcs8) {
            Ok(id)
                if id.not_after > clock.now() && id.spiffe_id.is_member_of(&cfg.trust_domain) =>
            {
                Some((id, stored.bundle))
            }
            Ok(id) => {
                tracing::warn!(agent_id = %id.spiffe_id, "stored agent SVID has expired or is for another trust domain");
                None
            }
            Err(err) => {
                tracing::warn!(%err, "stored agent SVID is unusable");
                None
            }
        },
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(%err, "cannot read stored agent SVID");
            None
        }
    };
    // A join token not used before means the operator wants a fresh
    // attestation (after an eviction, say): it wins over the stored SVID.
    let new_token = cfg.join_token.as_deref().filter(|t| {
        storage.used_token_hash().as_deref() != Some(crate::storage::token_hash(t).as_str())
    });
    let use_stored = |(id, bundle): (AgentIdentity, Vec<Vec<u8>>)| {
        tracing::info!(agent_id = %id.spiffe_id, not_after = ?id.not_after, "using stored agent SVID");
        creds.set_bundle(Arc::new(bundle));
        creds.set_identity(Some(Arc::new(id)));
    };
    if let crate::config::k8s::NodeAttestation::K8sPsat {
        cluster,
        token_file,
    } = &cfg.node_attestation
    {
        // A live stored SVID is used as it is; otherwise (first start, or
        // the SVID expired while the agent was down) attest again with
        // the token the kubelet keeps fresh.
        if let Some(s) = stored {
            use_stored(s);
            return Ok(());
        }
        let evidence = Evidence::psat(cluster, token_file)?;
        return attest(cfg, storage, creds, clock, &evidence).await;
    }
    let token = match (stored, new_token) {
        (Some(s), None) => {
            use_stored(s);
            return Ok(());
        }
        (None, None) => cfg.join_token.as_deref().ok_or(BootstrapError::NeedToken)?,
        (Some(s), Some(t)) => {
            match attest(cfg, storage, creds, clock, &Evidence::join_token(t)).await {
                // The token may be one a previous version used without
                // recording it: keep serving with the stored SVID.
                Err(BootstrapError::Refused(why)) => {
                    tracing::warn!(%why, "join token refused; continuing with the stored agent SVID");
                    use_stored(s);
                    return Ok(());
                }
                other => return other,
            }
        }
        (None, Some(t)) => t,
    };
    attest(cfg, storage, creds, clock, &Evidence::join_token(token)).await
}

/// What the agent presents to the server's node attestor.
pub struct Evidence {
    attestor: &'static str,
    data: Vec<u8>,
    join_token: Option<String>,
}

impl Evidence {
    fn join_token(token: &str) -> Self {
        Self {
            attestor: "join_token",
            data: vec![],
            join_token: Some(token.to_owned()),
        }
    }

    /// The projected service account token, read afresh from its file
    /// (the kubelet rotates it).
    pub fn psat(cluster: &str, token_file: &std::path::Path) -> Result<Self, BootstrapError> {
        let token = std::fs::read_to_string(token_file).map_err(|e| {
            BootstrapError::Other(format!(
                "cannot read the service account token {}: {e} (mount a projected serviceAccountToken volume with audience lanyard-server there)",
                token_file.display()
            ))
        })?;
        let data = serde_json::to_vec(&serde_json::json!({
            "cluster": cluster,
            "token": token.trim(),
        }))
        .map_err(|e| BootstrapError::Other(e.to_string()))?;
        Ok(Self {
            attestor: "k8s_psat",
            data,
            join_token: None,
        })
    }
}

/// Attests with `evidence` and stores the resulting identity.
async fn attest(
    cfg: &Config,
    storage: &AgentStorage,
    creds: &Arc<Credentials>,
    clock: &dyn Clock,
    evidence: &Evidence,
) -> Result<(), BootstrapError> {
    let verifier: Arc<dyn ServerCertVerifier> = match &cfg.bootstrap {
        Bootstrap::None => return Err(BootstrapError::NeedTrust),
        Bootstrap::Insecure => {
            tracing::warn!(
                "--insecure-bootstrap: the server is not authenticated for the first attestation"
            );
            Arc::new(InsecureBootstrapVerifier::default())
        }
        Bootstrap::TrustBundle(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                BootstrapError::TrustBundle(path.display().to_string(), e.to_string())
            })?;
            let certs = pem_to_der_certs(&bytes).map_err(|e| {
                BootstrapError::TrustBundle(path.display().to_string(), e.to_string())
            })?;
            let server_id = cfg
                .trust_domain
                .id_with_segments(["lanyard", "server"])
                .map_err(|e| BootstrapError::Other(e.to_string()))?;
            Arc::new(SpiffeServerVerifier::new(
                server_id,
                Arc::new(StaticBundle(Arc::new(certs))),
            ))
        }
    };
    let tls = tls_config(verifier, None).map_err(|e| BootstrapError::Other(e.to_string()))?;
    let mut client = node_client_with(&cfg.server, tls, cfg.resolver.clone())
        .map_err(|e| BootstrapError::Other(e.to_string()))?;
    let key = SvidKey::generate().map_err(|e| BootstrapError::Other(e.to_string()))?;
    // The CSR's SPIFFE ID is ignored by the server; any ID of the domain will do.
    let placeholder = cfg
        .trust_domain
        .id_with_segments(["lanyard", "agent"])
        .map_err(|e| BootstrapError::Other(e.to_string()))?;
    let csr = key
        .csr(&placeholder)
        .map_err(|e| BootstrapError::Other(e.to_string()))?;
    let mut attempt = 0u32;
    let resp = loop {
        let req = AttestAgentRequest {
            join_token: evidence.join_token.clone().unwrap_or_default(),
            csr: csr.clone(),
            attestor: evidence.attestor.to_owned(),
            attestation_data: evidence.data.clone(),
        };
        match client.attest_agent(req).await {
            Ok(r) => break r.into_inner(),
            Err(s) if is_tls_rejection(&s) => {
                return Err(BootstrapError::ServerNotTrusted(
                    cfg.server.clone(),
                    tls_reason(&s),
                ));
            }
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < 6 => {
                attempt += 1;
                tracing::warn!(
                    message = s.message(),
                    attempt,
                    "server unavailable; retrying attestation"
                );
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(BootstrapError::Unreachable(
                    cfg.server.clone(),
                    s.message().to_owned(),
                ));
            }
            Err(s) => return Err(BootstrapError::Refused(s.message().to_owned())),
        }
    };
    let svid = resp
        .svid
        .ok_or_else(|| BootstrapError::Other("server sent no SVID".into()))?;
    let bundle = resp
        .bundle
        .ok_or_else(|| BootstrapError::Other("server sent no bundle".into()))?
        .x509_authorities;
    validate_x509_svid(
        &svid.cert_chain,
        &cfg.trust_domain,
        &bundle,
        PeerUsage::Client,
        clock.now(),
    )
    .map_err(|e| BootstrapError::Other(format!("server sent an invalid agent SVID: {e}")))?;
    let identity = AgentIdentity::new(svid.cert_chain, key.pkcs8_der())
        .map_err(|e| BootstrapError::Other(e.to_string()))?;
    storage
        .save_bundle(&bundle)
        .and_then(|()| storage.save_svid(&identity.chain, &identity.key_pkcs8))
        .and_then(|()| match &evidence.join_token {
            Some(t) => storage.save_used_token(t),
            None => Ok(()),
        })
        .map_err(|e| BootstrapError::Other(e.to_string()))?;
    tracing::info!(agent_id = %identity.spiffe_id, attestor = evidence.attestor, "node attested");
    creds.set_bundle(Arc::new(bundle));
    creds.set_identity(Some(Arc::new(identity)));
    Ok(())
}

/// The error chain of a status, as text.
fn chain_text(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        out.push_str(": ");
        out.push_str(&e.to_string());
        src = e.source();
    }
    out
}

/// True when the connection failed because our verifier refused the
/// server's certificate (retrying cannot help).
fn is_tls_rejection(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && chain_text(s).contains("invalid peer certificate")
}

/// Why the server's certificate was refused, and what to do, in words.
fn tls_reason(s: &tonic::Status) -> String {
    let text = chain_text(s);
    const EXPORT: &str =
        "export it again with `lanyard-server bundle show` and pass it with --trust-bundle";
    if text.contains("UnknownIssuer") {
        return format!(
            "the trust bundle does not sign the server's certificate (a bundle of another server or trust domain?); {EXPORT}"
        );
    }
    if text.contains("BadSignature") || text.contains("InvalidSignatureForPublicKey") {
        return format!(
            "the trust bundle does not sign the server's certificate: it is signed by a key the bundle does not hold (the server's CA rotated since the bundle was exported, or the bundle is another server's); {EXPORT}"
        );
    }
    if text.contains("Expired") {
        return "the server's certificate has expired (or this machine's clock is wrong)".into();
    }
    if text.contains("NotValidYet") {
        return "the server's certificate is not valid yet (is this machine's clock right?)".into();
    }
    // Otherwise the verifier's own words, once.
    let from = text.find("invalid peer certificate").unwrap_or(0);
    let rest = &text[from..];
    let first = rest
        .split(": ")
        .take_while(|part| !part.starts_with("transport error"))
        .collect::<Vec<_>>()
        .join(": ");
    first
        .find(": invalid peer certificate")
        .map_or(first.clone(), |i| first[..i].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_refusals_are_said_in_words_once() {
        let st = |m: &str| tonic::Status::unavailable(m.to_owned());
        let chain = "transport error: invalid peer certificate: Other(OtherError(Chain(\"UnknownIssuer\"))): invalid peer certificate: Other(OtherError(Chain(\"UnknownIssuer\")))";
        let r = tls_reason(&st(chain));
        assert!(r.contains("does not sign the server's certificate"), "{r}");
        assert!(!r.contains("UnknownIssuer"));
        let r = tls_reason(&st(
            "invalid peer certificate: InvalidSignatureForPublicKey",
        ));
        assert!(r.contains("rotated"), "{r}");
        let r = tls_reason(&st("invalid peer certificate: Expired"));
        assert!(r.contains("expired"), "{r}");
        let r = tls_reason(&st(
            "invalid peer certificate: wrong SPIFFE ID x: transport error: y: invalid peer certificate: wrong SPIFFE ID x",
        ));
        assert_eq!(r, "invalid peer certificate: wrong SPIFFE ID x");
    }
}
