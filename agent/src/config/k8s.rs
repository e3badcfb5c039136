//! The agent's Kubernetes settings: node attestation with the projected
//! service account token (`node_attestor = "k8s_psat"`, `[k8s_psat]`), and
//! the Kubernetes workload attestor (`[k8s]`).
//!
//! ```toml
//! node_attestor = "k8s_psat"
//! [k8s_psat]
//! cluster = "prod"
//! token_file = "/var/run/secrets/tokens/lanyard-agent"
//! [k8s]
//! node_name = "node-1"            # or $MY_NODE_NAME from the downward API
//! kubelet_url = "https://127.0.0.1:10250"
//! kubelet_ca_file = "/etc/kubernetes/pki/kubelet-ca.crt"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use lanyard_core::config::ConfigError;

/// Default projected token path.
pub const DEFAULT_PSAT_TOKEN_FILE: &str = "/var/run/secrets/tokens/lanyard-agent";
/// Default token for the kubelet (the pod's own service account token).
pub const DEFAULT_SA_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Default kubelet address (the node's own, reached with `hostNetwork`).
pub const DEFAULT_KUBELET_URL: &str = "https://127.0.0.1:10250";

/// `[k8s_psat]`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawK8sPsat {
    /// The cluster name the server knows this cluster by.
    pub cluster: Option<String>,
    /// The projected service account token (re-read at each attestation).
    pub token_file: Option<PathBuf>,
}

/// `[k8s]`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawK8s {
    /// Turn the Kubernetes workload attestor on (default: on when the
    /// table is present).
    pub enabled: Option<bool>,
    /// Only pods of this node are considered.
    pub node_name: Option<String>,
    /// The kubelet's HTTPS address.
    pub kubelet_url: Option<String>,
    /// PEM CA of the kubelet's serving certificate.
    pub kubelet_ca_file: Option<PathBuf>,
    /// The node's own kubelet serving certificate (PEM, e.g.
    /// `/var/lib/kubelet/pki/kubelet.crt` mounted read-only), pinned; it
    /// must name `node_name`.
    pub kubelet_cert_file: Option<PathBuf>,
    /// Do not verify the kubelet's certificate (self-signed kubelets).
    pub kubelet_insecure_skip_verify: Option<bool>,
    /// Bearer token for the kubelet (re-read on each request).
    pub token_file: Option<PathBuf>,
    /// How long a pod list answers before it is fetched again.
    pub pod_list_cache: Option<String>,
    /// Where `/proc` is (the host's, with `hostPID`).
    pub proc_root: Option<PathBuf>,
    /// Where the cgroup hierarchies are mounted (default `/sys/fs/cgroup`):
    /// a caller's container cgroup is checked there (root-owned, the
    /// kubelet's shape) before its pod is believed.
    pub cgroup_root: Option<PathBuf>,
    /// The kubelet's cgroup roots, as path segment names (default
    /// `kubepods`, `kubepods.slice`, `kubelet-kubepods.slice`).
    pub kubelet_cgroup_roots: Option<Vec<String>>,
}

/// How this agent attests its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAttestation {
    /// A join token (`--join-token`, `--join-token-file`).
    JoinToken,
    /// The projected service account token.
    K8sPsat {
        /// Cluster name.
        cluster: String,
        /// Token file.
        token_file: PathBuf,
    },
}

/// The Kubernetes workload attestor's settings.
#[derive(Debug, Clone)]
pub struct K8sSettings {
    /// This node.
    pub node_name: Option<String>,
    /// The kubelet is not verified (development only: warned at start).
    pub insecure_kubelet: bool,
    /// Kubelet URL.
    pub kubelet_url: String,
    /// Kubelet client.
    pub client: lanyard_fetch::Client,
    /// Bearer token file.
    pub token_file: Option<PathBuf>,
    /// Pod list cache lifetime.
    pub pod_list_cache: Duration,
    /// `/proc`.
    pub proc_root: PathBuf,
    /// The cgroup filesystem and the kubelet's roots in it.
    pub cgroups: crate::attestor::CgroupTrust,
}

