//! `k8s_psat`: an agent proves its node with the projected service
//! account token the kubelet mounted into its pod. The server checks the
//! token against the cluster's service-account issuer keys (a JWKS file,
//! or the issuer's JWKS URL), never calling the cluster's API: signature,
//! issuer, audience, lifetime, and that the token's namespace and service
//! account are one of those allowed to run agents.
//!
//! Agent ID: `spiffe://TD/lanyard/agent/k8s_psat/CLUSTER/NODE_UID`.
//! Node selectors: `k8s_psat:cluster:`, `k8s_psat:agent_ns:`,
//! `k8s_psat:agent_sa:`, `k8s_psat:agent_node_name:`,
//! `k8s_psat:agent_node_uid:`, `k8s_psat:agent_pod_name:`,
//! `k8s_psat:agent_pod_uid:`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_core::clock::Clock;
use lanyard_core::jwt::{JwtAuthority, JwtError, parse_jwks};
use lanyard_core::k8s::{PsatError, PsatExpectations, validate_psat};
use lanyard_core::{Selector, TrustDomain};

use super::{Attested, NodeAttestor, digest};
use crate::attestation::AttestationError;

/// Keys are re-read at least this often.
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// An unknown `kid` forces a re-read at most this often (a flood of
/// tokens with made-up key IDs costs one read per interval).
pub const JWKS_FORCED_REFRESH: Duration = Duration::from_secs(10);
/// Largest attestation evidence accepted.
const MAX_EVIDENCE: usize = 32 * 1024;

/// Where a cluster's issuer keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document on disk (e.g. a ConfigMap copy of
    /// `kubectl get --raw /openid/v1/jwks`).
    File(PathBuf),
    /// A JWKS URL over HTTPS (e.g. `https://kubernetes.default.svc/openid/v1/jwks`
    /// with the pod's CA and token, or a cloud issuer's public JWKS).
    Url {
        /// The URL.
        url: String,
        /// HTTPS client (trust configured).
        client: lanyard_fetch::Client,
        /// Bearer token file sent with the request, re-read each time.
        token_file: Option<PathBuf>,
    },
    /// The issuer's OIDC discovery document (its `jwks_uri` names the
    /// keys; its `issuer` must be the cluster's).
    Discovery {
        /// The discovery document's URL.
        url: String,
        /// HTTPS client (trust configured), for both requests.
        client: lanyard_fetch::Client,
        /// Bearer token file sent with both requests.
        token_file: Option<PathBuf>,
    },
}

/// One configured cluster.
#[derive(Debug, Clone)]
pub struct PsatCluster {
    /// Its name in agent IDs and selectors.
    pub name: String,
    /// The service-account issuer (`iss`).
    pub issuer: String,
    /// The audience agents request their token for.
    pub audience: String,
    /// `namespace:service_account` pairs allowed to attest.
    pub allowed: BTreeSet<String>,
    /// Where its keys are.
    pub jwks: JwksSource,
}

struct Keys {
    keys: Arc<Vec<JwtAuthority>>,
    loaded: Option<Instant>,
    forced: Option<Instant>,
    /// A JWKS file's modification time and size when it was read: a
    /// changed file is re-read at once (a stat is cheap).
    file_stamp: Option<(std::time::SystemTime, u64)>,
}

fn stamp(source: &JwksSource) -> Option<(std::time::SystemTime, u64)> {
    match source {
        JwksSource::File(p) => std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len()))),
        JwksSource::Url { .. } | JwksSource::Discovery { .. } => None,
    }
}

struct ClusterState {
    cfg: PsatCluster,
    keys: tokio::sync::Mutex<Keys>,
}

/// The `k8s_psat` attestor.
pub struct PsatAttestor {
    td: TrustDomain,
    clock: Arc<dyn Clock>,
    clusters: BTreeMap<String, ClusterState>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Evidence {
    cluster: String,
    token: String,
}

fn refused(why: impl Into<String>) -> AttestationError {
    AttestationError::Refused(why.into())
}

impl PsatAttestor {
    /// An attestor for `clusters`.
    pub fn new(td: TrustDomain, clock: Arc<dyn Clock>, clusters: Vec<PsatCluster>) -> Self {
        let clusters = clusters
            .into_iter()
            .map(|cfg| {
                (
                    cfg.name.clone(),
                    ClusterState {
                        cfg,
                        keys: tokio::sync::Mutex::new(Keys {
                            keys: Arc::default(),
                            loaded: None,
                            forced: None,
                            file_stamp: None,
                        }),
                    },
                )
            })
            .collect();
        Self {
            td,
            clock,
            clusters,
        }
    }

    /// Reads every cluster's keys once, so a bad file or URL is reported
    /// at start (a cluster whose keys cannot be read refuses its agents
    /// until they can).
    pub async fn preload(&self) {
        for c in self.clusters.values() {
            let mut k = c.keys.lock().await;
            if let Err(e) = reload(&c.cfg, &mut k).await {
                tracing::warn!(cluster = %c.cfg.name, err = %e, "cannot read the cluster's service-account issuer keys");
            }
        }
    }

