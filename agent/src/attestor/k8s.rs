//! The Kubernetes workload attestor: the caller's container and pod from
//! its cgroup, then the pod from the kubelet's pod list on this node, as
//! `k8s:` selectors beside the unix ones. A process in no container, or in
//! a container of no pod the kubelet knows, gets the unix selectors only.
//!
//! The pod list is fetched over HTTPS from the kubelet (`GET /pods`, with
//! the agent's service account token), kept for `pod_list_cache`, and
//! fetched again (at most once a second) when a caller's container is not
//! in it: a pod that just started.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_core::Selector;
use lanyard_core::k8s::{ContainerRef, PodList, container_of, selectors_for};

use super::{AttestError, AttestOptions, PeerCred, WorkloadAttestor};
use crate::config::k8s::K8sSettings;

/// A miss fetches the pod list again at most this often.
const MISS_REFETCH: Duration = Duration::from_secs(1);

struct Cached {
    at: Instant,
    pods: Arc<PodList>,
}

/// Unix selectors plus `k8s:` ones.
pub struct K8sAttestor {
    unix: Arc<dyn WorkloadAttestor>,
    settings: K8sSettings,
    cache: Mutex<Option<Cached>>,
    /// One pod list fetch at a time; callers that waited look again.
    fetching: Mutex<()>,
    runtime: tokio::runtime::Handle,
}

enum Lookup {
    Found(Vec<Selector>),
    NotInList,
    Stale,
}

impl K8sAttestor {
    /// Wraps `unix`; `runtime` runs the kubelet requests (from a blocking
    /// thread).
    pub fn new(
        unix: Arc<dyn WorkloadAttestor>,
        settings: K8sSettings,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            unix,
            settings,
            cache: Mutex::new(None),
            fetching: Mutex::new(()),
            runtime,
        }
    }

    fn lookup(&self, c: &ContainerRef, fresh_for: Duration) -> Lookup {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cached) = cache.as_ref() else {
            return Lookup::Stale;
        };
        match cached.pods.find(c) {
            Some((pod, status)) if cached.at.elapsed() < self.settings.pod_list_cache => {
                let node_ok = self
                    .settings
                    .node_name
                    .as_deref()
                    .is_none_or(|n| n == pod.spec.node_name);
                if node_ok {
                    Lookup::Found(selectors_for(pod, status))
                } else {
                    Lookup::NotInList
                }
            }
            _ if cached.at.elapsed() < fresh_for => Lookup::NotInList,
            _ => Lookup::Stale,
        }
    }

    /// Fetches the pod list (blocking the calling thread, which is one of
    /// the blocking pool's).
    fn refresh(&self) -> Result<(), String> {
        let s = &self.settings;
        let token = match &s.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("{}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let url = format!("{}/pods", s.kubelet_url.trim_end_matches('/'));
        let body = self
            .runtime
            .block_on(s.client.get(&url, token.as_deref()))
            .map_err(|e| e.to_string())?;
        let pods = PodList::parse(&body)?;
        tracing::debug!(pods = pods.items.len(), "kubelet pod list fetched");
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            at: Instant::now(),
            pods: Arc::new(pods),
        });
        Ok(())
    }
}

impl WorkloadAttestor for K8sAttestor {
    fn attest(
        &self,
        peer: PeerCred,
        opts: AttestOptions,
    ) -> Result<Option<Vec<Selector>>, AttestError> {
        let Some(mut selectors) = self.unix.attest(peer, opts)? else {
            return Ok(None);
        };
        let pid = peer.pid.ok_or(AttestError::NoPid)?;
        let path = self.settings.proc_root.join(pid.to_string()).join("cgroup");
        let cgroup =
            std::fs::read_to_string(&path).map_err(|source| AttestError::Proc { pid, source })?;
        let Some(container) = container_of(&cgroup) else {
            return Ok(Some(selectors));
        };
        // The IDs in the path are public: only a path the kubelet made
        // (root-owned, its shape) says which container this is.
        if let Err(why) = self.settings.cgroups.check(&cgroup) {
            tracing::warn!(pid, container = %container.container_id, %why, "caller's cgroup is not the kubelet's; no k8s selectors");
            return Ok(Some(selectors));
        }
        let found = match self.lookup(&container, MISS_REFETCH) {
            Lookup::Found(k8s) => Some(k8s),
            Lookup::NotInList => None,
            Lookup::Stale if !opts.allow_slow => return Ok(None),
            Lookup::Stale => {
                let _one = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
                // Another caller may have fetched while this one waited.
                if matches!(self.lookup(&container, MISS_REFETCH), Lookup::Stale)
                    && let Err(e) = self.refresh()
                {
                    tracing::warn!(err = %e, "cannot read the kubelet's pod list; the caller gets unix selectors only");
                }
                match self.lookup(&container, MISS_REFETCH) {
                    Lookup::Found(k8s) => Some(k8s),
                    _ => None,
                }
            }
        };
        match found {
            Some(k8s) => {
                tracing::debug!(
                    pid,
                    container = %container.container_id,
                    pod_uid = ?container.pod_uid,
                    selectors = ?k8s.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "caller attested in a pod"
                );
                selectors.extend(k8s);
            }
            None => tracing::info!(
                pid,
                container = %container.container_id,
                "caller's container is in no pod the kubelet lists"
            ),
        }
        Ok(Some(selectors))
    }
}
