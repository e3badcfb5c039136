//! The unix workload attestor: uid, gid, user, group, supplementary groups,
//! the systemd unit, executable path and (size-limited) executable SHA-256.
//!
//! Trust model: uid, gid, groups and the systemd unit come from the kernel
//! and cannot be chosen by the process. `unix:sha256` is read through
//! /proc/PID/exe, the file the kernel runs, in whatever mount namespace.
//! `unix:path` is the path the agent sees: it is reported only when the
//! caller shares the agent's mount namespace and the file at that path in
//! the agent's view is the very file running (same device and inode), so a
//! bind mount in a private namespace cannot fake it.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lanyard_core::Selector;

use super::proc_info;
use super::{AttestError, AttestOptions, PeerCred, WorkloadAttestor, systemd, users};

/// Default largest executable hashed for `unix:sha256` (bigger ones get no
/// sha256 selector).
pub const DEFAULT_MAX_HASH_BYTES: u64 = 128 * 1024 * 1024;

/// Identity of an executable file for the hash cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// A rewrite in place with the mtime restored still changes ctime.
    ctime: i64,
    ctime_nsec: i64,
}

/// The unix attestor.
pub struct UnixAttestor {
    proc_root: PathBuf,
    max_hash_bytes: u64,
    hashes: Mutex<HashMap<FileKey, String>>,
    users: users::NameTable,
    groups: users::NameTable,
    /// Supplementary groups by process instance (pid, start time), kept for
    /// [`GROUPS_TTL`]: reading /proc/PID/status is the costliest step.
    supplementary: Mutex<HashMap<(i32, u64), GroupsSeen>>,
    /// The agent's own mount namespace (device, inode).
    own_mnt_ns: Option<(u64, u64)>,
}

/// Supplementary groups of one process instance and when they were read.
type GroupsSeen = (std::time::Instant, Vec<u32>, Option<String>);

/// How long a process instance's supplementary groups are reused.
const GROUPS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for UnixAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixAttestor")
            .field("proc_root", &self.proc_root)
            .field("max_hash_bytes", &self.max_hash_bytes)
            .finish()
    }
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_HASH_BYTES)
    }
}

fn sel(kind_value: String) -> Option<Selector> {
    Selector::new("unix", &kind_value).ok()
}

