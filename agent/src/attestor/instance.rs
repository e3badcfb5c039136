//! The process instance behind a Workload API connection, pinned when the
//! connection is accepted and checked again before every answer and every
//! stream send.
//!
//! Where the kernel has `SO_PEERPIDFD` (Linux 6.5+), the connection holds a
//! pidfd of the process that connected: while that pidfd reports the
//! process alive, its PID cannot have been reused, so what /proc says about
//! the PID is about that process. Elsewhere (or with `use_pidfd = false`)
//! the process start time stands in for it, with the accept-time guard of
//! the attestor. Either way the executable (device and inode of
//! /proc/PID/exe) seen at accept must still be the one running: a process
//! that execs another program, or exits and leaves its descriptor to
//! another, is no longer the caller that connected.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::proc_info;

/// Why the process behind a connection is no longer the one that connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstanceChanged {
    /// It exited (its descriptor lives on in another process), or its PID
    /// now names another process.
    #[error("the process that opened this connection has exited")]
    Exited,
    /// It exec'd another program since connecting.
    #[error("the process behind this connection exec'd another program")]
    Execd,
}

/// Device and inode of a running executable.
pub type ExeId = (u64, u64);

/// The executable behind an open `/proc/PID` directory: `fstatat` on the
/// `exe` link, with no path walk through `/proc` (and, the directory being
/// the process's own, no PID-reuse question).
fn exe_id_at(dir: &std::fs::File) -> Option<ExeId> {
    exe_lookup(dir).ok()
}

/// As [`exe_id_at`], with the reason when the link cannot be followed:
/// `ENOENT` once the process has released its memory on the way out (which
/// happens before its pidfd reports the exit), or when its directory is
/// that of a process gone.
fn exe_lookup(dir: &std::fs::File) -> nix::Result<ExeId> {
    nix::sys::stat::fstatat(dir, "exe", nix::fcntl::AtFlags::empty())
        .map(|st| (st.st_dev, st.st_ino))
}

/// One connected process instance.
#[derive(Debug)]
pub struct ProcessInstance {
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// `/proc/PID`, opened at accept.
    dir: Option<std::fs::File>,
    start: Option<u64>,
    exe: Option<ExeId>,
    /// Whether `dir` is known to be the connected process's own: the
    /// pidfd still reported it alive after the directory was opened, so
    /// its PID had not been reused. Lookups in such a directory fail once
    /// that process has exited (even if its PID is reused), so reading the
    /// `exe` link through it checks liveness and program in one syscall.
    dir_pinned: bool,
}

