//! Content-addressed blobs: droplets (`<sha256>.tgz`) and packages (`<sha256>.zip`).
//!
//! The controller stores uploaded packages here, the stager reads them and stores droplets,
//! and each DEA keeps a cache of the droplets it runs in a store of its own: one layout and
//! one hashing routine for all three.
//!
//! A blob's name is the sha256 of its bytes, so a DEA can verify what it fetched and two
//! stagings that produce the same bytes share one file. Blobs are written to a temporary
//! file in the same directory while hashing and renamed into place only when complete, so
//! readers never see a partial blob. The API stays narrow (put, path, exists, delete) because
//! in a cluster the same directory is shared or served over HTTP.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[cfg(feature = "remote")]
pub mod remote;

/// What a blob is; decides its file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A staged app: a gzipped tar of `app/` and `staging_info.json`.
    Droplet,
    /// An uploaded app: a zip of its files.
    Package,
}

impl BlobKind {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            BlobKind::Droplet => "tgz",
            BlobKind::Package => "zip",
        }
    }

    /// The kind's name in URLs and messages: `droplet` or `package`.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Droplet => "droplet",
            BlobKind::Package => "package",
        }
    }

    /// The kind a [`BlobKind::name`] names.
    pub fn from_name(name: &str) -> Option<BlobKind> {
        match name {
            "droplet" => Some(BlobKind::Droplet),
            "package" => Some(BlobKind::Package),
            _ => None,
        }
    }
}

/// What can go wrong with blobs.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("'{0}' is not a sha256: expected 64 lowercase hex digits")]
    InvalidSha(String),
    #[error("the blob has sha256 {actual}, expected {expected}: it is corrupt or the wrong one")]
    ShaMismatch { expected: String, actual: String },
    #[error("blob store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A local directory of content-addressed blobs.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(BlobStore { root })
    }

    /// The directory holding the blobs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `sha256` of `kind` lives (whether or not it exists).
    pub fn path_of(&self, kind: BlobKind, sha256: &str) -> Result<PathBuf, BlobError> {
        check_sha(sha256)?;
        Ok(self.root.join(format!("{sha256}.{}", kind.extension())))
    }

    /// True when the blob is stored.
    pub fn exists(&self, kind: BlobKind, sha256: &str) -> bool {
        self.path_of(kind, sha256)
            .map(|p| p.is_file())
            .unwrap_or(false)
    }

    /// Removes a blob; `Ok(false)` when it was not there.
    pub fn delete(&self, kind: BlobKind, sha256: &str) -> Result<bool, BlobError> {
        let path = self.path_of(kind, sha256)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Copies the file at `source` into the store and returns its sha256.
    pub fn put_file(&self, kind: BlobKind, source: &Path) -> Result<String, BlobError> {
        let mut input = File::open(source).map_err(io_err(source))?;
        let mut writer = self.writer(kind)?;
        io::copy(&mut input, &mut writer).map_err(io_err(source))?;
        writer.commit()
    }

    /// Moves the finished file at `path` into the store under its sha256 and returns the
    /// sha256. `path` must be on the store's filesystem (make it inside [`BlobStore::root`],
    /// e.g. with a temp file there), for blobs written by a library that needs to seek.
    pub fn adopt(&self, kind: BlobKind, path: &Path) -> Result<String, BlobError> {
        let sha = sha256_file(path).map_err(io_err(path))?;
        let dest = self.path_of(kind, &sha)?;
        fs::rename(path, &dest).map_err(io_err(&dest))?;
        Ok(sha)
    }

    /// A writer for a new blob: write its bytes, then [`BlobWriter::commit`] to name it by
    /// its sha256. Dropping the writer without committing discards it.
    pub fn writer(&self, kind: BlobKind) -> Result<BlobWriter, BlobError> {
        let temp = self
            .root
            .join(format!(".incoming-{}", uuid::Uuid::new_v4().simple()));
        let file = File::create(&temp).map_err(io_err(&temp))?;
        Ok(BlobWriter {
            store: self.clone(),
            kind,
            temp,
            file: Some(file),
            hasher: Sha256::new(),
        })
    }
}

