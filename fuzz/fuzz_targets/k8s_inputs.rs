//! What the Kubernetes attestors read is untrusted: a caller's cgroup file
//! (its own container runtime's making), the kubelet's pod list, and a
//! node's service account token. None of them may panic the parsers; a
//! container the cgroup names is always 64 hex digits; a token never
//! validates against an issuer with no keys.
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use lanyard_core::k8s::{PodList, PsatExpectations, container_of, selectors_for, validate_psat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(c) = container_of(text) {
            assert_eq!(c.container_id.len(), 64);
            assert!(c.container_id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let expect = PsatExpectations {
            issuer: "https://kubernetes.default.svc",
            audience: "lanyard-server",
        };
        assert!(
            validate_psat(
                text,
                &[],
                expect,
                UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            )
            .is_err()
        );
    }
    if let Ok(list) = PodList::parse(data) {
        for pod in &list.items {
            for c in &pod.status.container_statuses {
                let _ = selectors_for(pod, c);
            }
        }
    }
});