/// Checks `node_attestor` and `[k8s_psat]`.
pub fn node_attestation(
    attestor: Option<&str>,
    psat: Option<RawK8sPsat>,
) -> Result<NodeAttestation, ConfigError> {
    match attestor.unwrap_or("join_token") {
        "join_token" => {
            if psat.is_some() {
                return Err(ConfigError::invalid(
                    "k8s_psat",
                    "is only used with node_attestor = \"k8s_psat\"",
                ));
            }
            Ok(NodeAttestation::JoinToken)
        }
        "k8s_psat" => {
            let p = psat.unwrap_or_default();
            let cluster = p.cluster.filter(|c| !c.is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    "k8s_psat.cluster",
                    "is required with node_attestor = \"k8s_psat\" (the name the server's [[k8s_psat]] uses)",
                )
            })?;
            Ok(NodeAttestation::K8sPsat {
                cluster,
                token_file: p
                    .token_file
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PSAT_TOKEN_FILE)),
            })
        }
        other => Err(ConfigError::invalid(
            "node_attestor",
            format!("{other:?} is not join_token or k8s_psat"),
        )),
    }
}

/// Checks `[k8s]`.
pub fn k8s(raw: Option<RawK8s>) -> Result<Option<K8sSettings>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    if r.enabled == Some(false) {
        return Ok(None);
    }
    let node_name = r.node_name.filter(|n| !n.is_empty());
    let (trust, insecure_kubelet) = kubelet_trust(
        r.kubelet_ca_file,
        r.kubelet_cert_file,
        r.kubelet_insecure_skip_verify.unwrap_or(false),
        node_name.as_deref(),
    )?;
    let mut client = lanyard_fetch::Client::new(
        trust,
        Duration::from_secs(5),
        lanyard_core::k8s::pods::MAX_POD_LIST_BYTES,
    )
    .map_err(|e| ConfigError::invalid("k8s.kubelet_ca_file", e.to_string()))?;
    // The kubelet's certificate names its node, not the loopback address
    // the agent reaches it on.
    if let Some(n) = &node_name {
        client = client.with_server_name(n.clone());
    }
    let pod_list_cache = match r.pod_list_cache {
        Some(v) => lanyard_core::duration::parse_duration(&v)
            .map_err(|e| ConfigError::invalid("k8s.pod_list_cache", e))?,
        None => Duration::from_secs(5),
    };
    Ok(Some(K8sSettings {
        node_name,
        insecure_kubelet,
        kubelet_url: r.kubelet_url.unwrap_or_else(|| DEFAULT_KUBELET_URL.into()),
        client,
        token_file: Some(
            r.token_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SA_TOKEN_FILE)),
        ),
        pod_list_cache,
        proc_root: r.proc_root.unwrap_or_else(|| PathBuf::from("/proc")),
        cgroups: crate::attestor::CgroupTrust {
            mount: r
                .cgroup_root
                .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            roots: kubelet_roots(r.kubelet_cgroup_roots)?,
            own: Default::default(),
        },
    }))
}

/// How the kubelet is verified: against a CA (`kubelet_ca_file`), or by
/// pinning its own serving certificate read from the node
/// (`kubelet_cert_file`, which must name this node), or not at all
/// (`kubelet_insecure_skip_verify`, development only); true for the last.
fn kubelet_trust(
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    insecure: bool,
    node_name: Option<&str>,
) -> Result<(lanyard_fetch::Trust, bool), ConfigError> {
    match (ca_file, cert_file, insecure) {
        (Some(p), None, false) => {
            let pem = std::fs::read(&p).map_err(|e| ConfigError::Read(p.clone(), e))?;
            Ok((lanyard_fetch::Trust::Pem(pem), false))
        }
        (None, Some(p), false) => {
            let field = "k8s.kubelet_cert_file";
            let text = std::fs::read(&p).map_err(|e| ConfigError::Read(p.clone(), e))?;
            let der = pem::parse(&text)
                .map_err(|e| ConfigError::invalid(field, format!("{}: {e}", p.display())))?
                .into_contents();
            let info = lanyard_core::x509::CertInfo::parse(&der)
                .map_err(|e| ConfigError::invalid(field, format!("{}: {e}", p.display())))?;
            let node = node_name.ok_or_else(|| {
                ConfigError::invalid(
                    "k8s.node_name",
                    "is required with kubelet_cert_file (the pinned certificate must be this node's; set it, or LANYARD_K8S_NODE_NAME from the pod's spec.nodeName)",
                )
            })?;
            if !info.dns_sans.iter().any(|d| d == node) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{} is not a certificate for node {node:?} (it names {:?})",
                        p.display(),
                        info.dns_sans
                    ),
                ));
            }
            Ok((lanyard_fetch::Trust::Pinned(der), false))
        }
        (None, None, true) => Ok((lanyard_fetch::Trust::Insecure, true)),
        (None, None, false) => Err(ConfigError::invalid(
            "k8s.kubelet_ca_file",
            "is required to verify the kubelet, or kubelet_cert_file to pin the node's own kubelet certificate (kubelet_insecure_skip_verify = true skips verification: development only)",
        )),
        _ => Err(ConfigError::invalid(
            "k8s.kubelet_ca_file",
            "kubelet_ca_file, kubelet_cert_file and kubelet_insecure_skip_verify are mutually exclusive",
        )),
    }
}

