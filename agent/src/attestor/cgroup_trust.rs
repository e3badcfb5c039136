//! Whether a caller's container cgroup is really the kubelet's.
//!
//! The container and pod are read from the path in `/proc/PID/cgroup`, and
//! both IDs are world-readable. A host user with a delegated cgroup subtree
//! (systemd's `user@UID.service`), or a container with a writable cgroupfs,
//! can make `.../pod<victim UID>/<victim container ID>` and move itself in.
//! What it cannot make are root-owned directories in the kubelet's tree: so
//! a path is believed only if it has the kubelet's shape below one of the
//! kubelet's roots ([`lanyard_core::k8s::kubelet_shape`]) and the container's
//! directory and every ancestor up to that root, on the real cgroupfs, are
//! owned by root. Every hierarchy whose line names the container is checked.
//!
//! An agent in a private cgroup namespace (containerd's default on cgroup
//! v2) reads other pods' paths relative to its own cgroup (`/../../...`);
//! with the host's cgroupfs mounted at `cgroup_root` it finds its own
//! directory under the kubelet's roots once, and resolves those paths from
//! it before checking them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lanyard_core::k8s::{Hierarchy, container_paths, kubelet_shape};

/// The cgroup filesystem and the kubelet's roots in it.
#[derive(Debug, Clone)]
pub struct CgroupTrust {
    /// Where the cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub mount: PathBuf,
    /// Segment names of the kubelet's cgroup roots.
    pub roots: Vec<String>,
    /// This agent's own directory per hierarchy, once found.
    pub own: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, String>>>,
}

/// How deep below a kubelet root the agent looks for its own cgroup.
const SELF_SEARCH_DEPTH: usize = 4;

impl CgroupTrust {
    /// This process's own directory (relative to the hierarchy's root)
    /// under one of the kubelet's roots, found by its PID in
    /// `cgroup.procs`.
    fn own_path(&self, base: &Path) -> Option<String> {
        let known = self.own.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(own) = known.get(base) {
            return Some(own.clone());
        }
        drop(known);
        let found = self.search_own_path(base)?;
        self.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(base.to_owned(), found.clone());
        Some(found)
    }

    fn search_own_path(&self, base: &Path) -> Option<String> {
        let me = std::process::id().to_string();
        let mut frontier: Vec<(PathBuf, String)> = self
            .roots
            .iter()
            .map(|r| (base.join(r), format!("/{r}")))
            .collect();
        for _ in 0..=SELF_SEARCH_DEPTH {
            let mut next = vec![];
            for (dir, rel) in frontier {
                if std::fs::read_to_string(dir.join("cgroup.procs"))
                    .is_ok_and(|procs| procs.lines().any(|l| l.trim() == me))
                {
                    return Some(rel);
                }
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let name = e.file_name().to_string_lossy().into_owned();
                        next.push((e.path(), format!("{rel}/{name}")));
                    }
                }
            }
            frontier = next;
        }
        None
    }

    /// The unified hierarchy's directory and `path` (a line of a cgroup
    /// file, `/..` first when outside this agent's cgroup namespace) from
    /// that hierarchy's root.
    pub fn unified_absolute(&self, path: &str) -> Option<(PathBuf, String)> {
        let base = self.hierarchy_dir(&Hierarchy::Unified)?;
        let abs = self.absolute(&base, path).ok()?;
        Some((base, abs))
    }

    /// `path` as seen from the hierarchy's root: a path relative to this
    /// process's cgroup namespace (`/..` first) is resolved from its own
    /// directory.
    fn absolute(&self, base: &Path, path: &str) -> Result<String, String> {
        if !path.split('/').any(|s| s == "..") {
            return Ok(path.to_owned());
        }
        let own = self.own_path(base).ok_or_else(|| {
            format!(
                "the cgroup {path} is outside this agent's cgroup namespace and the agent's own cgroup is under none of the kubelet's roots in {} (mount the host's cgroupfs there)",
                base.display()
            )
        })?;
        resolve(&own, path)
    }

    /// The directory of `h` under the mount: the unified hierarchy at the
    /// mount itself (cgroup v2) or at `unified/` (hybrid); a v1 hierarchy
    /// by its controllers' directory.
    fn hierarchy_dir(&self, h: &Hierarchy) -> Option<PathBuf> {
        match h {
            Hierarchy::Unified => [self.mount.join("unified"), self.mount.clone()]
                .into_iter()
                .find(|d| d.join("cgroup.controllers").exists()),
            Hierarchy::V1(controllers) => {
                let name = controllers.strip_prefix("name=").unwrap_or(controllers);
                std::iter::once(name)
                    .chain(controllers.split(','))
                    .map(|n| self.mount.join(n))
                    .find(|d| d.join("cgroup.procs").exists())
            }
        }
    }

    /// Checks every line of `cgroup_file` that names a container; `Err`
    /// says why the container is not believed.
    pub fn check(&self, cgroup_file: &str) -> Result<(), String> {
        let paths = container_paths(cgroup_file);
        if paths.is_empty() {
            return Err("no line of the cgroup file names a container".into());
        }
        for (h, path) in paths {
            let base = self.hierarchy_dir(&h).ok_or_else(|| {
                format!(
                    "the {h:?} cgroup hierarchy is not mounted under {}",
                    self.mount.display()
                )
            })?;
            let path = self.absolute(&base, &path)?;
            let (segments, root) = kubelet_shape(&path, &self.roots).map_err(|e| e.to_string())?;
            let mut dir = base;
            for (i, segment) in segments.iter().enumerate() {
                dir.push(segment);
                if i >= root {
                    owned_by_root(&dir)?;
                }
            }
        }
        Ok(())
    }
}

