//! Files only the server may read (private keys, the credential key file),
//! written whole or not at all.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a new file at `path`, mode 0600: into a new, randomly
/// named temporary file beside it, synced, then renamed into place and the directory
/// synced, so a crash leaves either no file or the whole one. An existing
/// file is not replaced (`AlreadyExists`; one server owns its data dir).
/// On failure, the path at fault.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let at = |p: &Path| {
        let p = p.to_owned();
        move |e| (p, e)
    };
    if path.exists() {
        return Err((path.to_owned(), std::io::ErrorKind::AlreadyExists.into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    // A new, randomly named file: O_CREAT | O_EXCL neither reuses a file
    // nor follows a link planted at that name.
    let mut r = [0u8; 8];
    aws_lc_rs::rand::fill(&mut r)
        .map_err(|_| (path.to_owned(), std::io::Error::other("no randomness")))?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(r)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(at(&tmp))?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err((tmp, e));
    }
    std::fs::rename(&tmp, path)
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_private_and_an_existing_one_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        write_new(&path, b"first").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let (at, e) = write_new(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(at, path);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }
}
