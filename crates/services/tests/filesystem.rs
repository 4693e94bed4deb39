//! The filesystem node against the real kernel (as root): loop-mounted ext4 images whose
//! size the kernel enforces, shared between writers, surviving shutdown and re-open,
//! removed without leaking mounts or loop devices, exported and imported as tar with
//! escaping entries refused. A guard unmounts and detaches whatever a test leaves, also
//! when it fails.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use strato_services::filesystem::FilesystemNode;
use strato_services::{Credentials, InstanceId, NodeConfig, Plan, ServiceError, ServiceNode};
use tempfile::TempDir;

const OWNER: u32 = 20000;
const MIB: usize = 1024 * 1024;

/// A temp dir whose mounts and loop devices are undone on drop (before the dir goes).
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        // The owner must be able to traverse to the mount points, as on a real node.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        Sandbox { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    fn config(&self, capacity: u64) -> NodeConfig {
        NodeConfig {
            dir: self.path().join("filesystem"),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            port_range: None,
            capacity,
        }
    }

    async fn open(&self, capacity: u64) -> FilesystemNode {
        let started = Instant::now();
        let node = FilesystemNode::open(self.config(capacity), OWNER, OWNER)
            .await
            .unwrap();
        eprintln!("open: {:?}", started.elapsed());
        node
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let root = self.path();
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for point in points {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
        for line in losetup_lines() {
            if line.contains(root.to_str().unwrap()) {
                if let Some(device) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", device]).status();
                }
            }
        }
    }
}

fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

/// The mountinfo line of the mount at `point`, if any.
fn mount_line(point: &Path) -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|line| line.split(' ').nth(4) == point.to_str())
        .map(str::to_string)
}

