//! Writing key material safely: a file appears whole or not at all (temporary file, fsync,
//! rename), with the permission bits set before any byte is written, so a private key is
//! never readable by others, not even for an instant.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::TlsError;

/// Permissions of private keys.
pub(crate) const PRIVATE: u32 = 0o600;
/// Permissions of certificates (public).
pub(crate) const PUBLIC: u32 = 0o644;

/// Creates `dir` (and its parents) with `mode` when it does not exist yet.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<(), TlsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| TlsError::io(dir, source))
}

/// Replaces `path` with `contents` atomically, the new file having `mode`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = temporary_sibling(path);
    let written = write_new(&tmp, contents, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(TlsError::io(path, source));
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// `.<name>.tmp-<pid>-<n>` beside `path`: hidden, so directory scans skip it.
fn temporary_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Reads a whole text file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::io(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_atomic(&path, b"one", PRIVATE).unwrap();
        write_atomic(&path, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
