//! The kubelet's pod list (`GET /pods` on the kubelet port: a `v1.PodList`)
//! and the selectors of one container in it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::cgroup::ContainerRef;
use crate::selector::Selector;

/// Largest pod list read from the kubelet.
pub const MAX_POD_LIST_BYTES: usize = 64 << 20;

/// The members of a `v1.PodList` the attestor reads (others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodList {
    /// The pods.
    #[serde(default)]
    pub items: Vec<Pod>,
}

/// One pod.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    /// Name, namespace, UID, labels.
    #[serde(default)]
    pub metadata: Metadata,
    /// Service account, node, containers.
    #[serde(default)]
    pub spec: Spec,
    /// Running containers and their IDs.
    #[serde(default)]
    pub status: Status,
}

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// Pod name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// UID.
    #[serde(default)]
    pub uid: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Service account the pod runs as.
    #[serde(default)]
    pub service_account_name: String,
    /// The node it is scheduled on.
    #[serde(default)]
    pub node_name: String,
}

/// `status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Regular containers.
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    /// Init containers.
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// Ephemeral (debug) containers.
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

/// One entry of `containerStatuses`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Image as the runtime reports it.
    #[serde(default)]
    pub image: String,
    /// Image digest reference.
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
}

impl PodList {
    /// Parses the kubelet's answer.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        if json.len() > MAX_POD_LIST_BYTES {
            return Err("pod list too large".into());
        }
        serde_json::from_slice(json).map_err(|e| format!("pod list is not a v1.PodList: {e}"))
    }

    /// The pod and container status of `container`: found by container ID,
    /// and when the cgroup also names a pod UID, that pod's UID must match.
    pub fn find(&self, container: &ContainerRef) -> Option<(&Pod, &ContainerStatus)> {
        self.items.iter().find_map(|pod| {
            if container
                .pod_uid
                .as_deref()
                .is_some_and(|u| u != pod.metadata.uid)
            {
                return None;
            }
            let s = &pod.status;
            s.container_statuses
                .iter()
                .chain(&s.init_container_statuses)
                .chain(&s.ephemeral_container_statuses)
                .find(|c| {
                    c.container_id
                        .split_once("://")
                        .is_some_and(|(_, id)| id == container.container_id)
                })
                .map(|c| (pod, c))
        })
    }
}

/// The `k8s:` selectors of a container in a pod: `ns`, `sa`, `pod-name`,
/// `pod-uid`, `pod-label:KEY:VALUE` for each label, `container-name`,
/// `container-image` (the image and, when known, its digest reference),
/// `node-name`. Values a selector cannot hold are left out.
pub fn selectors_for(pod: &Pod, container: &ContainerStatus) -> Vec<Selector> {
    let m = &pod.metadata;
    let mut values = vec![
        format!("ns:{}", m.namespace),
        format!("sa:{}", pod.spec.service_account_name),
        format!("pod-name:{}", m.name),
        format!("pod-uid:{}", m.uid),
        format!("container-name:{}", container.name),
        format!("container-image:{}", container.image),
        format!("node-name:{}", pod.spec.node_name),
    ];
    if !container.image_id.is_empty() && container.image_id != container.image {
        values.push(format!("container-image:{}", container.image_id));
    }
    values.extend(m.labels.iter().map(|(k, v)| format!("pod-label:{k}:{v}")));
    values
        .iter()
        .filter(|v| !v.ends_with(':'))
        .filter_map(|v| Selector::new("k8s", v).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_container_id_and_checks_the_pod_uid() {
        let list = PodList::parse(include_bytes!("../../testdata/kubelet-pods.json")).unwrap();
        let id = "8f3c1e1ad0b2f8a6c4e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
        let c = ContainerRef {
            pod_uid: Some("3b5d4f6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f".into()),
            container_id: id.into(),
        };
        let (pod, status) = list.find(&c).unwrap();
        let got: Vec<String> = selectors_for(pod, status)
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "k8s:ns:agents",
            "k8s:sa:planner",
            "k8s:pod-name:planner-5d8f7c9b4-x2x7q",
            "k8s:pod-uid:3b5d4f6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
            "k8s:pod-label:app:planner",
            "k8s:pod-label:app.kubernetes.io/part-of:research",
            "k8s:container-name:planner",
            "k8s:container-image:ghcr.io/example/planner:1.4.2",
            "k8s:container-image:ghcr.io/example/planner@sha256:4f1e6a1a3bb6d2c7a0e1f3c4b5a6978877665544332211ffeeddccbbaa998877",
            "k8s:node-name:node-1",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
        }
        // The same container ID under another pod UID is no match.
        let wrong = ContainerRef {
            pod_uid: Some("00000000-0000-0000-0000-000000000000".into()),
            ..c.clone()
        };
        assert!(list.find(&wrong).is_none());
        // The sidecar is found too, with its own name.
        let side = ContainerRef {
            pod_uid: None,
            container_id: "1".repeat(64),
        };
        let (_, s) = list.find(&side).unwrap();
        assert_eq!(s.name, "tool-proxy");
        assert!(PodList::parse(b"{not json").is_err());
    }
}