/// The kubelet's cgroup roots: each one path segment.
fn kubelet_roots(raw: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(roots) = raw else {
        return Ok(lanyard_core::k8s::cgroup::DEFAULT_KUBELET_ROOTS
            .map(String::from)
            .to_vec());
    };
    if roots.is_empty() {
        return Err(ConfigError::invalid(
            "k8s.kubelet_cgroup_roots",
            "needs at least one root (e.g. \"kubepods.slice\")",
        ));
    }
    if let Some(bad) = roots
        .iter()
        .find(|r| r.is_empty() || r.contains('/') || *r == "." || *r == "..")
    {
        return Err(ConfigError::invalid(
            "k8s.kubelet_cgroup_roots",
            format!("{bad:?} is not one path segment (e.g. \"kubepods.slice\")"),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed kubelet serving certificate for `node`, as PEM.
    fn kubelet_cert(node: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![node.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[test]
    fn the_kubernetes_manifests_agent_config_validates() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("kubelet.crt");
        std::fs::write(&cert, kubelet_cert("node-1")).unwrap();
        for text in [
            include_str!("../../../deploy/kubernetes/base/agent.toml"),
            include_str!("../../../deploy/kubernetes/overlays/example/agent.toml"),
        ] {
            let mut raw: crate::config::RawConfig = toml::from_str(text).unwrap();
            // The DaemonSet mounts the node's kubelet certificate and sets
            // the node's name (LANYARD_K8S_NODE_NAME) from spec.nodeName.
            let k = raw.k8s.as_mut().unwrap();
            assert_eq!(
                k.kubelet_cert_file.as_deref(),
                Some(std::path::Path::new(
                    "/host/var/lib/kubelet/pki/kubelet.crt"
                )),
                "the shipped configs verify the kubelet by default"
            );
            assert_eq!(k.kubelet_insecure_skip_verify, None);
            k.kubelet_cert_file = Some(cert.clone());
            k.node_name = Some("node-1".into());
            let cfg = raw.validate().unwrap();
            assert!(matches!(
                cfg.node_attestation,
                NodeAttestation::K8sPsat { .. }
            ));
            assert!(cfg.k8s.is_some());
            assert!(cfg.metrics_bind.is_some());
        }
        // Only the development overlay skips verification, and says so.
        let dev: crate::config::RawConfig = toml::from_str(include_str!(
            "../../../deploy/kubernetes/overlays/dev-insecure-kubelet/agent.toml"
        ))
        .unwrap();
        assert!(dev.validate().unwrap().k8s.unwrap().insecure_kubelet);
    }

    #[test]
    fn settings_are_checked_with_reasons() {
        let e = node_attestation(Some("aws_iid"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not join_token or k8s_psat"), "{e}");
        let e = node_attestation(Some("k8s_psat"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k8s_psat.cluster"), "{e}");
        let e = node_attestation(None, Some(RawK8sPsat::default()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only used with"), "{e}");
        let e = k8s(Some(RawK8s::default())).unwrap_err().to_string();
        assert!(e.contains("kubelet_ca_file"), "{e}");
        // A pinned certificate must be this node's, and the node named.
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("kubelet.crt");
        std::fs::write(&cert, kubelet_cert("node-1")).unwrap();
        let pinned = |node: Option<&str>| RawK8s {
            kubelet_cert_file: Some(cert.clone()),
            node_name: node.map(str::to_owned),
            ..Default::default()
        };
        let e = k8s(Some(pinned(Some("node-2")))).unwrap_err().to_string();
        assert!(e.contains("not a certificate for node \"node-2\""), "{e}");
        let e = k8s(Some(pinned(None))).unwrap_err().to_string();
        assert!(e.contains("node_name"), "{e}");
        let ok = k8s(Some(pinned(Some("node-1")))).unwrap().unwrap();
        assert!(!ok.insecure_kubelet);
        let e = k8s(Some(RawK8s {
            kubelet_insecure_skip_verify: Some(true),
            ..pinned(Some("node-1"))
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("mutually exclusive"), "{e}");
        let insecure = k8s(Some(RawK8s {
            kubelet_insecure_skip_verify: Some(true),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert!(insecure.insecure_kubelet);
        assert!(
            k8s(Some(RawK8s {
                enabled: Some(false),
                ..Default::default()
            }))
            .unwrap()
            .is_none()
        );
    }
}