    async fn keys(
        &self,
        c: &ClusterState,
        force: bool,
    ) -> Result<Arc<Vec<JwtAuthority>>, AttestationError> {
        let mut k = c.keys.lock().await;
        let changed_file = force && {
            let now = stamp(&c.cfg.jwks);
            now.is_some() && now != k.file_stamp
        };
        let stale = changed_file || k.loaded.is_none_or(|t| t.elapsed() >= JWKS_REFRESH);
        let may_force = force && k.forced.is_none_or(|t| t.elapsed() >= JWKS_FORCED_REFRESH);
        if stale || may_force {
            if may_force {
                k.forced = Some(Instant::now());
            }
            if let Err(e) = reload(&c.cfg, &mut k).await {
                tracing::warn!(cluster = %c.cfg.name, err = %e, "cannot refresh the cluster's service-account issuer keys");
                if k.keys.is_empty() {
                    return Err(refused(format!(
                        "the issuer keys of cluster {:?} are unavailable: {e}",
                        c.cfg.name
                    )));
                }
            }
        }
        Ok(k.keys.clone())
    }
}

async fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    match file {
        Some(f) => Ok(Some(
            tokio::fs::read_to_string(f)
                .await
                .map_err(|e| format!("{}: {e}", f.display()))?
                .trim()
                .to_owned(),
        )),
        None => Ok(None),
    }
}

async fn reload(cfg: &PsatCluster, k: &mut Keys) -> Result<(), String> {
    let file_stamp = stamp(&cfg.jwks);
    let bytes = match &cfg.jwks {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?,
        JwksSource::Url {
            url,
            client,
            token_file,
        } => {
            let token = read_token(token_file.as_deref()).await?;
            client
                .get(url, token.as_deref())
                .await
                .map_err(|e| e.to_string())?
                .to_vec()
        }
        JwksSource::Discovery {
            url,
            client,
            token_file,
        } => {
            #[derive(serde::Deserialize)]
            struct Discovery {
                issuer: String,
                jwks_uri: String,
            }
            let token = read_token(token_file.as_deref()).await?;
            let doc = client
                .get(url, token.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let doc: Discovery = serde_json::from_slice(&doc)
                .map_err(|e| format!("{url}: not an OIDC discovery document: {e}"))?;
            if doc.issuer != cfg.issuer {
                return Err(format!(
                    "{url}: the discovery document is for issuer {:?}, not {:?}",
                    doc.issuer, cfg.issuer
                ));
            }
            client
                .get(&doc.jwks_uri, token.as_deref())
                .await
                .map_err(|e| e.to_string())?
                .to_vec()
        }
    };
    let keys = parse_jwks(&bytes).map_err(|e| e.to_string())?;
    if keys.is_empty() {
        return Err("the JWKS holds no signing key".into());
    }
    if *k.keys != keys {
        tracing::info!(cluster = %cfg.name, keys = keys.len(), "service-account issuer keys loaded");
    }
    k.keys = Arc::new(keys);
    k.loaded = Some(Instant::now());
    k.file_stamp = file_stamp;
    Ok(())
}

#[async_trait::async_trait]
impl NodeAttestor for PsatAttestor {
    fn name(&self) -> &'static str {
        "k8s_psat"
    }

    async fn attest(&self, data: &[u8]) -> Result<Attested, AttestationError> {
        if data.len() > MAX_EVIDENCE {
            return Err(refused("k8s_psat evidence is too large"));
        }
        let ev: Evidence = serde_json::from_slice(data).map_err(|e| {
            refused(format!(
                "k8s_psat evidence must be JSON {{\"cluster\": NAME, \"token\": TOKEN}}: {e}"
            ))
        })?;
        let c = self.clusters.get(&ev.cluster).ok_or_else(|| {
            refused(format!(
                "cluster {:?} is not configured for k8s_psat (configured: {})",
                ev.cluster.chars().take(64).collect::<String>(),
                self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let expect = PsatExpectations {
            issuer: &c.cfg.issuer,
            audience: &c.cfg.audience,
        };
        let now = self.clock.now();
        let keys = self.keys(c, false).await?;
        let claims = match validate_psat(&ev.token, &keys, expect, now) {
            // A key the issuer rotated in since the last read.
            Err(PsatError::Token(JwtError::UnknownKid(_))) => {
                let keys = self.keys(c, true).await?;
                validate_psat(&ev.token, &keys, expect, now)
            }
            other => other,
        }
        .map_err(|e| match e {
            PsatError::Token(JwtError::UnknownKid(kid)) => refused(format!(
                "service account token: key ID {kid:?} is not among the issuer keys of cluster {:?}",
                c.cfg.name
            )),
            e => refused(format!("service account token: {e}")),
        })?;
        let pair = format!("{}:{}", claims.namespace, claims.service_account);
        if !c.cfg.allowed.contains(&pair) {
            return Err(refused(format!(
                "service account {pair} of cluster {:?} may not attest agents",
                c.cfg.name
            )));
        }
        let agent_id = self
            .td
            .id_with_segments([
                "lanyard",
                "agent",
                "k8s_psat",
                &c.cfg.name,
                &claims.node_uid,
            ])
            .map_err(|e| refused(format!("node UID {:?}: {e}", claims.node_uid)))?;
        let selectors = [
            ("cluster", &c.cfg.name),
            ("agent_ns", &claims.namespace),
            ("agent_sa", &claims.service_account),
            ("agent_node_name", &claims.node_name),
            ("agent_node_uid", &claims.node_uid),
            ("agent_pod_name", &claims.pod_name),
            ("agent_pod_uid", &claims.pod_uid),
        ]
        .iter()
        .filter_map(|(k, v)| Selector::new("k8s_psat", &format!("{k}:{v}")).ok())
        .collect();
        Ok(Attested {
            agent_id,
            selectors,
            evidence_digest: Some(digest(ev.token.as_bytes())),
        })
    }
}