fn losetup_lines() -> Vec<String> {
    let out = Command::new("losetup").arg("-a").output().unwrap();
    assert!(out.status.success(), "losetup -a failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn loop_device_lists(image: &Path) -> bool {
    let image = image.to_str().unwrap();
    losetup_lines().iter().any(|line| line.contains(image))
}

/// After shutdown: nothing of the node mounted, no loop device on its images.
async fn assert_released(node: &FilesystemNode) {
    for inst in node.instances().await.unwrap() {
        let mount = node.mount_path(&inst);
        assert!(
            mount_line(&mount).is_none(),
            "{} still mounted",
            mount.display()
        );
        let image = node.image_path(&inst);
        assert!(
            !loop_device_lists(&image),
            "loop device leaked: {:?}",
            losetup_lines()
        );
    }
}

fn plan(size_mb: u64) -> Plan {
    Plan {
        name: format!("p{size_mb}"),
        size_mb,
    }
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn host_path(creds: &Credentials) -> PathBuf {
    creds
        .host_path
        .clone()
        .expect("filesystem credentials have a host_path")
}

/// Runs `script` with `sh -c` as `uid` (apps run as the owner uid); returns success and
/// stdout.
fn sh_as(uid: u32, script: &str, dir: &Path) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .env("D", dir)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

async fn provision_timed(node: &FilesystemNode, inst: &InstanceId, p: &Plan) -> Credentials {
    let started = Instant::now();
    let creds = node.provision(inst, p).await.unwrap();
    eprintln!("provision {} MiB: {:?}", p.size_mb, started.elapsed());
    creds
}

/// A child process killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn provision_mounts_an_image_whose_size_the_kernel_enforces() {
    let sandbox = Sandbox::new();
    let node = sandbox.open(2).await;
    let a = id("fs-a-0001");
    let b = id("fs-b-0002");
    let creds = provision_timed(&node, &a, &plan(5)).await;
    let creds_b = provision_timed(&node, &b, &plan(5)).await;

    // Credentials: a name, where the DEA mounts it, no network fields.
    assert_eq!(creds.name, a.db_name("fs"));
    assert_eq!(
        creds.dir.as_deref(),
        Some(format!("/home/stackato/fs/{}", creds.name).as_str())
    );
    assert_eq!(host_path(&creds), node.mount_path(&a));
    assert!(creds.host.is_empty() && creds.port == 0 && creds.password.is_empty());
    assert!(creds.uri.is_empty());

    // A loop-mounted ext4, nodev and nosuid, root owned by the apps' uid with 0770.
    let mount = host_path(&creds);
    let line = mount_line(&mount).expect("instance is mounted");
    assert!(line.contains(" - ext4 /dev/loop"), "{line}");
    let options = line.split(' ').nth(5).unwrap();
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{line}"
    );
    let meta = std::fs::metadata(&mount).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (OWNER, OWNER));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o770);
    assert!(loop_device_lists(&node.image_path(&a)));

    // The owner writes; another uid cannot.
    let (ok, _) = sh_as(OWNER, "echo hi > \"$D/hello\"", &mount);
    assert!(ok, "the owner cannot write its filesystem");
    let (ok, _) = sh_as(OWNER + 1, "echo hi > \"$D/intruder\"", &mount);
    assert!(!ok, "another uid could write the filesystem");

    // The kernel enforces the size: a 6 MiB file does not fit in a 5 MiB plan.
    let before = node.usage_bytes(&a).await.unwrap();
    let mut file = std::fs::File::create(mount.join("big")).unwrap();
    let written = file
        .write_all(&vec![7u8; 6 * MIB])
        .and_then(|()| file.sync_all());
    let err = written.expect_err("a 6 MiB file fit into a 5 MiB filesystem");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(file);
    let kept = std::fs::metadata(mount.join("big")).unwrap();
    let full = node.usage_bytes(&a).await.unwrap();
    eprintln!(
        "usage {before} -> {full}; the refused file kept {} bytes ({} blocks)",
        kept.len(),
        kept.blocks()
    );
    assert!(kept.len() < 6 * MIB as u64);
    assert!(
        full >= before + kept.blocks() * 512,
        "usage {before} -> {full}"
    );
    assert!(full > before + MIB as u64, "usage {before} -> {full}");

    // The other instance is unaffected by A being full.
    let mut other = std::fs::File::create(host_path(&creds_b).join("fits")).unwrap();
    other.write_all(&vec![1u8; 2 * MIB]).unwrap();
    other.sync_all().unwrap();
    drop(other);

    // Idempotent provision, conflicting plan, capacity, undo of a failed provision.
    assert_eq!(node.provision(&a, &plan(5)).await.unwrap(), creds);
    let conflict = node.provision(&a, &plan(6)).await.unwrap_err();
    assert!(matches!(conflict, ServiceError::Conflict(_)), "{conflict}");
    let over = node.provision(&id("fs-c"), &plan(5)).await.unwrap_err();
    assert!(
        matches!(&over, ServiceError::Capacity { limit: 2, key } if key == "filesystem_node/capacity"),
        "{over}"
    );
    node.deprovision(&b).await.unwrap();
    let huge = id("fs-huge");
    let err = node.provision(&huge, &plan(1 << 30)).await.unwrap_err();
    eprintln!("1 PiB plan: {err}");
    assert!(
        !node.image_path(&huge).exists(),
        "a failed provision left its image"
    );
    assert!(
        !node.mount_path(&huge).exists(),
        "a failed provision left its mount point"
    );
    assert_eq!(node.instances().await.unwrap(), vec![a.clone()]);
    let tiny = node.provision(&huge, &plan(1)).await.unwrap_err();
    assert!(tiny.to_string().contains("at least"), "{tiny}");

    node.shutdown().await;
    assert_released(&node).await;
}

