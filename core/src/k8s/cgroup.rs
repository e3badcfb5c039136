//! A process's pod and container from its `/proc/PID/cgroup` file, in the
//! shapes the kubelet and container runtimes create: cgroup v1 and v2, the
//! cgroupfs and systemd drivers, containerd, CRI-O and Docker naming, and
//! nested under another container (kind, Docker-in-Docker).
//!
//! - cgroupfs: `/kubepods/burstable/pod<UID>/<ID>`, `/kubepods/pod<UID>/<ID>`
//! - systemd: `/kubepods.slice/kubepods-besteffort.slice/
//!   kubepods-besteffort-pod<UID with _>.slice/cri-containerd-<ID>.scope`
//!   (`crio-<ID>.scope`, `docker-<ID>.scope`)
//! - plain Docker, no pod: `/docker/<ID>`, `/system.slice/docker-<ID>.scope`
//!
//! `<ID>` is 64 lowercase hex digits. CRI-O's `crio-conmon-<ID>.scope`
//! (its monitor process) is no container.

/// Where a process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The pod UID (with dashes), when the cgroup names a pod.
    pub pod_uid: Option<String>,
    /// The container ID (64 hex digits).
    pub container_id: String,
}

/// The container (and pod) named by a cgroup file, or `None` for a
/// process that is in no container. With several hierarchies (cgroup v1)
/// they must agree, else `None`: a process cannot be in two containers.
pub fn container_of(cgroup_file: &str) -> Option<ContainerRef> {
    let mut found: Option<ContainerRef> = None;
    for line in cgroup_file.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        if let Some(c) = from_path(path) {
            match &found {
                Some(f) if *f != c => return None,
                _ => found = Some(c),
            }
        }
    }
    found
}

/// The kubelet's cgroup roots the agent accepts by default: the cgroupfs
/// driver's `kubepods`, the systemd driver's `kubepods.slice`, and kind's
/// `kubelet-kubepods.slice` (under `/kubelet.slice` in the node's own
/// cgroup namespace).
pub const DEFAULT_KUBELET_ROOTS: [&str; 3] =
    ["kubepods", "kubepods.slice", "kubelet-kubepods.slice"];

/// A cgroup hierarchy a line of `/proc/PID/cgroup` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified (v2) hierarchy (`0::`).
    Unified,
    /// A v1 hierarchy with these controllers (`cpu,cpuacct`,
    /// `name=systemd`, ...).
    V1(String),
}

/// Each line of a cgroup file whose path names a container: the hierarchy
/// and the path. Every one of them must be the kubelet's for the container
/// to be believed.
pub fn container_paths(cgroup_file: &str) -> Vec<(Hierarchy, String)> {
    cgroup_file
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            from_path(path)?;
            let h = if id == "0" && controllers.is_empty() {
                Hierarchy::Unified
            } else {
                Hierarchy::V1(controllers.to_owned())
            };
            Some((h, path.to_owned()))
        })
        .collect()
}

/// Why a container's cgroup path is not the kubelet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// `..` in the path: the process is outside the reader's cgroup
    /// namespace, where nothing can be checked.
    #[error(
        "the cgroup {0} is outside this agent's cgroup namespace (run the agent in the node's cgroup namespace)"
    )]
    OutsideNamespace(String),
    /// No kubelet root on the path.
    #[error("the cgroup {0} is under none of the kubelet's roots ({1})")]
    NoRoot(String, String),
    /// Below the root, more or other than [QoS class] [pod] container.
    #[error(
        "the cgroup {0} does not have the kubelet's shape below {1} ([QoS class]/[pod]/container)"
    )]
    Shape(String, String),
}

fn is_qos(segment: &str) -> bool {
    matches!(
        segment,
        "burstable"
            | "besteffort"
            | "kubepods-burstable.slice"
            | "kubepods-besteffort.slice"
            | "kubelet-kubepods-burstable.slice"
            | "kubelet-kubepods-besteffort.slice"
    )
}

/// Checks that `path` lies below one of the kubelet's `roots` in the
/// kubelet's shape (an optional QoS class, an optional pod, the container
/// last) and returns the path's segments with the index of the root: the
/// directories from the root down are the ones whose owner the caller must
/// check. The first root segment on the path counts, so a tree built
/// inside a container's own cgroup is too deep to pass.
pub fn kubelet_shape<'a>(
    path: &'a str,
    roots: &[String],
) -> Result<(Vec<&'a str>, usize), ShapeError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == ".." || *s == ".") {
        return Err(ShapeError::OutsideNamespace(path.to_owned()));
    }
    let Some(root) = segments.iter().position(|s| roots.iter().any(|r| r == s)) else {
        return Err(ShapeError::NoRoot(path.to_owned(), roots.join(", ")));
    };
    let below = &segments[root + 1..];
    let shape = || ShapeError::Shape(path.to_owned(), segments[root].to_owned());
    let (last, rest) = below.split_last().ok_or_else(shape)?;
    if container_id(last).is_none() {
        return Err(shape());
    }
    let ok = match rest {
        [] => true,
        [pod] => pod_uid(pod).is_some(),
        [qos, pod] => is_qos(qos) && pod_uid(pod).is_some(),
        _ => false,
    };
    if !ok {
        return Err(shape());
    }
    Ok((segments, root))
}

