//! Unix-domain-socket plumbing shared by the agent's Workload API, the
//! server's admin API and their command-line clients.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint};

/// Why a socket could not be bound or reached.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another live process already serves on the path.
    #[error("{0} is in use by another running process")]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A directory on the way to the socket belongs to another user, who
    /// could replace the socket.
    #[error(
        "{0} is owned by uid {1}, not by this user or root; refusing to serve a socket under it"
    )]
    ForeignDirectory(PathBuf, u32),
    /// A directory on the way to the socket is writable by others and not
    /// sticky: anyone could swap what is in it.
    #[error(
        "{0} has mode {1:o}: writable by other users and not sticky; refusing to serve a socket under it"
    )]
    WritableDirectory(PathBuf, u32),
    /// A path on the way to the socket is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// An I/O error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The gRPC channel could not be built.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: tonic::transport::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Who may traverse the directory a socket is created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketDir {
    /// Only this user (0700): the admin socket.
    Private,
    /// Everyone may reach the socket (0755): the Workload API, whose
    /// callers are told apart by attestation.
    Shared,
}

impl SocketDir {
    fn mode(self) -> u32 {
        match self {
            SocketDir::Private => 0o700,
            SocketDir::Shared => 0o755,
        }
    }
}

/// Checks one existing directory: it must belong to root or to us, and
/// nobody else may write to it unless it is sticky (like /tmp, where others
/// cannot remove or rename what we create).
fn check_dir(dir: &Path, me: Option<u32>) -> Result<(), SocketError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(SocketError::NotADirectory(dir.to_owned()));
    }
    let owner = meta.uid();
    if owner != 0 && Some(owner) != me {
        return Err(SocketError::ForeignDirectory(dir.to_owned(), owner));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(SocketError::WritableDirectory(
            dir.to_owned(),
            mode & 0o7777,
        ));
    }
    Ok(())
}

/// Makes sure every directory from `/` to `dir` is one no other user
/// controls, creating the missing ones (mode per `kind`) one at a time and
/// checking each after creating it, so a directory someone else slipped in
/// first is refused rather than used.
pub fn secure_dir(dir: &Path, kind: SocketDir) -> Result<PathBuf, SocketError> {
    let me = own_uid();
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir().map_err(io_err(dir))?.join(dir)
    };
    let mut current = PathBuf::from("/");
    for part in absolute.components().skip(1) {
        use std::path::Component;
        match part {
            Component::Normal(name) => current.push(name),
            Component::ParentDir => {
                current.pop();
                continue;
            }
            _ => continue,
        }
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // Follow a symlink only when its own directory was checked
                // (it is) and it points somewhere that passes the checks.
                let target = std::fs::canonicalize(&current).map_err(io_err(&current))?;
                for anc in target.ancestors().collect::<Vec<_>>().into_iter().rev() {
                    check_dir(anc, me)?;
                }
                current = target;
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                use std::os::unix::fs::DirBuilderExt;
                match std::fs::DirBuilder::new()
                    .mode(kind.mode())
                    .create(&current)
                {
                    Ok(()) => {
                        std::fs::set_permissions(
                            &current,
                            std::fs::Permissions::from_mode(kind.mode()),
                        )
                        .map_err(io_err(&current))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&current)(e)),
                }
            }
            Err(e) => return Err(io_err(&current)(e)),
        }
        check_dir(&current, me)?;
    }
    check_dir(Path::new("/"), me)?;
    Ok(current)
}