#[tokio::test]
async fn data_is_shared_between_writers_and_survives_shutdown_and_reopen() {
    let sandbox = Sandbox::new();
    let node = sandbox.open(4).await;
    let a = id("shared-1");
    let creds = provision_timed(&node, &a, &plan(8)).await;
    let mount = host_path(&creds);

    // Two app instances (two processes of the apps' uid) through the same host path.
    let (ok, _) = sh_as(OWNER, "echo one > \"$D/from-1\"", &mount);
    assert!(ok);
    let (ok, seen) = sh_as(
        OWNER,
        "echo two > \"$D/from-2\" && cat \"$D/from-1\"",
        &mount,
    );
    assert!(ok);
    assert_eq!(seen, "one");
    let (ok, seen) = sh_as(OWNER, "cat \"$D/from-2\"", &mount);
    assert!(ok);
    assert_eq!(seen, "two");

    // Shutdown unmounts and releases the loop device; the image keeps the data.
    let image = node.image_path(&a);
    node.shutdown().await;
    assert_released(&node).await;
    assert!(image.exists());
    let after = node.bind(&a, "b1").await.unwrap_err();
    assert!(matches!(after, ServiceError::Unavailable { .. }), "{after}");
    drop(node);

    // As after a reboot: even the mount point is gone; open mounts the image again.
    std::fs::remove_dir(&mount).unwrap();
    let node = sandbox.open(4).await;
    assert!(
        mount_line(&mount).is_some(),
        "open did not mount the instance again"
    );
    assert_eq!(node.instances().await.unwrap(), vec![a.clone()]);
    assert_eq!(node.bind(&a, "b2").await.unwrap(), creds);
    assert_eq!(
        std::fs::read_to_string(mount.join("from-1")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("from-2")).unwrap(),
        "two\n"
    );
    let meta = std::fs::metadata(&mount).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (OWNER, 0o770)
    );

    // Open on a node whose instances are mounted already changes nothing.
    let again = sandbox.open(4).await;
    assert_eq!(
        mount_points().iter().filter(|p| **p == mount).count(),
        1,
        "mounted twice"
    );
    drop(again);
    node.shutdown().await;
    assert_released(&node).await;
}

#[tokio::test]
async fn deprovision_refuses_a_busy_filesystem_then_removes_image_mount_and_loop() {
    let sandbox = Sandbox::new();
    let node = sandbox.open(4).await;
    let a = id("gone-1");
    let creds = provision_timed(&node, &a, &plan(4)).await;
    let mount = host_path(&creds);
    let image = node.image_path(&a);
    std::fs::write(mount.join("data"), b"x").unwrap();

    // A process working in it makes it busy: refused, nothing changed.
    let busy = ChildGuard(
        Command::new("sleep")
            .arg("60")
            .current_dir(&mount)
            .uid(OWNER)
            .gid(OWNER)
            .spawn()
            .unwrap(),
    );
    let err = node.deprovision(&a).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(mount_line(&mount).is_some());
    assert_eq!(std::fs::read(mount.join("data")).unwrap(), b"x");
    assert_eq!(node.instances().await.unwrap(), vec![a.clone()]);
    drop(busy);

    node.deprovision(&a).await.unwrap();
    assert!(mount_line(&mount).is_none(), "still mounted");
    assert!(!loop_device_lists(&image), "loop device leaked");
    assert!(!image.exists(), "image left");
    assert!(!mount.exists(), "mount point left");
    assert!(node.instances().await.unwrap().is_empty());
    node.deprovision(&a).await.unwrap();
    let err = node.usage_bytes(&a).await.unwrap_err();
    assert!(matches!(err, ServiceError::NotFound(_)), "{err}");

    // The table forgot it: a re-open mounts nothing.
    node.shutdown().await;
    let node = sandbox.open(4).await;
    assert!(node.instances().await.unwrap().is_empty());
    assert!(mount_line(&mount).is_none());
}