/// A blob being written; see [`BlobStore::writer`].
pub struct BlobWriter {
    store: BlobStore,
    kind: BlobKind,
    temp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
}

impl BlobWriter {
    /// Flushes the blob to disk, renames it to `<sha256>.<ext>` and returns the sha256.
    pub fn commit(self) -> Result<String, BlobError> {
        self.commit_if(|_| Ok(()))
    }

    /// Like [`BlobWriter::commit`], but only when the bytes hash to `expected` (a download
    /// verified against the sha256 it was asked for); otherwise nothing is stored.
    pub fn commit_expecting(self, expected: &str) -> Result<String, BlobError> {
        let expected = expected.to_ascii_lowercase();
        self.commit_if(|actual| {
            if actual == expected {
                Ok(())
            } else {
                Err(BlobError::ShaMismatch {
                    expected: expected.clone(),
                    actual: actual.to_string(),
                })
            }
        })
    }

    fn commit_if(
        mut self,
        check: impl FnOnce(&str) -> Result<(), BlobError>,
    ) -> Result<String, BlobError> {
        let file = self.file.take().ok_or_else(|| BlobError::Io {
            path: self.temp.clone(),
            source: io::Error::other("blob writer already finished"),
        })?;
        file.sync_all().map_err(io_err(&self.temp))?;
        drop(file);
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let stored = check(&sha)
            .and_then(|()| self.store.path_of(self.kind, &sha))
            .and_then(|dest| fs::rename(&self.temp, &dest).map_err(io_err(&dest)));
        if stored.is_err() {
            let _ = fs::remove_file(&self.temp);
        }
        stored.map(|()| sha)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The sha256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn check_sha(sha: &str) -> Result<(), BlobError> {
    let ok = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidSha(sha.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_names_blob_by_sha256_and_delete_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"hello").unwrap();
        let sha = store.put_file(BlobKind::Package, &src).unwrap();
        assert_eq!(
            sha,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let path = store.path_of(BlobKind::Package, &sha).unwrap();
        assert!(path.ends_with(format!("{sha}.zip")));
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert!(store.exists(BlobKind::Package, &sha));
        assert!(!store.exists(BlobKind::Droplet, &sha));
        assert_eq!(sha256_file(&path).unwrap(), sha);
        assert!(store.delete(BlobKind::Package, &sha).unwrap());
        assert!(!store.delete(BlobKind::Package, &sha).unwrap());
        assert!(!store.exists(BlobKind::Package, &sha));
    }

    #[test]
    fn abandoned_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer(BlobKind::Droplet).unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_verified_write_stores_only_the_expected_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let mut w = store.writer(BlobKind::Droplet).unwrap();
        w.write_all(b"hellO").unwrap();
        assert!(matches!(
            w.commit_expecting(hello),
            Err(BlobError::ShaMismatch { .. })
        ));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing is kept"
        );
        let mut w = store.writer(BlobKind::Droplet).unwrap();
        w.write_all(b"hello").unwrap();
        assert_eq!(w.commit_expecting(hello).unwrap(), hello);
        assert!(store.exists(BlobKind::Droplet, hello));
    }

    #[test]
    fn adopt_moves_a_finished_file_in_by_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let tmp = tempfile::NamedTempFile::new_in(store.root()).unwrap();
        fs::write(tmp.path(), b"hello").unwrap();
        let path = tmp.into_temp_path();
        let sha = store.adopt(BlobKind::Package, &path).unwrap();
        path.keep().unwrap();
        assert_eq!(
            fs::read(store.path_of(BlobKind::Package, &sha).unwrap()).unwrap(),
            b"hello"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_shas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        for bad in ["", "../etc/passwd", &"A".repeat(64), &"a".repeat(63)] {
            assert!(matches!(
                store.path_of(BlobKind::Droplet, bad),
                Err(BlobError::InvalidSha(_))
            ));
            assert!(!store.exists(BlobKind::Droplet, bad));
        }
    }
}