/// Binds a unix socket at `path` with permission bits `mode`. Every
/// directory above it must belong to root or to this user and be writable
/// by nobody else (sticky directories such as /tmp excepted); missing ones
/// are created with the mode `dir` asks for. A stale socket left by a dead
/// process is replaced; a live one, or a file that is not a socket, is an
/// error.
pub async fn bind_unix_listener(
    path: &Path,
    mode: u32,
    dir: SocketDir,
) -> Result<UnixListener, SocketError> {
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    secure_dir(parent, dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    // A deep accept queue: a flood of connects from one local caller (which
    // the accept loop closes at once, over its limits) must not leave
    // other callers' connects refused with EAGAIN while the loop catches
    // up. The kernel caps it at net.core.somaxconn.
    nix::sys::socket::listen(
        &listener,
        nix::sys::socket::Backlog::new(LISTEN_BACKLOG)
            .unwrap_or(nix::sys::socket::Backlog::MAXCONN),
    )
    .map_err(|e| io_err(path)(io::Error::from(e)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(listener)
}

/// The accept queue asked for on every unix socket Lanyard serves.
pub const LISTEN_BACKLOG: i32 = 4096;

/// The effective uid of this process (the owner of `/proc/self`).
pub fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Strips an optional `unix://` or `unix:` prefix from a socket address
/// (the `SPIFFE_ENDPOINT_SOCKET` form).
pub fn socket_path(addr: &str) -> PathBuf {
    let p = addr
        .strip_prefix("unix://")
        .or_else(|| addr.strip_prefix("unix:"))
        .unwrap_or(addr);
    PathBuf::from(p)
}

/// A lazily connecting gRPC channel over the unix socket at `path`.
pub fn unix_channel(path: &Path) -> Result<Channel, SocketError> {
    let owned = path.to_owned();
    // The URI is required by tonic but never dialled: the connector below
    // always opens the socket.
    let endpoint =
        Endpoint::try_from("http://[::1]:50051").map_err(|source| SocketError::Connect {
            path: path.to_owned(),
            source,
        })?;
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let p = owned.clone();
            async move { UnixStream::connect(p).await.map(TokioIo::new) }
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_stale_socket_and_refuses_live_or_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let l = bind_unix_listener(&path, 0o777, SocketDir::Shared)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        // Live: refused.
        assert!(matches!(
            bind_unix_listener(&path, 0o777, SocketDir::Shared).await,
            Err(SocketError::InUse(_))
        ));
        drop(l);
        // Stale: replaced.
        let _l = bind_unix_listener(&path, 0o600, SocketDir::Private)
            .await
            .unwrap();
        // A regular file is never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_unix_listener(&file, 0o600, SocketDir::Private).await,
            Err(SocketError::NotASocket(_))
        ));
        assert!(file.exists());
    }

    #[tokio::test]
    async fn refuses_a_directory_another_user_controls() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("theirs");
        std::fs::create_dir(&sub).unwrap();
        // Only root can hand the directory to another user; elsewhere the
        // situation cannot be built, so there is nothing to check.
        if std::os::unix::fs::chown(&sub, Some(54_321), None).is_err() {
            return;
        }
        assert!(matches!(
            bind_unix_listener(&sub.join("api.sock"), 0o777, SocketDir::Shared).await,
            Err(SocketError::ForeignDirectory(_, 54_321))
        ));
        // Not only the immediate parent: any ancestor.
        assert!(matches!(
            bind_unix_listener(&sub.join("deeper/api.sock"), 0o777, SocketDir::Shared).await,
            Err(SocketError::ForeignDirectory(_, 54_321))
        ));
    }

    #[tokio::test]
    async fn refuses_an_ancestor_others_can_write_and_creates_private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        // Pre-created world-writable, non-sticky directory (the /tmp/lanyard
        // attack): refused, however deep the socket is below it.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            bind_unix_listener(&open.join("a/b/api.sock"), 0o777, SocketDir::Shared).await,
            Err(SocketError::WritableDirectory(..))
        ));
        // Sticky and world-writable (like /tmp) is fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let path = open.join("x/y/admin.sock");
        let _l = bind_unix_listener(&path, 0o600, SocketDir::Private)
            .await
            .unwrap();
        for d in [open.join("x"), open.join("x/y")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // A symlink to an unsafe place is followed and refused.
        let evil = dir.path().join("evil");
        std::fs::create_dir(&evil).unwrap();
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&evil, &link).unwrap();
        assert!(matches!(
            bind_unix_listener(&link.join("api.sock"), 0o777, SocketDir::Shared).await,
            Err(SocketError::WritableDirectory(..))
        ));
    }

    #[test]
    fn strips_unix_scheme() {
        assert_eq!(
            socket_path("unix:///tmp/a.sock"),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            socket_path("unix:/tmp/a.sock"),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(socket_path("/tmp/a.sock"), PathBuf::from("/tmp/a.sock"));
    }
}
