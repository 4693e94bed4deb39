//! Safe extraction of an app package (a zip) into the build dir.
//!
//! The package comes from a user, so no entry may land outside the build dir: names with
//! `..` or an absolute path are refused, and symlinks are created last and only when their
//! target resolves inside the build dir (with no `..` after a normal component, so a chain
//! of links cannot climb out). Files keep their executable bit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a package could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the package is not a valid zip file: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("the package entry '{0}' would be written outside the app dir; remove it from the app and push again")]
    UnsafePath(String),
    #[error("the package symlink '{name}' points to '{target}', outside the app dir; remove it from the app and push again")]
    UnsafeSymlink { name: String, target: String },
    #[error("the package expands to more than {limit} bytes; make the app smaller")]
    TooLarge { limit: u64 },
    #[error("extracting '{name}': {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(name: &str) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        name: name.to_string(),
        source,
    }
}

/// Extracts the zip `reader` into `dest` (an existing, empty directory). Returns the
/// number of bytes written. Refuses to expand beyond `max_bytes`.
pub fn extract_zip<R: Read + Seek>(
    reader: R,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, ExtractError> {
    let mut archive = zip::ZipArchive::new(reader)?;
    let mut symlinks = Vec::new();
    let mut written = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let name = entry.name().to_string();
        let relative = safe_relative_path(&name)?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&relative);
        if entry.is_dir() {
            fs::create_dir_all(&target).map_err(io_err(&name))?;
            continue;
        }
        if entry.is_symlink() {
            let mut link_target = String::new();
            entry
                .read_to_string(&mut link_target)
                .map_err(io_err(&name))?;
            symlinks.push((name, relative, link_target));
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(&name))?;
        }
        let executable = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .open(&target)
            .map_err(io_err(&name))?;
        let remaining = max_bytes.saturating_sub(written);
        let n = io::copy(&mut (&mut entry).take(remaining + 1), &mut out).map_err(io_err(&name))?;
        written += n;
        if written > max_bytes {
            return Err(ExtractError::TooLarge { limit: max_bytes });
        }
    }
    for (name, relative, link_target) in symlinks {
        create_contained_symlink(dest, &name, &relative, &link_target)?;
    }
    Ok(written)
}

/// Extracts the zip file at `package` into `dest`.
pub fn extract_zip_file(package: &Path, dest: &Path, max_bytes: u64) -> Result<u64, ExtractError> {
    let file = File::open(package).map_err(io_err("the package"))?;
    extract_zip(io::BufReader::new(file), dest, max_bytes)
}

/// The entry name as a relative path of normal components only.
fn safe_relative_path(name: &str) -> Result<PathBuf, ExtractError> {
    strato_core::paths::app_relative(name).ok_or_else(|| ExtractError::UnsafePath(name.to_string()))
}

/// Creates the symlink `relative -> link_target` under `dest` when the target stays inside.
fn create_contained_symlink(
    dest: &Path,
    name: &str,
    relative: &Path,
    link_target: &str,
) -> Result<(), ExtractError> {
    let unsafe_link = || ExtractError::UnsafeSymlink {
        name: name.to_string(),
        target: link_target.to_string(),
    };
    let root = dest.canonicalize().map_err(io_err(name))?;
    let parent = dest
        .join(relative)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dest.to_path_buf());
    // Earlier links all point inside, so creating missing parents through them stays inside.
    fs::create_dir_all(&parent).map_err(io_err(name))?;
    let parent = parent.canonicalize().map_err(io_err(name))?;
    // The depth is measured on disk, through links created so far.
    let depth = match parent.strip_prefix(&root) {
        Ok(inside) => inside.components().count(),
        Err(_) => return Err(unsafe_link()),
    };
    if !strato_core::paths::link_stays_inside(depth, link_target) {
        return Err(unsafe_link());
    }
    let link = parent.join(relative.file_name().ok_or_else(unsafe_link)?);
    std::os::unix::fs::symlink(link_target, &link).map_err(io_err(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    enum Entry<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn zip_of(entries: &[Entry]) -> Cursor<Vec<u8>> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for e in entries {
            match e {
                Entry::File(name, data, mode) => {
                    w.start_file(*name, SimpleFileOptions::default().unix_permissions(*mode))
                        .unwrap();
                    w.write_all(data).unwrap();
                }
                Entry::Dir(name) => w
                    .add_directory(*name, SimpleFileOptions::default())
                    .unwrap(),
                Entry::Link(name, target) => w
                    .add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap(),
            }
        }
        let mut c = w.finish().unwrap();
        c.set_position(0);
        c
    }

    #[test]
    fn extracts_files_dirs_modes_and_inner_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[
            Entry::Dir("lib/"),
            Entry::File("lib/a.txt", b"aaa", 0o644),
            Entry::File("run.sh", b"#!/bin/sh\n", 0o755),
            Entry::Link("lib/link", "a.txt"),
            Entry::Link("sub/up", "../run.sh"),
        ]);
        let n = extract_zip(zip, dir.path(), 1 << 20).unwrap();
        assert_eq!(n, 13);
        assert_eq!(fs::read(dir.path().join("lib/link")).unwrap(), b"aaa");
        assert_eq!(fs::read(dir.path().join("sub/up")).unwrap(), b"#!/bin/sh\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn refuses_traversal_and_absolute_names() {
        for name in ["../evil", "a/../../evil", "/etc/evil"] {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("app");
            fs::create_dir(&dest).unwrap();
            let zip = zip_of(&[Entry::File(name, b"x", 0o644)]);
            let err = extract_zip(zip, &dest, 1 << 20).unwrap_err();
            assert!(matches!(err, ExtractError::UnsafePath(_)), "{name}: {err}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn refuses_symlinks_pointing_outside() {
        for target in ["/etc/passwd", "../outside", "sub/../../x", "a/../../../x"] {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("app");
            fs::create_dir(&dest).unwrap();
            let zip = zip_of(&[Entry::Link("link", target)]);
            let err = extract_zip(zip, &dest, 1 << 20).unwrap_err();
            assert!(
                matches!(err, ExtractError::UnsafeSymlink { .. }),
                "{target}: {err}"
            );
            assert!(fs::symlink_metadata(dest.join("link")).is_err());
        }
    }

    #[test]
    fn a_link_to_dot_cannot_be_used_to_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app");
        fs::create_dir(&dest).unwrap();
        let zip = zip_of(&[Entry::Link("here", "."), Entry::Link("here/out", "../x")]);
        let err = extract_zip(zip, &dest, 1 << 20).unwrap_err();
        assert!(matches!(err, ExtractError::UnsafeSymlink { .. }), "{err}");
    }

    #[test]
    fn refuses_packages_larger_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[Entry::File("big", &[7u8; 100], 0o644)]);
        let err = extract_zip(zip, dir.path(), 50).unwrap_err();
        assert!(matches!(err, ExtractError::TooLarge { limit: 50 }), "{err}");
    }
}