/// `path`, relative to the cgroup namespace rooted at `own`, from the
/// hierarchy's root.
fn resolve(own: &str, path: &str) -> Result<String, String> {
    let mut out: Vec<&str> = own.split('/').filter(|s| !s.is_empty()).collect();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if seg == ".." {
            out.pop()
                .ok_or_else(|| format!("the cgroup {path} climbs above the hierarchy's root"))?;
        } else {
            out.push(seg);
        }
    }
    Ok(format!("/{}", out.join("/")))
}

fn owned_by_root(dir: &Path) -> Result<(), String> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !m.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if m.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root: not made by the kubelet",
            dir.display(),
            m.uid()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::k8s::cgroup::DEFAULT_KUBELET_ROOTS;

    const ID: &str = "8f3c1e1ad0b2f8a6c4e5d7f90a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

    fn trust() -> CgroupTrust {
        CgroupTrust {
            mount: PathBuf::from("/sys/fs/cgroup"),
            roots: DEFAULT_KUBELET_ROOTS.map(String::from).to_vec(),
            own: Default::default(),
        }
    }

    /// A real process moved into the cgroup directory `rel` (made under
    /// the unified hierarchy); returns the process, its cgroup file as
    /// `/proc` shows it, and the directories to remove.
    struct Placed {
        child: std::process::Child,
        dirs: Vec<PathBuf>,
    }

    impl Placed {
        fn new(base: &Path, rel: &str, chown_from: Option<(usize, u32)>) -> Self {
            let mut dirs = vec![];
            let mut dir = base.to_path_buf();
            for (i, seg) in rel.split('/').filter(|s| !s.is_empty()).enumerate() {
                dir.push(seg);
                // Only what this test made is removed again (another test
                // process may share the top directories).
                if std::fs::create_dir(&dir).is_ok() {
                    dirs.push(dir.clone());
                }
                assert!(dir.is_dir(), "{}", dir.display());
                if let Some((from, uid)) = chown_from
                    && i >= from
                {
                    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
                }
            }
            let child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
            Placed { child, dirs }
        }

        fn cgroup(&self) -> String {
            std::fs::read_to_string(format!("/proc/{}/cgroup", self.child.id())).unwrap()
        }
    }

    impl Drop for Placed {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for d in self.dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }

    #[test]
    fn paths_from_a_private_namespace_resolve_from_the_agents_own_cgroup() {
        let own = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podA.slice/cri-containerd-a.scope";
        assert_eq!(
            resolve(own, "/../../../kubepods-besteffort.slice/kubepods-besteffort-podB.slice/cri-containerd-b.scope")
                .unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podB.slice/cri-containerd-b.scope"
        );
        assert_eq!(resolve(own, "/").unwrap(), own);
        assert!(resolve("/kubepods", "/../../x").is_err());
    }

    /// Real cgroup directories (tests run as root; these machines mount
    /// the unified hierarchy): a kubelet-shaped, root-owned path is
    /// believed; the victim's pod and container IDs under a subtree owned
    /// by another uid (a delegated subtree) are not.
    #[test]
    fn only_root_owned_kubelet_paths_are_believed() {
        let t = trust();
        let base = t
            .hierarchy_dir(&Hierarchy::Unified)
            .expect("a writable unified cgroup hierarchy (tests run as root)");
        let me = std::process::id();
        let uid = format!("3b5d4f6e-1a2b-4c3d-8e9f-{me:012}");
        let uid_ = uid.replace('-', "_");
        let real = Placed::new(
            &base,
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            None,
        );
        let file = real.cgroup();
        assert!(file.contains("kubepods.slice"), "{file}");
        assert_eq!(t.check(&file), Ok(()));
        drop(real);

        // The same pod and container, in a subtree a user was delegated.
        let delegated = format!("lanyard-test-{me}.slice/user@1000.service/kubepods/pod{uid}/{ID}");
        let forged = Placed::new(&base, &delegated, Some((1, 65534)));
        let file = forged.cgroup();
        assert!(
            lanyard_core::k8s::container_of(&file).is_some(),
            "the forged path names the victim's container: {file}"
        );
        let err = t.check(&file).unwrap_err();
        assert!(err.contains("owned by uid 65534"), "{err}");
        drop(forged);

        // Root-owned, but nested inside a container's own cgroup.
        let nested = Placed::new(
            &base,
            &format!("kubepods/pod{uid}/{ID}/kubepods/pod{uid}/{ID}"),
            None,
        );
        let err = t.check(&nested.cgroup()).unwrap_err();
        assert!(err.contains("shape"), "{err}");
    }
}
