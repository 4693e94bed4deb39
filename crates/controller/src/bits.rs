//! App bits: resource matching by SHA1 (so a re-push sends only changed files) and turning
//! an upload plus matched resources into one package zip, content-addressed by sha256.
//!
//! Uploads are checked entry by entry: absolute paths, `..` and symlinks that lead out of
//! the app are refused before anything is stored. Entries are streamed through a temp
//! file, never held in memory, and the whole upload may expand to at most a limit, so a
//! small zip of a huge file (a zip bomb) is refused after reading just past the limit.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use strato_blobs::{BlobKind, BlobStore};
use strato_core::ApiError;

/// CF's wire form uses `fn`, a Rust keyword.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireResource {
    #[serde(rename = "fn", default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub sha1: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

fn cache_path(dir: &Path, sha1: &str) -> Option<PathBuf> {
    if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(dir.join(&sha1[..2]).join(sha1))
}

/// The subset of `wanted` the controller already has.
pub fn resource_match(dir: &Path, wanted: &[WireResource]) -> Vec<WireResource> {
    wanted
        .iter()
        .filter(|r| {
            cache_path(dir, &r.sha1)
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len() == r.size)
                .unwrap_or(false)
        })
        .cloned()
        .collect()
}

/// Checks a path inside the app: relative, no `..`, not empty.
pub fn check_entry_path(name: &str) -> Result<PathBuf, ApiError> {
    match strato_core::paths::app_relative(name) {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        Some(_) => Err(ApiError::app_bits_upload_invalid(format!(
            "the file name '{name}' is empty"
        ))),
        None => Err(ApiError::app_bits_upload_invalid(format!(
            "'{name}' points outside the app (absolute paths and '..' are refused)"
        ))),
    }
}

/// A symlink at `entry` pointing to `target` must stay inside the app.
fn check_symlink(entry: &Path, target: &str) -> Result<(), ApiError> {
    let depth = entry.components().count().saturating_sub(1);
    if strato_core::paths::link_stays_inside(depth, target) {
        Ok(())
    } else {
        Err(ApiError::app_bits_upload_invalid(format!(
            "the symlink '{}' points to '{target}', outside the app",
            entry.display()
        )))
    }
}

fn bad_zip(e: impl std::fmt::Display) -> ApiError {
    ApiError::app_bits_upload_invalid(format!("the upload is not a readable zip: {e}"))
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::server(format!("writing the package: {e}"))
}

/// How far an upload may expand (the stager's default `max_app_bytes`).
pub const MAX_EXPANDED_BYTES: u64 = 2 << 30;

/// The longest symlink target read from an upload.
const MAX_LINK_TARGET: u64 = 4096;

fn too_large(limit: u64) -> ApiError {
    ApiError::app_bits_upload_invalid(format!(
        "the upload expands to more than {} MB; make the app smaller",
        limit / (1024 * 1024)
    ))
}

/// An upload entry spooled to a temp file in the resource cache dir, with its SHA1.
struct Spooled {
    file: tempfile::NamedTempFile,
    sha1: String,
}

/// Copies `entry` into a temp file in `dir`, counting against `budget` (bytes left).
fn spool(
    entry: &mut impl Read,
    dir: &Path,
    budget: &mut u64,
    limit: u64,
) -> Result<Spooled, ApiError> {
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut hasher = sha1::Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = entry.read(&mut buf).map_err(bad_zip)?;
        if n == 0 {
            break;
        }
        if n as u64 > *budget {
            return Err(too_large(limit));
        }
        *budget -= n as u64;
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io)?;
    }
    file.rewind().map_err(io)?;
    Ok(Spooled {
        file,
        sha1: hex::encode(hasher.finalize()),
    })
}

