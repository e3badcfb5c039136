//! Kubernetes, without talking to a cluster: projected service account
//! tokens (node attestation), and a caller's pod from its cgroup and the
//! kubelet's pod list (workload attestation).

pub mod cgroup;
pub mod pods;
pub mod psat;
#[cfg(any(test, feature = "test-support"))]
pub mod test_issuer;

pub use cgroup::{ContainerRef, Hierarchy, container_of, container_paths, kubelet_shape};
pub use pods::{PodList, selectors_for};
pub use psat::{PsatClaims, PsatError, PsatExpectations, validate_psat};