impl UnixAttestor {
    /// An attestor reading the real /proc and /etc.
    pub fn new(max_hash_bytes: u64) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            max_hash_bytes,
            hashes: Mutex::new(HashMap::new()),
            users: users::NameTable::new(PathBuf::from("/etc/passwd")),
            groups: users::NameTable::new(PathBuf::from("/etc/group")),
            supplementary: Mutex::new(HashMap::new()),
            own_mnt_ns: std::fs::metadata("/proc/self/ns/mnt")
                .ok()
                .map(|m| (m.dev(), m.ino())),
        }
    }

    /// The executable's hash: `Ok(Some(Some(h)))`, `Ok(Some(None))` when it
    /// is too large to hash, `Ok(None)` when hashing is needed but not
    /// allowed.
    fn exe_sha256(
        &self,
        pid: i32,
        meta: &std::fs::Metadata,
        allow_slow: bool,
    ) -> Result<Option<Option<String>>, std::io::Error> {
        let exe = self.proc_root.join(pid.to_string()).join("exe");
        // `meta` is the stat() of the /proc link (the running file): the
        // cache key; the file is opened only to hash it.
        if meta.len() > self.max_hash_bytes {
            tracing::debug!(pid, size = meta.len(), "executable too large to hash");
            return Ok(Some(None));
        }
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        };
        if let Some(h) = self
            .hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(Some(h.clone())));
        }
        if !allow_slow {
            return Ok(None);
        }
        let mut file = std::fs::File::open(&exe)?;
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (key.dev, key.ino) {
            // The process exec'd another binary in between; attest again.
            return Err(std::io::Error::other(
                "executable changed during attestation",
            ));
        }
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > self.max_hash_bytes {
                return Ok(Some(None));
            }
            ctx.update(&buf[..n]);
        }
        let h = hex::encode(ctx.finish().as_ref());
        let mut cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, h.clone());
        Ok(Some(Some(h)))
    }

    /// Supplementary groups and systemd unit of a process instance (both
    /// from /proc reads that cost more than the rest of an attestation),
    /// reused for [`GROUPS_TTL`].
    fn groups_and_unit(
        &self,
        root: &Path,
        pid: i32,
        started: u64,
        fresh: Option<proc_info::Status>,
    ) -> Result<(Vec<u32>, Option<String>), AttestError> {
        let key = (pid, started);
        let mut cache = self.supplementary.lock().unwrap_or_else(|p| p.into_inner());
        if let (None, Some((at, g, u))) = (&fresh, cache.get(&key))
            && at.elapsed() < GROUPS_TTL
        {
            return Ok((g.clone(), u.clone()));
        }
        drop(cache);
        let unit = std::fs::read_to_string(root.join(pid.to_string()).join("cgroup"))
            .ok()
            .and_then(|text| systemd::unit_of(&text));
        let status = match fresh {
            Some(s) => s,
            None => {
                proc_info::status(root, pid).map_err(|source| AttestError::Proc { pid, source })?
            }
        };
        cache = self.supplementary.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.retain(|_, (at, _, _)| at.elapsed() < GROUPS_TTL);
        }
        cache.insert(
            key,
            (
                std::time::Instant::now(),
                status.groups.clone(),
                unit.clone(),
            ),
        );
        Ok((status.groups, unit))
    }

    fn group_name(&self, gid: u32) -> Option<String> {
        self.groups.name(gid)
    }

    /// Whether `path` (the caller's executable as /proc names it) means
    /// the same file to the agent: same mount namespace, and the file the
    /// agent finds at that path is the one running.
    fn path_is_shared(
        &self,
        root: &Path,
        pid: i32,
        path: &Path,
        running: Option<&std::fs::Metadata>,
    ) -> bool {
        let ns = |p: PathBuf| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let theirs = ns(root.join(pid.to_string()).join("ns/mnt"));
        if theirs.is_none() || theirs != self.own_mnt_ns {
            return false;
        }
        let running = running.map(|m| (m.dev(), m.ino()));
        running.is_some() && ns(path.to_owned()) == running
    }
}