fn from_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The container is the last segment that names one; the pod is the
    // nearest pod segment before it.
    let (idx, container_id) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, s)| container_id(s).map(|id| (i, id)))?;
    let pod_uid = segments[..idx].iter().rev().find_map(|s| pod_uid(s));
    Some(ContainerRef {
        pod_uid,
        container_id,
    })
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    if s.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "containerd-",
        "libpod-",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))
    .unwrap_or(s);
    is_hex64(id).then(|| id.to_owned())
}

fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    // `pod<UID>` (cgroupfs) or `kubepods[-QOS]-pod<UID_>` (systemd).
    let i = s.rfind("pod")?;
    let (before, uid) = (&s[..i], &s[i + 3..]);
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36
        && uid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then(|| uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8f3c1e1ad0b2f8a6c4e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
    const UID: &str = "3b5d4f6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f";

    fn expect(file: &str, pod: Option<&str>) {
        assert_eq!(
            container_of(file),
            Some(ContainerRef {
                pod_uid: pod.map(str::to_owned),
                container_id: ID.into()
            }),
            "{file}"
        );
    }

    #[test]
    fn kubelet_and_runtime_layouts() {
        let uid_ = UID.replace('-', "_");
        // cgroup v2, systemd driver, containerd.
        expect(
            &format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
            ),
            Some(UID),
        );
        // cgroup v2, systemd driver, guaranteed QoS, CRI-O.
        expect(
            &format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope\n"),
            Some(UID),
        );
        // cgroup v2, cgroupfs driver.
        expect(
            &format!("0::/kubepods/burstable/pod{UID}/{ID}\n"),
            Some(UID),
        );
        // cgroup v1, cgroupfs driver, every hierarchy alike.
        expect(
            &format!(
                "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
            ),
            Some(UID),
        );
        // cgroup v1, systemd driver, docker shim.
        expect(
            &format!(
                "4:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ID}.scope\n"
            ),
            Some(UID),
        );
        // kind: the node is itself a container.
        expect(
            &format!(
                "0::/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope\n",
                "a".repeat(64)
            ),
            Some(UID),
        );
        // Plain Docker: a container, no pod.
        expect(&format!("0::/system.slice/docker-{ID}.scope\n"), None);
        expect(&format!("0::/docker/{ID}\n"), None);
    }

    #[test]
    fn only_the_kubelets_shape_below_its_root_passes() {
        let roots: Vec<String> = DEFAULT_KUBELET_ROOTS.map(String::from).to_vec();
        let uid_ = UID.replace('-', "_");
        for (path, root) in [
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                0,
            ),
            (format!("/kubepods/pod{UID}/{ID}"), 0),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), 0),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                1,
            ),
        ] {
            let (_, at) = kubelet_shape(&path, &roots).unwrap();
            assert_eq!(at, root, "{path}");
        }
        // Anywhere else, or deeper than the kubelet makes it.
        for path in [
            format!("/user.slice/user-1000.slice/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{ID}/kubepods/pod{UID}/{ID}"),
            format!("/kubepods/burstable/extra/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}"),
            format!("/../../kubepods/pod{UID}/{ID}"),
        ] {
            assert!(kubelet_shape(&path, &roots).is_err(), "{path}");
        }
        // A configured root (plain Docker's cgroupfs layout).
        let docker = vec!["docker".to_owned()];
        assert!(kubelet_shape(&format!("/docker/{ID}"), &docker).is_ok());
    }

    #[test]
    fn every_line_naming_a_container_is_listed_with_its_hierarchy() {
        let file = format!(
            "12:pids:/kubepods/pod{UID}/{ID}\n1:name=systemd:/\n0::/kubepods/pod{UID}/{ID}\n"
        );
        let paths = container_paths(&file);
        assert_eq!(
            paths,
            vec![
                (
                    Hierarchy::V1("pids".into()),
                    format!("/kubepods/pod{UID}/{ID}")
                ),
                (Hierarchy::Unified, format!("/kubepods/pod{UID}/{ID}")),
            ]
        );
    }

    #[test]
    fn not_a_container() {
        for file in [
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/system.slice/lanyard-agent.service\n",
            "0::/\n",
            "",
            "garbage",
            &format!("0::/kubepods.slice/kubepods-pod{UID}.slice/crio-conmon-{ID}.scope\n"),
            &format!("0::/kubepods/pod{UID}/{}\n", &ID[..63]),
            &format!("0::/kubepods/pod{UID}/{}\n", ID.to_uppercase()),
        ] {
            assert_eq!(container_of(file), None, "{file}");
        }
        // Hierarchies that disagree name no one container.
        let other = "1".repeat(64);
        assert_eq!(
            container_of(&format!("3:memory:/docker/{ID}\n2:pids:/docker/{other}\n")),
            None
        );
    }
}
