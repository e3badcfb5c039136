//! The Workload API listener: accepted unix connections carry the caller's
//! kernel credentials, the moment they were accepted (in the same clock as
//! process start times), the pinned process instance (pidfd where the
//! kernel has one), and a slot of the connection limits.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lanyard_uds::{AuthorityShim, ConnLimiter, ConnPermit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::attestor::ProcessInstance;

/// Clock ticks per second of /proc/PID/stat start times (`USER_HZ`, 100 on
/// every Linux ABI).
pub const USER_HZ: u64 = 100;

/// Who a caller is for the per-caller limits: its uid and the boundary it
/// cannot leave by itself, the deepest directory of its cgroup that root
/// owns on the cgroupfs (a Kubernetes container, a systemd system unit, a
/// user's slice). A tenant that makes many cgroups of its own (delegated
/// subtrees, containers with a writable cgroupfs) makes directories it
/// owns, so they all count as one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallerKey {
    uid: u32,
    boundary: u64,
}

/// Where callers' cgroup paths are looked up.
#[derive(Debug, Clone)]
pub struct Boundaries {
    /// The cgroupfs mount (`/sys/fs/cgroup`).
    pub mount: std::path::PathBuf,
    /// The Kubernetes attestor's view of the cgroupfs, which resolves paths
    /// outside this agent's cgroup namespace.
    pub kubelet: Option<crate::attestor::CgroupTrust>,
}

impl Default for Boundaries {
    fn default() -> Self {
        Self {
            mount: "/sys/fs/cgroup".into(),
            kubelet: None,
        }
    }
}

impl Boundaries {
    /// The key of the process `pid` running as `uid`.
    pub fn key(&self, uid: u32, pid: Option<i32>) -> CallerKey {
        use std::hash::{Hash, Hasher};
        let boundary = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .and_then(|text| self.boundary(&text));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        boundary.hash(&mut h);
        CallerKey {
            uid,
            boundary: h.finish(),
        }
    }

    /// The deepest root-owned directory of the unified hierarchy's path in
    /// `cgroup_file`; `None` (the uid alone) when it cannot be found.
    fn boundary(&self, cgroup_file: &str) -> Option<String> {
        let path = cgroup_file
            .lines()
            .find_map(|l| l.strip_prefix("0::"))?
            .trim_end();
        let (base, abs) = if path.split('/').any(|s| s == "..") {
            self.kubelet.as_ref()?.unified_absolute(path)?
        } else {
            let base = [self.mount.join("unified"), self.mount.clone()]
                .into_iter()
                .find(|d| d.join("cgroup.controllers").exists())?;
            (base, path.to_owned())
        };
        deepest_root_owned(&base, &abs)
    }
}

/// The deepest of `path` and its ancestors (under `base`) owned by root.
fn deepest_root_owned(base: &std::path::Path, path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    loop {
        let dir = segments.iter().fold(base.to_path_buf(), |d, s| d.join(s));
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == 0) {
            return Some(format!("/{}", segments.join("/")));
        }
        segments.pop()?;
    }
}

/// What the Workload API knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique per accepted connection (for per-connection caches).
    pub id: u64,
    /// `SO_PEERCRED` of the caller.
    pub cred: Option<UCred>,
    /// Time since boot when the connection was accepted, in `USER_HZ` ticks.
    pub accepted_ticks: Option<u64>,
    /// The process that connected, pinned at accept.
    pub instance: Option<Arc<ProcessInstance>>,
    /// The caller's key for per-caller limits.
    pub caller: CallerKey,
}

#[cfg(test)]
impl ConnInfo {
    /// This process as the peer of `socket` (one end of a socket pair),
    /// pinned with a pidfd as the listener pins a caller.
    pub(crate) fn of_peer(socket: &UnixStream, id: u64) -> Self {
        let cred = socket.peer_cred().unwrap();
        let pid = cred.pid().unwrap();
        Self {
            id,
            cred: Some(cred),
            accepted_ticks: uptime_ticks(),
            instance: Some(Arc::new(ProcessInstance::capture(socket, pid, true))),
            caller: Boundaries::default().key(cred.uid(), Some(pid)),
        }
    }
}

