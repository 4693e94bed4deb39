//! Disk quotas for instance directories. This kernel has no quota support (DESIGN
//! "Decisions"), so an instance's directory is a sparse ext4 image of the quota's size,
//! loop-mounted (`nodev,nosuid`): the kernel refuses writes past the size with ENOSPC,
//! and the image only takes the disk space actually written. No journal: an instance dir
//! does not outlive its instance, so nothing needs replaying after a crash.
//!
//! Creating one takes tens of milliseconds (sparse file, `mkfs.ext4` with lazy inode
//! tables, `mount`); it needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ContainerError;

/// The smallest quota worth formatting (ext4's own metadata takes a few MB).
pub const MIN_QUOTA_MB: u64 = 8;

/// A mounted quota image; [`DiskQuota::release`] unmounts it and deletes the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskQuota {
    pub image: PathBuf,
    pub mount_point: PathBuf,
}

fn run(program: &str, args: &[&std::ffi::OsStr], what: &str) -> Result<(), ContainerError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(ContainerError::io(format!("cannot run {program} ({what})")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ContainerError::InvalidSpec(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl DiskQuota {
    /// Makes `mount_point` a filesystem of `size_mb` MB backed by `image`. On failure
    /// nothing is left behind.
    pub fn create(
        image: &Path,
        mount_point: &Path,
        size_mb: u64,
    ) -> Result<DiskQuota, ContainerError> {
        let size_mb = size_mb.max(MIN_QUOTA_MB);
        let quota = DiskQuota {
            image: image.to_path_buf(),
            mount_point: mount_point.to_path_buf(),
        };
        let result = (|| {
            std::fs::create_dir_all(mount_point).map_err(ContainerError::io(format!(
                "create {}",
                mount_point.display()
            )))?;
            let file = std::fs::File::create(image)
                .map_err(ContainerError::io(format!("create {}", image.display())))?;
            file.set_len(size_mb * 1024 * 1024)
                .map_err(ContainerError::io(format!("size {}", image.display())))?;
            drop(file);
            run(
                "mkfs.ext4",
                &[
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-m".as_ref(),
                    "0".as_ref(),
                    "-O".as_ref(),
                    "^has_journal".as_ref(),
                    "-E".as_ref(),
                    "lazy_itable_init=1".as_ref(),
                    image.as_os_str(),
                ],
                "formatting the disk quota image",
            )?;
            run(
                "mount",
                &[
                    "-o".as_ref(),
                    "loop,nodev,nosuid".as_ref(),
                    image.as_os_str(),
                    mount_point.as_os_str(),
                ],
                "mounting the disk quota image",
            )
        })();
        match result {
            Ok(()) => Ok(quota),
            Err(e) => {
                let _ = quota.release();
                Err(e)
            }
        }
    }

    /// Unmounts (lazily if something still holds it: the instance is gone either way),
    /// detaches the loop device (autoclear) and deletes the image and the mount point.
    pub fn release(&self) -> Result<(), ContainerError> {
        if is_mounted(&self.mount_point) {
            let plain = run("umount", &[self.mount_point.as_os_str()], "unmounting");
            if plain.is_err() {
                run(
                    "umount",
                    &["-l".as_ref(), self.mount_point.as_os_str()],
                    "unmounting (lazily)",
                )?;
            }
        }
        let _ = std::fs::remove_dir_all(&self.mount_point);
        match std::fs::remove_file(&self.image) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContainerError::io(format!(
                "remove {}",
                self.image.display()
            ))(e)),
        }
    }
}

/// True when `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == wanted)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn writes_past_the_quota_fail_and_release_leaves_nothing() {
        if !root() {
            eprintln!("skipped: disk quotas need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("i.disk");
        let mount = dir.path().join("i");
        let q = DiskQuota::create(&image, &mount, 16).unwrap();
        assert!(is_mounted(&mount));
        std::fs::write(mount.join("small"), vec![1u8; 1024 * 1024]).unwrap();
        let big = std::fs::write(mount.join("big"), vec![1u8; 32 * 1024 * 1024]);
        let err = big.expect_err("32 MB do not fit in a 16 MB quota");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        q.release().unwrap();
        assert!(!is_mounted(&mount));
        assert!(!image.exists() && !mount.exists());
        // The kernel detaches an autoclear loop device from a work queue, just after the
        // unmount returns.
        let attached = || {
            let loops = Command::new("losetup").arg("-a").output().unwrap();
            String::from_utf8_lossy(&loops.stdout).contains(&*image.to_string_lossy())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while attached() {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop device is detached"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        q.release().unwrap();
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
