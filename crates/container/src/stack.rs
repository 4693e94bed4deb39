//! Stacks: the root filesystem a container sees.
//!
//! The default stack is made from the host: an empty rootfs dir per container with the
//! host's `/usr` bind-mounted read-only, `/bin /lib /lib64 /sbin` as symlinks into it (Debian
//! 12 is merged-usr), copies of the few `/etc` files apps need (resolver, certificates
//! config, registry settings; never the host's secrets) and a synthetic `passwd`/`group`
//! holding the app user. Later stacks may be full root filesystems; they plug in here.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{ContainerError, Mount, APP_HOME, APP_USER};

/// The `/etc` entries a stack shows by default, when the host has them. Files are copied,
/// directories bind-mounted read-only.
pub const DEFAULT_ETC_ENTRIES: &[&str] = &[
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "mime.types",
    "pip.conf",
    "npmrc",
    "gai.conf",
    "host.conf",
    "protocols",
    "services",
    "os-release",
];

/// A root filesystem recipe built from the host's `/usr` and a chosen part of its `/etc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// The stack's name as DEAs advertise it (`"default"`).
    pub name: String,
    /// The host directory mounted read-only at `/usr`.
    pub host_usr: PathBuf,
    /// The host directory the `/etc` entries come from.
    pub host_etc: PathBuf,
    /// Names under `host_etc` to show (missing ones are skipped).
    pub etc_entries: Vec<String>,
}

impl Default for Stack {
    fn default() -> Self {
        Stack::host_default()
    }
}

/// What preparing a rootfs produced: bind mounts the runtime must add.
pub(crate) struct PreparedRootfs {
    pub mounts: Vec<Mount>,
}

impl Stack {
    /// The `default` stack: the host's `/usr` and [`DEFAULT_ETC_ENTRIES`] of `/etc`.
    pub fn host_default() -> Self {
        Stack {
            name: "default".to_string(),
            host_usr: PathBuf::from("/usr"),
            host_etc: PathBuf::from("/etc"),
            etc_entries: DEFAULT_ETC_ENTRIES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Lays out `rootfs` (an empty dir) for a container running as `uid:gid`.
    pub(crate) fn prepare_rootfs(
        &self,
        rootfs: &Path,
        uid: u32,
        gid: u32,
    ) -> Result<PreparedRootfs, ContainerError> {
        for dir in [
            "usr", "etc", "proc", "sys", "dev", "tmp", "run", "var/tmp", "root",
        ] {
            create_dir(&rootfs.join(dir))?;
        }
        create_dir(&rootfs.join(APP_HOME.trim_start_matches('/')))?;
        // runc gives a tmpfs the mode of the directory it covers.
        for dir in ["tmp", "var/tmp"] {
            let path = rootfs.join(dir);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o1777))
                .map_err(ContainerError::io(format!("chmod {}", path.display())))?;
        }
        for name in ["bin", "lib", "lib64", "sbin", "lib32", "libx32"] {
            if self.host_usr.join(name).exists() {
                let link = rootfs.join(name);
                symlink(format!("usr/{name}"), &link)
                    .map_err(ContainerError::io(format!("symlink {}", link.display())))?;
            }
        }
        let mut mounts = vec![Mount {
            source: self.host_usr.clone(),
            destination: "/usr".to_string(),
            read_only: true,
        }];
        mounts.extend(self.copy_etc(&rootfs.join("etc"))?);
        write_file(&rootfs.join("etc/passwd"), &passwd(uid, gid))?;
        write_file(&rootfs.join("etc/group"), &group(gid))?;
        write_file(&rootfs.join("etc/hostname"), "localhost\n")?;
        Ok(PreparedRootfs { mounts })
    }

    /// Copies the chosen `/etc` files into `etc` and returns bind mounts for directories.
    fn copy_etc(&self, etc: &Path) -> Result<Vec<Mount>, ContainerError> {
        let mut mounts = Vec::new();
        for name in &self.etc_entries {
            if name.contains('/') || name == ".." || name == "." || name == "passwd" {
                continue;
            }
            let source = self.host_etc.join(name);
            let Ok(meta) = fs::metadata(&source) else {
                continue;
            };
            let target = etc.join(name);
            if meta.is_dir() {
                create_dir(&target)?;
                mounts.push(Mount {
                    source: source.canonicalize().unwrap_or(source),
                    destination: format!("/etc/{name}"),
                    read_only: true,
                });
            } else if meta.is_file() {
                fs::copy(&source, &target).map_err(ContainerError::io(format!(
                    "copy {} into the container's /etc",
                    source.display()
                )))?;
            }
        }
        Ok(mounts)
    }
}

/// The synthetic `/etc/passwd`: root, nobody and the app user (home = the app dir).
fn passwd(uid: u32, gid: u32) -> String {
    let mut out = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    if uid != 0 {
        out.push_str(&format!(
            "{APP_USER}:x:{uid}:{gid}:Stackato app:{APP_HOME}:/bin/sh\n"
        ));
    }
    out.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    out
}

fn group(gid: u32) -> String {
    let mut out = String::from("root:x:0:\n");
    if gid != 0 {
        out.push_str(&format!("{APP_USER}:x:{gid}:\n"));
    }
    out.push_str("nogroup:x:65534:\n");
    out
}

fn create_dir(path: &Path) -> Result<(), ContainerError> {
    fs::create_dir_all(path).map_err(ContainerError::io(format!("create {}", path.display())))
}

fn write_file(path: &Path, content: &str) -> Result<(), ContainerError> {
    fs::write(path, content).map_err(ContainerError::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_has_usr_links_app_user_and_only_chosen_etc() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Stack::host_default()
            .prepare_rootfs(dir.path(), 1234, 2345)
            .unwrap();
        assert_eq!(
            fs::read_link(dir.path().join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("stackato:x:1234:2345:"), "{passwd}");
        assert!(!dir.path().join("etc/shadow").exists());
        assert!(prepared
            .mounts
            .iter()
            .any(|m| m.destination == "/usr" && m.read_only));
        assert!(dir.path().join("home/stackato/app").is_dir());
    }
}