impl WorkloadAttestor for UnixAttestor {
    fn attest(
        &self,
        peer: PeerCred,
        opts: AttestOptions,
    ) -> Result<Option<Vec<Selector>>, AttestError> {
        let pid = peer.pid.ok_or(AttestError::NoPid)?;
        let proc_err = |source| AttestError::Proc { pid, source };
        let root = Path::new(&self.proc_root);
        let started =
            proc_info::start_time(root, pid).map_err(|_| AttestError::ProcessChanged(pid))?;
        // A process younger than the connection is not the one that
        // connected: its PID was reused. (One tick of tolerance for the
        // clocks' 10 ms granularity.)
        if peer.connected_ticks.is_some_and(|t| started > t + 1) {
            return Err(AttestError::ProcessChanged(pid));
        }

        // The owner of /proc/PID is the effective uid/gid (one stat); only
        // when it differs (a changed or non-dumpable process) is the full
        // status read to decide.
        let owner = proc_info::owner(root, pid).map_err(proc_err)?;
        let mut fresh_status = None;
        if owner != (peer.uid, peer.gid) {
            let status = proc_info::status(root, pid).map_err(proc_err)?;
            if status.euid != Some(peer.uid) || status.egid != Some(peer.gid) {
                return Err(AttestError::CredentialsChanged(pid));
            }
            fresh_status = Some(status);
        }
        let (groups, unit) = self.groups_and_unit(root, pid, started, fresh_status)?;
        let mut out: Vec<Selector> = Vec::new();
        out.extend(sel(format!("uid:{}", peer.uid)));
        out.extend(sel(format!("gid:{}", peer.gid)));
        if let Some(name) = self.users.name(peer.uid) {
            out.extend(sel(format!("user:{name}")));
        }
        if let Some(name) = self.group_name(peer.gid) {
            out.extend(sel(format!("group:{name}")));
        }
        for g in &groups {
            out.extend(sel(format!("supplementary_gid:{g}")));
            if let Some(name) = self.group_name(*g) {
                out.extend(sel(format!("supplementary_group:{name}")));
            }
        }
        if let Some(unit) = unit {
            out.extend(Selector::new("systemd", &format!("unit:{unit}")).ok());
        }
        match proc_info::exe_path(root, pid) {
            Ok(path) => {
                // stat() through the /proc link: the file really running.
                let running = std::fs::metadata(root.join(pid.to_string()).join("exe"));
                if self.path_is_shared(root, pid, &path, running.as_ref().ok()) {
                    out.extend(sel(format!("path:{}", path.display())));
                }
                if let (true, Ok(meta)) = (opts.hash_executable, &running) {
                    match self.exe_sha256(pid, meta, opts.allow_slow) {
                        Ok(Some(Some(h))) => out.extend(sel(format!("sha256:{h}"))),
                        Ok(Some(None)) => {}
                        Ok(None) => return Ok(None),
                        Err(e) => tracing::debug!(pid, ?e, "cannot hash executable"),
                    }
                }
            }
            // Another user's process without CAP_SYS_PTRACE: no path selectors.
            Err(e) => tracing::debug!(pid, ?e, "cannot read executable path"),
        }

        // PID-reuse guard: the same process instance must still be there.
        match proc_info::start_time(root, pid) {
            Ok(t) if t == started => {}
            _ => return Err(AttestError::ProcessChanged(pid)),
        }
        out.sort();
        out.dedup();
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: AttestOptions = AttestOptions {
        allow_slow: false,
        hash_executable: true,
    };
    const SLOW: AttestOptions = AttestOptions {
        allow_slow: true,
        hash_executable: true,
    };

    fn me() -> PeerCred {
        let st = proc_info::status(Path::new("/proc"), std::process::id() as i32).unwrap();
        PeerCred {
            pid: Some(std::process::id() as i32),
            uid: st.euid.unwrap(),
            gid: st.egid.unwrap(),
            connected_ticks: crate::listener::uptime_ticks(),
        }
    }

    #[test]
    fn attests_own_process() {
        let a = UnixAttestor::new(u64::MAX);
        let peer = me();
        // Not hashed yet: the fast path defers.
        assert!(a.attest(peer, FAST).unwrap().is_none());
        let sels: Vec<String> = a
            .attest(peer, SLOW)
            .unwrap()
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(sels.contains(&format!("unix:uid:{}", peer.uid)), "{sels:?}");
        assert!(sels.contains(&format!("unix:gid:{}", peer.gid)));
        let exe = std::env::current_exe().unwrap();
        let exe = std::fs::canonicalize(exe).unwrap();
        assert!(
            sels.contains(&format!("unix:path:{}", exe.display())),
            "{sels:?}"
        );
        let bytes = std::fs::read(&exe).unwrap();
        let want = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &bytes,
        ));
        assert!(sels.contains(&format!("unix:sha256:{want}")));
        // Cached the second time, same answer.
        let again: Vec<String> = a
            .attest(peer, FAST)
            .unwrap()
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(sels, again);
    }

    #[test]
    fn no_hash_unless_asked() {
        let a = UnixAttestor::new(u64::MAX);
        let opts = AttestOptions {
            allow_slow: false,
            hash_executable: false,
        };
        // Answered on the fast path (nothing to hash), with no sha256.
        let sels = a.attest(me(), opts).unwrap().unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("sha256:")));
        assert!(a.hashes.lock().unwrap().is_empty());
    }

    #[test]
    fn size_limit_skips_hash() {
        let a = UnixAttestor::new(10);
        let sels = a.attest(me(), FAST).unwrap().unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("sha256:")));
    }

    #[test]
    fn refuses_missing_pid_and_wrong_credentials() {
        let a = UnixAttestor::default();
        let mut p = me();
        p.pid = None;
        assert!(matches!(a.attest(p, SLOW), Err(AttestError::NoPid)));
        let mut p = me();
        p.uid = p.uid.wrapping_add(12345);
        assert!(matches!(
            a.attest(p, SLOW),
            Err(AttestError::CredentialsChanged(_))
        ));
        // A connection older than the process: the PID was reused.
        let mut p = me();
        let started = proc_info::start_time(Path::new("/proc"), p.pid.unwrap()).unwrap();
        p.connected_ticks = Some(started.saturating_sub(5));
        assert!(matches!(
            a.attest(p, SLOW),
            Err(AttestError::ProcessChanged(_))
        ));
        let mut p = me();
        p.pid = Some(i32::MAX);
        assert!(matches!(
            a.attest(p, SLOW),
            Err(AttestError::ProcessChanged(_))
        ));
    }

    fn peer_of(child: &std::process::Child) -> PeerCred {
        let pid = child.id() as i32;
        // Wait until the child runs its final program.
        for _ in 0..200 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let st = proc_info::status(Path::new("/proc"), pid).unwrap();
            if st.euid.is_some() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
                if !comm.starts_with("unshare") && !comm.starts_with("sh") {
                    break;
                }
            }
        }
        let st = proc_info::status(Path::new("/proc"), pid).unwrap();
        PeerCred {
            pid: Some(pid),
            uid: st.euid.unwrap(),
            gid: st.egid.unwrap(),
            connected_ticks: None,
        }
    }

    fn which(prog: &str) -> PathBuf {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {prog}")])
            .output()
            .unwrap();
        std::fs::canonicalize(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
    }

    /// A bind mount in a private mount namespace makes /proc/PID/exe name
    /// a path that, for the agent, is another file: no `unix:path` then.
    #[test]
    fn path_is_not_reported_from_another_mount_namespace() {
        let a = UnixAttestor::new(u64::MAX);
        let (sleep, tail) = (which("sleep"), which("tail"));
        let mut same = std::process::Command::new(&sleep)
            .arg("30")
            .spawn()
            .unwrap();
        let sels = a.attest(peer_of(&same), SLOW).unwrap().unwrap();
        let want = format!("unix:path:{}", sleep.display());
        assert!(sels.iter().any(|s| s.to_string() == want), "{sels:?}");
        same.kill().unwrap();
        same.wait().unwrap();

        // In its own namespace, `tail` is mounted over the `sleep` path and
        // run under that name.
        let script = format!(
            "mount --bind {tail} {sleep} && exec {sleep} -f /dev/null",
            tail = tail.display(),
            sleep = sleep.display()
        );
        let mut faked = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .unwrap();
        let peer = peer_of(&faked);
        let exe = std::fs::read_link(format!("/proc/{}/exe", peer.pid.unwrap())).unwrap();
        assert_eq!(exe, sleep, "the trick names the sleep path");
        let sels = a.attest(peer, SLOW).unwrap().unwrap();
        assert!(
            !sels.iter().any(|s| s.value().starts_with("path:")),
            "{sels:?}"
        );
        // The hash is of the file really running (tail), read through
        // /proc/PID/exe.
        let tail_hash = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &std::fs::read(&tail).unwrap(),
        ));
        assert!(
            sels.iter()
                .any(|s| s.to_string() == format!("unix:sha256:{tail_hash}")),
            "{sels:?}"
        );
        faked.kill().unwrap();
        faked.wait().unwrap();
    }

    /// A process in a system unit's cgroup gets `systemd:unit:NAME`. These
    /// machines run no systemd: the test makes a cgroup of that shape.
    #[test]
    fn systemd_unit_from_the_cgroup() {
        let unit = format!("lanyard-test-{}.service", std::process::id());
        let roots = [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ];
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut placed = None;
        for root in roots {
            let dir = Path::new(root).join("system.slice").join(&unit);
            if std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok()
            {
                placed = Some(dir);
                break;
            }
        }
        let dir = placed.expect("a writable cgroup hierarchy (tests run as root)");
        let a = UnixAttestor::new(u64::MAX);
        let sels = a.attest(peer_of(&child), SLOW).unwrap().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_dir(&dir);
        let want = format!("systemd:unit:{unit}");
        assert!(sels.iter().any(|s| s.to_string() == want), "{sels:?}");
    }
}
