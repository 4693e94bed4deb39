//! Droplets: a staged app as one gzipped tar — `app/` (the build dir) and
//! `staging_info.json` (`{"detected_buildpack","start_command","pre_running","cron"}`) — stored in the
//! [`BlobStore`] under its sha256.
//!
//! Symlinks are stored as symlinks (a venv's `bin/python` points at `/usr/bin/python3`,
//! which the app container's stack provides), never followed.

use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use strato_blobs::{BlobError, BlobKind, BlobStore};

/// `staging_info.json` at the droplet's root. The DEA runs `pre_running` before the start
/// command of every instance and `cron` lines in instance 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingInfo {
    pub detected_buildpack: String,
    pub start_command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_running: Vec<crate::app_config::Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<String>,
}

/// The name of the info file inside the droplet.
pub const STAGING_INFO: &str = "staging_info.json";

/// Why a droplet could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    #[error("writing the droplet: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Packs `build_dir` and `info` into a droplet in `store`; returns its sha256 and size.
pub fn write_droplet(
    store: &BlobStore,
    build_dir: &Path,
    info: &StagingInfo,
) -> Result<(String, u64), DropletError> {
    let writer = CountingWriter {
        inner: store.writer(BlobKind::Droplet)?,
        count: 0,
    };
    let mut tar = tar::Builder::new(GzEncoder::new(writer, Compression::fast()));
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all("app", build_dir)?;
    let json = serde_json::to_vec_pretty(info).map_err(io::Error::other)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    tar.append_data(&mut header, STAGING_INFO, json.as_slice())?;
    let mut counting = tar.into_inner()?.finish()?;
    counting.flush()?;
    let size = counting.count;
    Ok((counting.inner.commit()?, size))
}

/// Counts the bytes passing to the blob writer, to report the droplet's size.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads `staging_info.json` back out of a droplet file.
pub fn read_staging_info(droplet: &Path) -> io::Result<StagingInfo> {
    let file = std::fs::File::open(droplet)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.as_os_str() == STAGING_INFO {
            return serde_json::from_reader(entry).map_err(io::Error::other);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} has no {STAGING_INFO}", droplet.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn droplet_holds_app_links_and_info() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        std::fs::create_dir_all(build.join(".venv/bin")).unwrap();
        std::fs::write(build.join("app.py"), "print(1)").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", build.join(".venv/bin/python")).unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let info = StagingInfo {
            detected_buildpack: "python".into(),
            start_command: ".venv/bin/python app.py".into(),
            pre_running: vec![crate::app_config::Hook {
                command: "echo warm".into(),
                ignore_failure: true,
            }],
            cron: vec!["* * * * * date".into()],
        };
        let (sha, size) = write_droplet(&store, &build, &info).unwrap();
        let path = store.path_of(BlobKind::Droplet, &sha).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(strato_blobs::sha256_file(&path).unwrap(), sha);
        assert_eq!(read_staging_info(&path).unwrap(), info);

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&path).unwrap(),
        ));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            if name == "app/.venv/bin/python" {
                assert!(entry.header().entry_type().is_symlink());
                assert_eq!(
                    entry.link_name().unwrap().unwrap().display().to_string(),
                    "/usr/bin/python3"
                );
            }
            names.push(name);
        }
        assert!(names.contains(&"app/app.py".to_string()), "{names:?}");
        assert!(
            names.contains(&"app/.venv/bin/python".to_string()),
            "{names:?}"
        );
    }
}