/// Builds the package from an uploaded zip (may be absent when every file matched) and
/// the matched resources; returns its sha256. The upload may expand to at most
/// `max_expanded` bytes. Blocking: call from `spawn_blocking`.
pub fn build_package(
    upload: Option<&Path>,
    matched: &[WireResource],
    resources_dir: &Path,
    blobs: &BlobStore,
    max_expanded: u64,
) -> Result<String, ApiError> {
    let tmp = tempfile::NamedTempFile::new_in(blobs.root()).map_err(io)?;
    let mut out = zip::ZipWriter::new(tmp.reopen().map_err(io)?);
    let mut seen = std::collections::HashSet::new();
    if let Some(upload) = upload {
        std::fs::create_dir_all(resources_dir).map_err(io)?;
        let file = std::fs::File::open(upload).map_err(io)?;
        let mut zin = zip::ZipArchive::new(file).map_err(bad_zip)?;
        let mut budget = max_expanded;
        for i in 0..zin.len() {
            let mut entry = zin.by_index(i).map_err(bad_zip)?;
            let name = entry.name().to_string();
            let path = check_entry_path(&name)?;
            let mode = entry.unix_mode().unwrap_or(0o644);
            let rel = path.to_string_lossy().to_string();
            if entry.is_dir() {
                out.add_directory(rel, zip_opts(mode | 0o700))
                    .map_err(bad_zip)?;
                continue;
            }
            if mode & 0o170000 == 0o120000 {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_LINK_TARGET)
                    .read_to_end(&mut target)
                    .map_err(bad_zip)?;
                let target = String::from_utf8_lossy(&target).to_string();
                check_symlink(&path, &target)?;
                out.add_symlink(rel.clone(), target, zip_opts(0o777))
                    .map_err(bad_zip)?;
                seen.insert(rel);
                continue;
            }
            let mut spooled = spool(&mut entry, resources_dir, &mut budget, max_expanded)?;
            out.start_file(rel.clone(), zip_opts(mode & 0o777))
                .map_err(bad_zip)?;
            std::io::copy(&mut spooled.file, &mut out).map_err(io)?;
            cache_resource(resources_dir, spooled)?;
            seen.insert(rel);
        }
    }
    for r in matched {
        let name = r
            .path
            .as_deref()
            .ok_or_else(|| ApiError::app_bits_upload_invalid("a matched resource has no 'fn'"))?;
        let rel = check_entry_path(name)?.to_string_lossy().to_string();
        if !seen.insert(rel.clone()) {
            continue;
        }
        let src = cache_path(resources_dir, &r.sha1).ok_or_else(|| {
            ApiError::app_bits_upload_invalid(format!("'{}' is not a SHA1", r.sha1))
        })?;
        let data = std::fs::read(&src).map_err(|_| {
            ApiError::app_bits_upload_invalid(format!(
                "the resource {} ({name}) is not on the server; push again to send it",
                r.sha1
            ))
        })?;
        let mode = r
            .mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o644);
        out.start_file(rel, zip_opts(mode & 0o777))
            .map_err(bad_zip)?;
        out.write_all(&data).map_err(io)?;
    }
    out.finish().map_err(bad_zip)?;
    let path = tmp.into_temp_path();
    let sha = blobs
        .adopt(BlobKind::Package, &path)
        .map_err(|e| ApiError::server(format!("storing the package: {e}")))?;
    // The file now lives under its sha256; nothing is left to clean up.
    let _ = path.keep();
    Ok(sha)
}

fn zip_opts(mode: u32) -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(mode)
}