impl ProcessInstance {
    /// Pins the process behind `socket` (its peer `pid`).
    pub fn capture(socket: &impl AsFd, pid: i32, use_pidfd: bool) -> Self {
        let root = Path::new("/proc");
        let pidfd = if use_pidfd {
            nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerPidfd).ok()
        } else {
            None
        };
        let dir = std::fs::File::open(root.join(pid.to_string())).ok();
        let exe = dir.as_ref().and_then(exe_id_at);
        let mut instance = Self {
            pid,
            pidfd,
            dir,
            start: proc_info::start_time(root, pid).ok(),
            exe,
            dir_pinned: false,
        };
        instance.dir_pinned = instance.pidfd.is_some()
            && instance.dir.is_some()
            && instance.exe.is_some()
            && instance.alive();
        instance
    }

    /// The PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether a pidfd backs this instance.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// The executable seen at accept.
    pub fn exe(&self) -> Option<ExeId> {
        self.exe
    }

    /// The start time read at accept.
    pub fn start_time(&self) -> Option<u64> {
        self.start
    }

    /// Whether the process is still running (pidfd, or the start time at
    /// the same PID).
    pub fn alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    // A pidfd turns readable when its process exits.
                    Ok(0) => true,
                    Ok(_) => !fds[0]
                        .revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)),
                    Err(_) => false,
                }
            }
            None => {
                self.start.is_some()
                    && proc_info::start_time(Path::new("/proc"), self.pid).ok() == self.start
            }
        }
    }

    /// Checks that the same process, running the same program, is still
    /// behind the connection.
    pub fn check(&self) -> Result<(), InstanceChanged> {
        // The common case, one syscall: the pinned directory still shows
        // the same executable, so the process is alive and unchanged.
        if self.dir_pinned && self.dir.as_ref().and_then(exe_id_at) == self.exe {
            return Ok(());
        }
        if !self.alive() {
            return Err(InstanceChanged::Exited);
        }
        let (Some(exe), Some(dir)) = (self.exe, self.dir.as_ref()) else {
            return Ok(());
        };
        match exe_lookup(dir) {
            Ok(now) if now == exe => Ok(()),
            Ok(_) => Err(InstanceChanged::Execd),
            // No executable: the process is on its way out (its memory is
            // released before its pidfd turns readable) or a zombie, whose
            // start time still matches when no pidfd backs the check.
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => {
                Err(InstanceChanged::Exited)
            }
            Err(_) if !self.alive() => Err(InstanceChanged::Exited),
            // Alive but no longer readable (a set-user-ID exec, say): not
            // the program that connected.
            Err(_) => Err(InstanceChanged::Execd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process connected to a listener of ours, and our end.
    fn connected_child(dir: &Path) -> (std::process::Child, std::os::unix::net::UnixStream) {
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(60)",
            ])
            .arg(&path)
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        (child, conn)
    }

    #[test]
    fn an_exited_peer_is_seen_with_and_without_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        for use_pidfd in [true, false] {
            let (mut child, conn) = connected_child(dir.path());
            let pid = child.id() as i32;
            let inst = ProcessInstance::capture(&conn, pid, use_pidfd);
            assert_eq!(inst.has_pidfd(), use_pidfd);
            assert_eq!(inst.check(), Ok(()));
            assert!(inst.exe().is_some());
            child.kill().unwrap();
            child.wait().unwrap();
            // The connection (our end) is still open; the process is gone.
            assert_eq!(
                inst.check(),
                Err(InstanceChanged::Exited),
                "pidfd {use_pidfd}"
            );
            std::fs::remove_file(dir.path().join("s.sock")).unwrap();
        }
    }

    #[test]
    fn a_killed_peer_not_yet_reaped_is_seen_as_exited() {
        let dir = tempfile::tempdir().unwrap();
        for use_pidfd in [true, false] {
            let (mut child, conn) = connected_child(dir.path());
            let inst = ProcessInstance::capture(&conn, child.id() as i32, use_pidfd);
            assert_eq!(inst.dir_pinned, use_pidfd);
            assert_eq!(inst.check(), Ok(()));
            child.kill().unwrap();
            // A zombie until waited for: its /proc directory is still
            // there, its executable no longer is.
            let mut tries = 0;
            while inst.check().is_ok() && tries < 500 {
                std::thread::sleep(std::time::Duration::from_millis(10));
                tries += 1;
            }
            // A dying process loses its executable before its pidfd turns
            // readable, and without a pidfd a zombie still has its start
            // time: in both cases the missing executable says it exited,
            // whichever moment of its exit the check lands on.
            for _ in 0..3 {
                assert_eq!(
                    inst.check(),
                    Err(InstanceChanged::Exited),
                    "pidfd {use_pidfd}"
                );
            }
            child.wait().unwrap();
            std::fs::remove_file(dir.path().join("s.sock")).unwrap();
        }
    }

    #[test]
    fn a_peer_that_execs_another_program_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        for use_pidfd in [true, false] {
            // Connects, then replaces itself with `sleep`, keeping the
            // connection open across the exec.
            let mut child = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import os,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
                     os.set_inheritable(s.fileno(), True); sys.stdin.read(1); \
                     os.execv('/bin/sleep', ['sleep', '60'])",
                ])
                .arg(&path)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let (conn, _) = listener.accept().unwrap();
            let inst = ProcessInstance::capture(&conn, child.id() as i32, use_pidfd);
            assert_eq!(inst.check(), Ok(()));
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"x").unwrap();
            let mut tries = 0;
            while inst.check().is_ok() && tries < 500 {
                std::thread::sleep(std::time::Duration::from_millis(10));
                tries += 1;
            }
            assert_eq!(
                inst.check(),
                Err(InstanceChanged::Execd),
                "pidfd {use_pidfd}"
            );
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