/// An accepted Workload API connection. Its HTTP/2 bytes go through
/// [`AuthorityShim`] so that clients sending a socket path as `:authority`
/// (gRPC C-core, grpc-java) are served like any other.
pub struct WorkloadConn {
    inner: AuthorityShim<UnixStream>,
    info: ConnInfo,
    _permit: ConnPermit<CallerKey>,
}

impl Connected for WorkloadConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Time since boot in `USER_HZ` ticks, from /proc/uptime (the clock process
/// start times are counted in).
pub fn uptime_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime_ticks(&text)
}

fn parse_uptime_ticks(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, "0"));
    let secs: u64 = secs.parse().ok()?;
    let hundredths: u64 = format!("{frac:0<2}").get(..2)?.parse().ok()?;
    Some(secs * USER_HZ + hundredths * USER_HZ / 100)
}

/// How accepted connections are admitted.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Connection limits.
    pub limits: ConnLimiter<CallerKey>,
    /// Pin callers with a pidfd where the kernel has `SO_PEERPIDFD`.
    pub use_pidfd: bool,
    /// What a caller's key is made of.
    pub boundaries: Boundaries,
    /// The header deadline and buffer budget of the connections' shims.
    pub shim: lanyard_uds::ShimLimits,
}

/// Accepted connections with their [`ConnInfo`]. Connections over a limit
/// are closed at once (and logged); accept errors back off instead of
/// spinning, so a full descriptor table cannot busy-loop the agent.
pub fn incoming(
    listener: UnixListener,
    admission: Admission,
) -> impl Stream<Item = io::Result<WorkloadConn>> {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let state = (listener, admission, lanyard_uds::accept_backoff());
    futures_util::stream::unfold(state, |(listener, admission, mut backoff)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    stream
                }
                Err(e) => {
                    let pause = backoff.failed();
                    tracing::warn!(?e, ?pause, "accept failed; backing off");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let accepted_ticks = uptime_ticks();
            let cred = stream.peer_cred().ok();
            let pid = cred.and_then(|c| c.pid());
            let caller = admission
                .boundaries
                .key(cred.map_or(u32::MAX, |c| c.uid()), pid);
            let permit = match admission.limits.try_acquire(caller) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(pid = ?pid, uid = ?cred.map(|c| c.uid()), %e, "connection refused");
                    drop(stream);
                    continue;
                }
            };
            let instance =
                pid.map(|p| Arc::new(ProcessInstance::capture(&stream, p, admission.use_pidfd)));
            let conn = WorkloadConn {
                inner: AuthorityShim::new(stream, &admission.shim),
                info: ConnInfo {
                    id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    cred,
                    accepted_ticks,
                    instance,
                    caller,
                },
                _permit: permit,
            };
            return Some((Ok(conn), (listener, admission, backoff)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boundary_is_the_deepest_root_owned_cgroup() {
        let b = Boundaries::default();
        // This process's own cgroup exists and root owns it (tests run as
        // root); a path below it that does not exist falls back to it.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let mine = b.boundary(&own).unwrap();
        assert_eq!(mine.trim_end_matches('/'), path.trim_end_matches('/'));
        let deeper = format!("0::{}/no-such-child\n", path.trim_end_matches('/'));
        assert_eq!(b.boundary(&deeper), Some(mine));
        // Outside this agent's namespace with no kubelet view: the uid alone.
        assert_eq!(b.boundary("0::/../../pod/x\n"), None);
        assert_eq!(b.boundary("garbage"), None);
        assert_eq!(b.key(5, None), b.key(5, None));
        assert_ne!(b.key(5, None), b.key(6, None));
    }

    #[test]
    fn parses_uptime() {
        assert_eq!(parse_uptime_ticks("12345.67 54321.00\n"), Some(1_234_567));
        assert_eq!(parse_uptime_ticks("5.1 1.0"), Some(510));
        assert_eq!(parse_uptime_ticks("garbage"), None);
        assert!(uptime_ticks().unwrap() > 0);
    }
}