/// Keeps a spooled file in the resource cache under its SHA1 (unless it is there already).
fn cache_resource(dir: &Path, spooled: Spooled) -> Result<(), ApiError> {
    let Some(path) = cache_path(dir, &spooled.sha1) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    spooled.file.persist(&path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_with(entries: &[(&str, &[u8], u32)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(f.reopen().unwrap());
        for (name, data, mode) in entries {
            if mode & 0o170000 == 0o120000 {
                z.add_symlink(*name, std::str::from_utf8(data).unwrap(), zip_opts(0o777))
                    .unwrap();
            } else {
                z.start_file(*name, zip_opts(*mode)).unwrap();
                z.write_all(data).unwrap();
            }
        }
        z.finish().unwrap();
        f
    }

    #[test]
    fn entry_paths_must_stay_inside() {
        assert!(check_entry_path("a/b.txt").is_ok());
        assert!(check_entry_path("../etc/passwd").is_err());
        assert!(check_entry_path("/etc/passwd").is_err());
        assert!(check_entry_path("a/../../x").is_err());
        assert!(check_entry_path("").is_err());
    }

    #[test]
    fn package_combines_upload_and_matched_resources_and_refuses_escapes() {
        let res = tempfile::tempdir().unwrap();
        let pkgs = tempfile::tempdir().unwrap();
        let store = BlobStore::open(pkgs.path()).unwrap();
        let up = zip_with(&[
            ("app.py", b"print(1)", 0o755),
            ("lib/x.txt", b"hello", 0o644),
        ]);
        let sha =
            build_package(Some(up.path()), &[], res.path(), &store, MAX_EXPANDED_BYTES).unwrap();
        assert!(pkgs.path().join(format!("{sha}.zip")).exists());
        // The second push sends nothing: both files match.
        let wanted = vec![
            WireResource {
                path: Some("app.py".into()),
                sha1: hex::encode(sha1::Sha1::digest(b"print(1)")),
                size: 8,
                mode: Some("755".into()),
            },
            WireResource {
                path: Some("lib/x.txt".into()),
                sha1: hex::encode(sha1::Sha1::digest(b"hello")),
                size: 5,
                mode: None,
            },
        ];
        let matched = resource_match(res.path(), &wanted);
        assert_eq!(matched.len(), 2);
        let sha2 = build_package(None, &matched, res.path(), &store, MAX_EXPANDED_BYTES).unwrap();
        let mut z = zip::ZipArchive::new(
            std::fs::File::open(pkgs.path().join(format!("{sha2}.zip"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            z.by_name("app.py").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );

        let upload = |zip: &tempfile::NamedTempFile| {
            build_package(
                Some(zip.path()),
                &[],
                res.path(),
                &store,
                MAX_EXPANDED_BYTES,
            )
        };
        let evil = zip_with(&[("../../evil", b"x", 0o644)]);
        assert!(upload(&evil).unwrap_err().description.contains("outside"));
        let link = zip_with(&[("a/link", b"../../etc/passwd", 0o120777)]);
        assert!(upload(&link).unwrap_err().description.contains("outside"));
        let ok_link = zip_with(&[("a/link", b"../app.py", 0o120777)]);
        assert!(upload(&ok_link).is_ok());
    }

    #[test]
    fn an_upload_expanding_past_the_limit_is_refused_without_reading_it_all() {
        let res = tempfile::tempdir().unwrap();
        let pkgs = tempfile::tempdir().unwrap();
        let store = BlobStore::open(pkgs.path()).unwrap();
        // 8 MB of zeros compress to a few KB.
        let zeros = vec![0u8; 8 << 20];
        let bomb = zip_with(&[("a", &zeros[..], 0o644), ("b", b"small", 0o644)]);
        assert!(std::fs::metadata(bomb.path()).unwrap().len() < 100_000);
        let err = build_package(Some(bomb.path()), &[], res.path(), &store, 1 << 20).unwrap_err();
        assert!(
            err.description.contains("expands to more than 1 MB"),
            "{err:?}"
        );
        assert!(build_package(Some(bomb.path()), &[], res.path(), &store, 16 << 20).is_ok());
        let cached = cache_path(res.path(), &hex::encode(sha1::Sha1::digest(&zeros))).unwrap();
        assert_eq!(
            std::fs::metadata(cached).unwrap().len(),
            8 << 20,
            "files land in the cache"
        );
    }
}