#[tokio::test]
async fn export_then_import_copies_files_links_and_modes_to_another_instance() {
    let sandbox = Sandbox::new();
    let node = sandbox.open(4).await;
    let (a, b) = (id("exp-a"), id("exp-b"));
    let from = host_path(&node.provision(&a, &plan(6)).await.unwrap());
    let into = host_path(&node.provision(&b, &plan(6)).await.unwrap());

    let (ok, _) = sh_as(
        OWNER,
        "cd \"$D\" && mkdir -p sub/deep && echo new > sub/file && echo run > sub/deep/tool \
         && chmod 750 sub/deep/tool && ln -s sub/file link && head -c 300000 /dev/urandom > blob",
        &from,
    );
    assert!(ok);
    let (ok, _) = sh_as(
        OWNER,
        "cd \"$D\" && mkdir sub && echo old > sub/file && echo k > keep",
        &into,
    );
    assert!(ok);

    let mut dump = Vec::new();
    node.export(&a, &mut dump).await.unwrap();
    let names: Vec<String> = tar::Archive::new(dump.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "sub/deep/tool"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("lost+found")), "{names:?}");

    node.import(&b, &mut dump.as_slice()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(into.join("sub/file")).unwrap(),
        "new\n"
    );
    assert_eq!(std::fs::read_to_string(into.join("keep")).unwrap(), "k\n");
    assert_eq!(
        std::fs::read(into.join("blob")).unwrap(),
        std::fs::read(from.join("blob")).unwrap()
    );
    assert_eq!(
        std::fs::read_link(into.join("link")).unwrap(),
        Path::new("sub/file")
    );
    let tool = std::fs::metadata(into.join("sub/deep/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o750);
    for path in ["sub", "sub/deep", "sub/deep/tool", "blob"] {
        let meta = std::fs::symlink_metadata(into.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (OWNER, OWNER), "{path}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&into)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".strato"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    node.shutdown().await;
    assert_released(&node).await;
}

/// A tar entry with a raw name (the tar crate refuses to build `..` names itself).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    if let Some(link) = link {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn archive(entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        raw_entry(&mut builder, name, *kind, *link, data);
    }
    builder.into_inner().unwrap()
}

#[tokio::test]
async fn import_refuses_entries_that_leave_the_filesystem_and_changes_nothing() {
    use tar::EntryType::{Link, Regular, Symlink};
    let sandbox = Sandbox::new();
    let node = sandbox.open(4).await;
    let a = id("imp-a");
    let root = host_path(&node.provision(&a, &plan(5)).await.unwrap());
    let escape_target = root.parent().unwrap().join("escape");

    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            archive(&[
                ("ok.txt", Regular, None, b"ok"),
                ("../escape", Regular, None, b"x"),
            ]),
        ),
        (
            "absolute symlink",
            archive(&[
                ("ok.txt", Regular, None, b"ok"),
                ("out", Symlink, Some("/etc"), b""),
                ("out/pwned", Regular, None, b"x"),
            ]),
        ),
        (
            "relative symlink",
            archive(&[
                ("ok.txt", Regular, None, b"ok"),
                ("d/up", Symlink, Some("../../escape"), b""),
            ]),
        ),
        (
            "hard link",
            archive(&[
                ("ok.txt", Regular, None, b"ok"),
                ("h", Link, Some("/etc/passwd"), b""),
            ]),
        ),
        (
            "absolute path",
            archive(&[
                ("ok.txt", Regular, None, b"ok"),
                ("/escape", Regular, None, b"x"),
            ]),
        ),
        (
            "too big",
            archive(&[
                ("ok.txt", Regular, None, b"ok"),
                ("big", Regular, None, &vec![0u8; 6 * MIB]),
            ]),
        ),
    ];
    for (what, tar) in bad {
        let err = node.import(&a, &mut tar.as_slice()).await.unwrap_err();
        eprintln!("{what}: {err}");
        assert!(
            !root.join("ok.txt").exists(),
            "{what}: a refused import changed the instance"
        );
        assert!(
            !escape_target.exists(),
            "{what}: wrote outside the instance"
        );
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["lost+found".to_string()], "{what}: leftovers");
    }
    assert!(!Path::new("/etc/pwned").exists());

    let good = archive(&[
        ("ok.txt", Regular, None, b"ok"),
        ("d/up", Symlink, Some("../ok.txt"), b""),
    ]);
    node.import(&a, &mut good.as_slice()).await.unwrap();
    assert_eq!(std::fs::read(root.join("d/up")).unwrap(), b"ok");
    node.shutdown().await;
    assert_released(&node).await;
}
