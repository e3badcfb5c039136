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
    /// The socket's directory belongs to another user, who could replace
    /// the socket.
    #[error("{0} is owned by uid {1}, not by this user or root; refusing to serve a socket in it")]
    ForeignDirectory(PathBuf, u32),
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

/// Binds a unix socket at `path` with permission bits `mode`, creating the
/// parent directory (mode 0755) when missing. A stale socket left by a dead
/// process is replaced; a live one, or a file that is not a socket, is an
/// error.
pub async fn bind_unix_listener(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(dir))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir).map_err(io_err(dir))?.uid();
        let me = own_uid();
        // World-writable shared directories (/tmp) are fine: the sticky bit
        // stops others from removing our socket.
        let sticky = std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o1000 != 0)
            .unwrap_or(false);
        if owner != 0 && Some(owner) != me && !sticky {
            return Err(SocketError::ForeignDirectory(dir.to_owned(), owner));
        }
    }
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(listener)
}

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
        let l = bind_unix_listener(&path, 0o777).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        // Live: refused.
        assert!(matches!(
            bind_unix_listener(&path, 0o777).await,
            Err(SocketError::InUse(_))
        ));
        drop(l);
        // Stale: replaced.
        let _l = bind_unix_listener(&path, 0o600).await.unwrap();
        // A regular file is never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_unix_listener(&file, 0o600).await,
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
            bind_unix_listener(&sub.join("api.sock"), 0o777).await,
            Err(SocketError::ForeignDirectory(_, 54_321))
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
