//! The `[[k8s_psat]]` tables of the server configuration: one per cluster
//! whose agents attest with projected service account tokens.
//!
//! ```toml
//! [[k8s_psat]]
//! cluster = "prod"
//! issuer = "https://kubernetes.default.svc.cluster.local"
//! service_accounts = ["lanyard:lanyard-agent"]
//! jwks_file = "/etc/lanyard/k8s/prod-jwks.json"
//! # or: jwks_url = "https://kubernetes.default.svc/openid/v1/jwks"
//! # or: discovery_url = "https://kubernetes.default.svc/.well-known/openid-configuration"
//! #     jwks_ca_file = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
//! #     jwks_token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use lanyard_core::config::ConfigError;

use crate::node_attest::{JwksSource, PsatCluster};

/// Default audience agents request their token for.
pub const DEFAULT_PSAT_AUDIENCE: &str = "lanyard-server";

/// One `[[k8s_psat]]` table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPsatCluster {
    /// Cluster name (in agent IDs and selectors).
    pub cluster: Option<String>,
    /// The cluster's service-account issuer (`iss` of its tokens).
    pub issuer: Option<String>,
    /// Token audience (default `lanyard-server`).
    pub audience: Option<String>,
    /// `namespace:service_account` pairs allowed to attest agents.
    pub service_accounts: Option<Vec<String>>,
    /// The issuer's JWKS on disk.
    pub jwks_file: Option<PathBuf>,
    /// The issuer's JWKS over HTTPS.
    pub jwks_url: Option<String>,
    /// The issuer's OIDC discovery document over HTTPS (its `jwks_uri`
    /// is followed).
    pub discovery_url: Option<String>,
    /// PEM CA for `jwks_url`.
    pub jwks_ca_file: Option<PathBuf>,
    /// Bearer token file sent to `jwks_url`.
    pub jwks_token_file: Option<PathBuf>,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Checks every table.
pub fn validate(raw: Vec<RawPsatCluster>) -> Result<Vec<PsatCluster>, ConfigError> {
    const F: &str = "k8s_psat";
    let mut out: Vec<PsatCluster> = Vec::new();
    for r in raw {
        let name = r
            .cluster
            .ok_or_else(|| ConfigError::invalid(F, "every [[k8s_psat]] needs cluster = NAME"))?;
        if !name_ok(&name) {
            return Err(ConfigError::invalid(
                F,
                format!("cluster {name:?} must be 1-63 lowercase letters, digits, '-' or '.'"),
            ));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(ConfigError::invalid(
                F,
                format!("cluster {name:?} is configured twice"),
            ));
        }
        let issuer = r.issuer.filter(|i| !i.is_empty()).ok_or_else(|| {
            ConfigError::invalid(F, format!("cluster {name:?} needs issuer = the service-account issuer URL (`kubectl get --raw /.well-known/openid-configuration`)"))
        })?;
        let mut allowed = BTreeSet::new();
        for pair in r.service_accounts.unwrap_or_default() {
            match pair.split_once(':') {
                Some((ns, sa)) if name_ok(ns) && name_ok(sa) => {
                    allowed.insert(pair.clone());
                }
                _ => {
                    return Err(ConfigError::invalid(
                        F,
                        format!(
                            "service account {pair:?} of cluster {name:?} must be NAMESPACE:NAME"
                        ),
                    ));
                }
            }
        }
        if allowed.is_empty() {
            return Err(ConfigError::invalid(
                F,
                format!(
                    "cluster {name:?} needs service_accounts = [\"NAMESPACE:NAME\"] (the agents' service account)"
                ),
            ));
        }
        let https = |ca: Option<PathBuf>| {
            let ca = ca.ok_or_else(|| {
                ConfigError::invalid(F, format!("cluster {name:?}: jwks_url and discovery_url need jwks_ca_file (the PEM CA of the issuer's certificate)"))
            })?;
            lanyard_fetch::Client::with_ca_file(&ca, Duration::from_secs(10), 1 << 20)
                .map_err(|e| ConfigError::invalid(F, e.to_string()))
        };
        let jwks = match (r.jwks_file, r.jwks_url, r.discovery_url) {
            (Some(f), None, None) => {
                if r.jwks_ca_file.is_some() || r.jwks_token_file.is_some() {
                    return Err(ConfigError::invalid(
                        F,
                        "jwks_ca_file and jwks_token_file go with jwks_url or discovery_url",
                    ));
                }
                JwksSource::File(f)
            }
            (None, Some(url), None) => JwksSource::Url {
                url,
                client: https(r.jwks_ca_file)?,
                token_file: r.jwks_token_file,
            },
            (None, None, Some(url)) => JwksSource::Discovery {
                url,
                client: https(r.jwks_ca_file)?,
                token_file: r.jwks_token_file,
            },
            _ => {
                return Err(ConfigError::invalid(
                    F,
                    format!(
                        "cluster {name:?} needs exactly one of jwks_file, jwks_url or discovery_url"
                    ),
                ));
            }
        };
        out.push(PsatCluster {
            name,
            issuer,
            audience: r.audience.unwrap_or_else(|| DEFAULT_PSAT_AUDIENCE.into()),
            allowed,
            jwks,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_checked_with_reasons() {
        let ok = RawPsatCluster {
            cluster: Some("prod".into()),
            issuer: Some("https://kubernetes.default.svc.cluster.local".into()),
            service_accounts: Some(vec!["lanyard:lanyard-agent".into()]),
            jwks_file: Some("/etc/jwks.json".into()),
            ..Default::default()
        };
        let c = validate(vec![ok.clone()]).unwrap();
        assert_eq!(c[0].audience, "lanyard-server");
        for (bad, why) in [
            (
                RawPsatCluster {
                    cluster: Some("Prod!".into()),
                    ..ok.clone()
                },
                "lowercase",
            ),
            (
                RawPsatCluster {
                    issuer: None,
                    ..ok.clone()
                },
                "issuer",
            ),
            (
                RawPsatCluster {
                    service_accounts: Some(vec![]),
                    ..ok.clone()
                },
                "service_accounts",
            ),
            (
                RawPsatCluster {
                    service_accounts: Some(vec!["nocolon".into()]),
                    ..ok.clone()
                },
                "NAMESPACE:NAME",
            ),
            (
                RawPsatCluster {
                    jwks_url: Some("https://x".into()),
                    ..ok.clone()
                },
                "exactly one",
            ),
            (
                RawPsatCluster {
                    jwks_file: None,
                    jwks_url: Some("https://x".into()),
                    ..ok.clone()
                },
                "jwks_ca_file",
            ),
        ] {
            let e = validate(vec![bad]).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let e = validate(vec![ok.clone(), ok]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn the_kubernetes_manifests_server_config_parses() {
        for text in [
            include_str!("../../../deploy/kubernetes/base/server.toml"),
            include_str!("../../../deploy/kubernetes/overlays/example/server.toml"),
        ] {
            let raw: crate::config::RawConfig = toml::from_str(text).unwrap();
            let clusters = raw.k8s_psat.clone().unwrap();
            assert_eq!(clusters.len(), 1);
            assert!(clusters[0].jwks_url.is_some());
            // Everything but the CA file (only inside a pod) validates.
            let mut file_based = raw;
            if let Some(c) = file_based.k8s_psat.as_mut() {
                c[0].jwks_url = None;
                c[0].jwks_ca_file = None;
                c[0].jwks_token_file = None;
                c[0].jwks_file = Some("/nonexistent/jwks.json".into());
            }
            let cfg = file_based.validate().unwrap();
            assert_eq!(cfg.psat_clusters[0].allowed.len(), 1);
            assert!(cfg.metrics_bind.is_some());
        }
    }
}
