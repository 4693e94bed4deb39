//! The filesystem service (REFERENCE §4 `STACKATO_FILESYSTEM`): per instance an ext4 image
//! of the plan's size, loop-mounted on this node and bind-mounted by the DEA into every
//! container of the bound apps, so the kernel enforces the size (this kernel has no quota
//! support, DESIGN "Decisions") and the instances of an app share one directory.
//!
//! No server process runs: the "server" is the kernel. Layout under `NodeConfig::dir`:
//! `images/<id>.img` (sparse, root only), `mounts/<id>` (the mount point, handed to the DEA
//! as `host_path`), `instances.json` (the instance table). Choices:
//! - The journal stays (ext4 default): after a power loss the mount replays it instead of
//!   needing a full fsck, at the price of ≈4% of the plan; `-m 0` gives apps every block.
//! - Mounts are `loop,nodev,nosuid`; `mount(8)` sets up the loop device with autoclear, so
//!   unmounting releases it.
//! - A busy mount (a process has a file or its working directory in it) is never lazily
//!   detached: deprovision fails with an error that says so and changes nothing, shutdown
//!   leaves it mounted (the data is safe, the next `open` finds it mounted).
//! - Export and import run in a thread of their own that is chrooted into the instance's
//!   mount and has dropped to the apps' uid, so no symlink an app plants can make them
//!   read or write anything but that instance. Import extracts into a staging directory
//!   first, rejects entries that leave the root (`..`, absolute paths, symlinks or hard
//!   links pointing out, devices), and only merges into the instance once the whole
//!   archive was read.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::mount::MntFlags;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::state::InstanceTable;
use crate::{Credentials, InstanceId, NodeConfig, Plan, ServiceError, ServiceKind, ServiceNode};

/// Where the DEA bind-mounts an instance inside containers (plus the instance name).
pub const CONTAINER_FS_ROOT: &str = "/home/stackato/fs";
/// The smallest plan: below 2 MiB ext4 has no room for a journal.
pub const MIN_SIZE_MB: u64 = 2;
const CAPACITY_KEY: &str = "filesystem_node/capacity";
/// Import staging directories in an instance's root start with this; export skips them.
const STAGING_PREFIX: &str = ".strato-import-";
/// How long an unmount may take to release its loop device (autoclear is asynchronous).
const LOOP_RELEASE_WAIT: Duration = Duration::from_secs(3);
const CHUNK: usize = 64 * 1024;
/// How long a busy mount is retried before unmounting reports it in use.
const BUSY_RETRY: Duration = Duration::from_millis(500);

/// What the instance table keeps per instance; paths follow from the id and the node dir.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FsInstance {
    plan: Plan,
}

/// A node holding loop-mounted ext4 images, one per filesystem service instance.
pub struct FilesystemNode {
    /// Canonical `NodeConfig::dir`, so mount points compare equal to `/proc/self/mountinfo`.
    dir: PathBuf,
    capacity: u64,
    owner_uid: u32,
    owner_gid: u32,
    table: InstanceTable<FsInstance>,
    /// Serialises provision, deprovision, mounting and shutdown.
    lifecycle: Mutex<()>,
    /// Instances with an import running (one at a time per instance).
    importing: StdMutex<HashSet<InstanceId>>,
    shut_down: AtomicBool,
}

impl FilesystemNode {
    /// Opens the node in `config.dir` (created if missing) and mounts every image in its
    /// table that is not mounted yet (after a restart or a reboot). Files in an instance
    /// belong to `owner_uid:owner_gid` (the uid apps run as, 20000 in Strato); its root
    /// directory gets mode 0770. `config.address` and `config.port` are unused.
    ///
    /// Needs root (it mounts). An image that cannot be mounted is logged and retried by
    /// the next operation on it, so one broken instance does not stop the others.
    pub async fn open(
        config: NodeConfig,
        owner_uid: u32,
        owner_gid: u32,
    ) -> Result<Self, ServiceError> {
        require_root()?;
        if owner_uid == 0 {
            return Err(ServiceError::Other(
                "the filesystem service's owner uid is 0; give the uid apps run as (20000)"
                    .to_string(),
            ));
        }
        let dir = prepare_dirs(&config.dir)?;
        let table = InstanceTable::load(&dir.join("instances.json"))?;
        let node = FilesystemNode {
            dir,
            capacity: config.capacity,
            owner_uid,
            owner_gid,
            table,
            lifecycle: Mutex::new(()),
            importing: StdMutex::new(HashSet::new()),
            shut_down: AtomicBool::new(false),
        };
        for id in node.table.ids().await {
            if let Err(e) = node.ensure_mounted(&id).await {
                tracing::error!(instance = %id, error = %e, "cannot mount filesystem instance");
            }
        }
        Ok(node)
    }

    /// The image file of `id`.
    pub fn image_path(&self, id: &InstanceId) -> PathBuf {
        self.dir.join("images").join(format!("{id}.img"))
    }

    /// The mount point of `id` on this host (the credentials' `host_path`).
    pub fn mount_path(&self, id: &InstanceId) -> PathBuf {
        self.dir.join("mounts").join(id.as_str())
    }

    fn credentials(&self, id: &InstanceId) -> Credentials {
        let name = id.db_name("fs");
        Credentials {
            dir: Some(format!("{CONTAINER_FS_ROOT}/{name}")),
            host_path: Some(self.mount_path(id)),
            name,
            ..Credentials::default()
        }
    }

    fn check_running(&self) -> Result<(), ServiceError> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(ServiceError::Unavailable {
                server: "filesystem".to_string(),
                reason: "the node was shut down; open it again".to_string(),
            });
        }
        Ok(())
    }

    /// The instance's record, or `NotFound`.
    async fn record(&self, id: &InstanceId) -> Result<FsInstance, ServiceError> {
        self.table
            .get(id)
            .await
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))
    }

    /// Mounts `id`'s image unless it is mounted already.
    async fn ensure_mounted(&self, id: &InstanceId) -> Result<(), ServiceError> {
        self.check_running()?;
        let _lifecycle = self.lifecycle.lock().await;
        self.ensure_mounted_locked(id).await
    }

    async fn ensure_mounted_locked(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let mount = self.mount_path(id);
        if is_mounted(&mount)? {
            return Ok(());
        }
        let image = self.image_path(id);
        if !image.exists() {
            return Err(ServiceError::Unavailable {
                server: "filesystem".to_string(),
                reason: format!(
                    "the image of instance {id} ({}) is missing; restore it from a backup or deprovision the instance",
                    image.display()
                ),
            });
        }
        // A loop device still attached (the fs is in use elsewhere) must not be checked.
        if loop_devices_for(&image).is_empty() {
            check_image(&image).await?;
        }
        self.mount_image(&image, &mount).await
    }

    /// Mounts `image` at `mount` and hands the root directory to the owner.
    async fn mount_image(&self, image: &Path, mount: &Path) -> Result<(), ServiceError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(mount)
            .map_err(|e| ServiceError::io("cannot create mount point", mount, e))?;
        run(
            "mount",
            &[
                "-t".as_ref(),
                "ext4".as_ref(),
                "-o".as_ref(),
                "loop,nodev,nosuid".as_ref(),
                image.as_os_str(),
                mount.as_os_str(),
            ],
        )
        .await?;
        let owned = std::os::unix::fs::chown(mount, Some(self.owner_uid), Some(self.owner_gid))
            .and_then(|()| std::fs::set_permissions(mount, std::fs::Permissions::from_mode(0o770)));
        if let Err(e) = owned {
            let _ = unmount(mount).await;
            return Err(ServiceError::io(
                "cannot give the filesystem root to the apps' user",
                mount,
                e,
            ));
        }
        Ok(())
    }

    /// Creates, formats and mounts a new image; on any failure removes what it made.
    async fn create_instance(&self, id: &InstanceId, plan: &Plan) -> Result<(), ServiceError> {
        // Leftovers of a provision that crashed before it was recorded.
        self.teardown(id).await?;
        let made = self.create_instance_steps(id, plan).await;
        if made.is_err() {
            if let Err(e) = self.teardown(id).await {
                tracing::error!(instance = %id, error = %e, "cannot undo a failed provision");
            }
        }
        made
    }

    async fn create_instance_steps(
        &self,
        id: &InstanceId,
        plan: &Plan,
    ) -> Result<(), ServiceError> {
        let image = self.image_path(id);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&image)
            .map_err(|e| ServiceError::io("cannot create filesystem image", &image, e))?;
        let bytes = plan
            .size_mb
            .checked_mul(1024 * 1024)
            .ok_or_else(|| ServiceError::Other(format!("plan '{}' is too large", plan.name)))?;
        file.set_len(bytes)
            .map_err(|e| ServiceError::io("cannot size filesystem image", &image, e))?;
        drop(file);
        run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                image.as_os_str(),
            ],
        )
        .await?;
        self.mount_image(&image, &self.mount_path(id)).await
    }

    /// Unmounts `id` (refusing when busy), waits for its loop device to go, removes the
    /// mount point and the image. Missing pieces are fine.
    async fn teardown(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let mount = self.mount_path(id);
        let image = self.image_path(id);
        if is_mounted(&mount)? {
            unmount(&mount).await?;
        }
        if !wait_for_loop_release(&image).await {
            tracing::warn!(
                instance = %id,
                "the loop device of {} stays attached after unmount (still mounted in a container?); the kernel frees it when the last user goes",
                image.display()
            );
        }
        match std::fs::remove_dir_all(&mount) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ServiceError::io("cannot remove mount point", &mount, e))
            }
            _ => {}
        }
        match std::fs::remove_file(&image) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ServiceError::io(
                "cannot remove filesystem image",
                &image,
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Marks `id` as importing; `None` when an import into it is running already.
    fn start_import(&self, id: &InstanceId) -> Option<ImportGuard<'_>> {
        let mut importing = self.importing.lock().unwrap_or_else(|e| e.into_inner());
        importing.insert(id.clone()).then(|| ImportGuard {
            node: self,
            id: id.clone(),
        })
    }
}

/// Removes an instance from `importing` when the import ends, however it ends.
struct ImportGuard<'a> {
    node: &'a FilesystemNode,
    id: InstanceId,
}

impl Drop for ImportGuard<'_> {
    fn drop(&mut self) {
        let mut importing = self
            .node
            .importing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        importing.remove(&self.id);
    }
}

#[async_trait]
impl ServiceNode for FilesystemNode {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Filesystem
    }

    async fn provision(&self, id: &InstanceId, plan: &Plan) -> Result<Credentials, ServiceError> {
        require_root()?;
        self.check_running()?;
        let _lifecycle = self.lifecycle.lock().await;
        if let Some(existing) = self.table.get(id).await {
            if existing.plan != *plan {
                return Err(ServiceError::Conflict(id.to_string()));
            }
            self.ensure_mounted_locked(id).await?;
            return Ok(self.credentials(id));
        }
        if self.table.len().await as u64 >= self.capacity {
            return Err(ServiceError::Capacity {
                limit: self.capacity,
                key: CAPACITY_KEY.to_string(),
            });
        }
        if plan.size_mb < MIN_SIZE_MB {
            return Err(ServiceError::Other(format!(
                "plan '{}' gives {} MiB; a filesystem instance needs at least {MIN_SIZE_MB} MiB",
                plan.name, plan.size_mb
            )));
        }
        self.create_instance(id, plan).await?;
        let record = FsInstance { plan: plan.clone() };
        if let Err(e) = self.table.put(id, record).await {
            if let Err(undo) = self.teardown(id).await {
                tracing::error!(instance = %id, error = %undo, "cannot undo a failed provision");
            }
            return Err(e);
        }
        tracing::info!(instance = %id, size_mb = plan.size_mb, "provisioned filesystem instance");
        Ok(self.credentials(id))
    }

    async fn deprovision(&self, id: &InstanceId) -> Result<(), ServiceError> {
        require_root()?;
        self.check_running()?;
        let _lifecycle = self.lifecycle.lock().await;
        self.teardown(id).await?;
        self.table.remove(id).await?;
        Ok(())
    }

    async fn bind(&self, id: &InstanceId, _binding: &str) -> Result<Credentials, ServiceError> {
        self.record(id).await?;
        self.ensure_mounted(id).await?;
        Ok(self.credentials(id))
    }

    /// Nothing to revoke: the DEA removes the bind mount when it stops the containers.
    /// A tar of the instance's files (without `lost+found`), read as the apps' user.
    /// Apps keep writing meanwhile: each file is read once, the whole is no snapshot.
    /// Sockets are skipped; symlinks are stored as symlinks.
    async fn export(
        &self,
        id: &InstanceId,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<(), ServiceError> {
        self.record(id).await?;
        self.ensure_mounted(id).await?;
        let mount = self.mount_path(id);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
        let done = run_confined(&mount, self.owner_uid, self.owner_gid, move || {
            export_tree(ChannelWriter::new(tx))
        })?;
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = out.write_all(&chunk).await {
                drop(rx);
                let _ = done.await;
                return Err(ServiceError::io("cannot write the export", &mount, e));
            }
        }
        out.flush()
            .await
            .map_err(|e| ServiceError::io("cannot write the export", &mount, e))?;
        worker_result(done.await, &mount)
    }

    /// Extracts a tar into the instance, replacing files of the same names and keeping
    /// the others; files belong to the apps' user. Nothing changes unless the whole
    /// archive is valid and fits.
    async fn import(
        &self,
        id: &InstanceId,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), ServiceError> {
        self.record(id).await?;
        self.ensure_mounted(id).await?;
        let _importing = self.start_import(id).ok_or_else(|| {
            ServiceError::Other(format!(
                "an import into filesystem instance {id} is running; wait for it to finish"
            ))
        })?;
        let mount = self.mount_path(id);
        let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(8);
        let done = run_confined(&mount, self.owner_uid, self.owner_gid, move || {
            import_tree(ChannelReader::new(rx))
        })?;
        let mut buf = vec![0u8; CHUNK];
        let mut input_error = None;
        loop {
            match input.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Ok(buf[..n].to_vec())).await.is_err() {
                        break; // the worker stopped reading: its result says why
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string()))).await;
                    input_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let result = worker_result(done.await, &mount);
        if let Some(e) = input_error {
            return Err(ServiceError::io(
                "cannot read the archive to import",
                &mount,
                e,
            ));
        }
        result
    }

    /// Blocks in use on the instance's filesystem (what counts against its size).
    async fn usage_bytes(&self, id: &InstanceId) -> Result<u64, ServiceError> {
        self.record(id).await?;
        self.ensure_mounted(id).await?;
        let mount = self.mount_path(id);
        let stat = nix::sys::statvfs::statvfs(&mount)
            .map_err(|e| ServiceError::io("cannot measure filesystem", &mount, e.into()))?;
        let used_blocks = stat.blocks().saturating_sub(stat.blocks_free());
        Ok(used_blocks.saturating_mul(stat.fragment_size()))
    }

    async fn instances(&self) -> Result<Vec<InstanceId>, ServiceError> {
        Ok(self.table.ids().await)
    }

    /// Unmounts every instance (data stays in the images). A busy one stays mounted.
    async fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        let _lifecycle = self.lifecycle.lock().await;
        for id in self.table.ids().await {
            let mount = self.mount_path(&id);
            let unmounted = match is_mounted(&mount) {
                Ok(true) => unmount(&mount).await,
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            match unmounted {
                Ok(()) => {
                    if !wait_for_loop_release(&self.image_path(&id)).await {
                        tracing::warn!(instance = %id, "loop device still attached after unmount");
                    }
                }
                Err(e) => tracing::warn!(instance = %id, error = %e, "left mounted at shutdown"),
            }
        }
    }
}

// ---- host checks and commands -------------------------------------------------------

fn require_root() -> Result<(), ServiceError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(ServiceError::Other(
        "the filesystem service needs root: it formats and loop-mounts an ext4 image per instance; run the filesystem role as root"
            .to_string(),
    ))
}

/// Creates `dir`, `dir/images` (0700) and `dir/mounts` (0711) and returns `dir` canonical.
fn prepare_dirs(dir: &Path) -> Result<PathBuf, ServiceError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ServiceError::io("cannot create the service directory", dir, e))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| ServiceError::io("cannot resolve the service directory", dir, e))?;
    for (sub, mode) in [("images", 0o700), ("mounts", 0o711)] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| ServiceError::io("cannot prepare directory", &path, e))?;
    }
    Ok(dir)
}

/// Runs an administration command (util-linux, e2fsprogs) and fails with its stderr.
async fn run(program: &str, args: &[&OsStr]) -> Result<(), ServiceError> {
    let output = command(program).args(args).output().await.map_err(|e| {
        ServiceError::Other(format!(
            "cannot run {program} ({e}); install util-linux and e2fsprogs"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ServiceError::Command {
        program: program.to_string(),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// `program` from /usr/sbin or /sbin when it is there (root's PATH may lack them).
fn command(program: &str) -> tokio::process::Command {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.exists());
    let mut cmd = match found {
        Some(path) => tokio::process::Command::new(path),
        None => tokio::process::Command::new(program),
    };
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    cmd
}

/// `e2fsck -p` before mounting an image that was not unmounted by us (e.g. a reboot).
async fn check_image(image: &Path) -> Result<(), ServiceError> {
    let output = command("e2fsck")
        .arg("-p")
        .arg(image)
        .output()
        .await
        .map_err(|e| ServiceError::Other(format!("cannot run e2fsck ({e}); install e2fsprogs")))?;
    // 0: clean, 1: errors fixed, 2: fixed (reboot advised for a root fs); more: not fixed.
    match output.status.code() {
        Some(0..=2) => Ok(()),
        _ => Err(ServiceError::Command {
            program: "e2fsck".to_string(),
            status: output.status.to_string(),
            stderr: format!(
                "{}; repair it by hand with `e2fsck -f -y {}`",
                String::from_utf8_lossy(&output.stdout).trim(),
                image.display()
            ),
        }),
    }
}

/// Unmounts `mount`, retrying a busy one briefly: a worker thread chrooted into it or a
/// child forked while a file in it was open holds it for a moment after it finished.
/// Still busy after that: an error that says so (never a lazy detach).
async fn unmount(mount: &Path) -> Result<(), ServiceError> {
    let deadline = tokio::time::Instant::now() + BUSY_RETRY;
    loop {
        match nix::mount::umount2(mount, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(Errno::EBUSY) => return Err(ServiceError::Other(format!(
                "the filesystem at {} is in use (a process has a file or its working directory in it); stop the apps bound to it and retry",
                mount.display()
            ))),
            Err(e) => return Err(ServiceError::io("cannot unmount", mount, e.into())),
        }
    }
}

/// Whether something is mounted exactly at `path` (canonical) in this mount namespace.
fn is_mounted(path: &Path) -> Result<bool, ServiceError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ServiceError::io("cannot read mount table", "/proc/self/mountinfo", e))?;
    let wanted = path.as_os_str().as_encoded_bytes();
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| unescape_mount_path(point) == wanted))
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo paths.
fn unescape_mount_path(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The loop devices (`loop3`) whose backing file is `image`.
fn loop_devices_for(image: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let wanted = image.as_os_str().as_encoded_bytes();
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().as_encoded_bytes().starts_with(b"loop"))
        .filter(|entry| {
            std::fs::read(entry.path().join("loop/backing_file")).is_ok_and(|backing| {
                let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
                let backing = backing.strip_suffix(b" (deleted)").unwrap_or(backing);
                backing == wanted
            })
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits until no loop device is backed by `image`; `false` when one still is.
async fn wait_for_loop_release(image: &Path) -> bool {
    let deadline = tokio::time::Instant::now() + LOOP_RELEASE_WAIT;
    loop {
        if loop_devices_for(image).is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- confined workers ---------------------------------------------------------------

type WorkerResult<T> = Result<T, ServiceError>;

/// Runs `work` on a new thread that is chrooted into `root` and runs as `uid:gid` with
/// no supplementary groups. Credentials and the fs root are per thread in Linux; the
/// raw syscalls change only this thread (glibc's wrappers would change all), and the
/// thread ends with `work`.
fn run_confined<T, F>(
    root: &Path,
    uid: u32,
    gid: u32,
    work: F,
) -> Result<oneshot::Receiver<WorkerResult<T>>, ServiceError>
where
    T: Send + 'static,
    F: FnOnce() -> WorkerResult<T> + Send + 'static,
{
    let (done_tx, done_rx) = oneshot::channel();
    let root = root.to_path_buf();
    std::thread::Builder::new()
        .name("filesystem-worker".to_string())
        .spawn(move || {
            let result = confine(&root, uid, gid)
                .map_err(|e| {
                    ServiceError::io("cannot confine the worker to the instance", &root, e)
                })
                .and_then(|()| work());
            let _ = done_tx.send(result);
        })
        .map_err(|e| ServiceError::Other(format!("cannot start a filesystem worker: {e}")))?;
    Ok(done_rx)
}

fn confine(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on this thread's own state; no memory is passed but a null
    // group list of length 0.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::os::unix::fs::chroot(root)?;
    std::env::set_current_dir("/")?;
    // SAFETY: as above; umask is per thread after unshare(CLONE_FS).
    unsafe {
        libc::umask(0o022);
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn worker_result<T>(
    received: Result<WorkerResult<T>, oneshot::error::RecvError>,
    mount: &Path,
) -> Result<T, ServiceError> {
    received.unwrap_or_else(|_| {
        Err(ServiceError::Other(format!(
            "the worker for {} stopped unexpectedly",
            mount.display()
        )))
    })
}

/// Bytes written on the worker thread, sent in chunks to the async side.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the export reader went away"))
    }
}

/// Bytes read on the worker thread, received in chunks from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = into.len().min(self.chunk.len() - self.pos);
        into[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Top-level names that belong to the filesystem or to us, never to the archive.
fn is_reserved_top_level(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name == b"lost+found" || name.starts_with(STAGING_PREFIX.as_bytes())
}

/// (In the confined worker, root = the instance.) Writes a tar of `/` to `out`.
fn export_tree(out: ChannelWriter) -> WorkerResult<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    append_dir_entries(&mut builder, Path::new("/"), Path::new(""))?;
    let mut out = builder
        .into_inner()
        .map_err(|e| export_error(Path::new("/"), e))?;
    out.flush().map_err(|e| export_error(Path::new("/"), e))
}

fn export_error(path: &Path, e: io::Error) -> ServiceError {
    ServiceError::io("cannot export", path, e)
}

fn append_dir_entries(
    builder: &mut tar::Builder<ChannelWriter>,
    dir: &Path,
    rel: &Path,
) -> WorkerResult<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| export_error(dir, e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && is_reserved_top_level(&name) {
            continue;
        }
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else {
            continue; // vanished meanwhile
        };
        if file_type.is_socket() {
            continue;
        }
        let rel_path = rel.join(&name);
        match builder.append_path_with_name(&path, &rel_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(export_error(&path, e)),
            Ok(()) => {}
        }
        if file_type.is_dir() {
            append_dir_entries(builder, &path, &rel_path)?;
        }
    }
    Ok(())
}

/// (In the confined worker.) Extracts a tar into a staging directory, then merges it
/// into `/`; on any error the staging directory goes and the instance is unchanged.
fn import_tree(input: ChannelReader) -> WorkerResult<()> {
    let root = Path::new("/");
    remove_stale_staging(root);
    let staging = root.join(format!("{STAGING_PREFIX}{}", crate::random_secret(12)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| ServiceError::io("cannot create import staging directory", &staging, e))?;
    let dir_modes = match extract(input, &staging) {
        Ok(modes) => modes,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let merged = merge(&staging, root)
        .and_then(|()| std::fs::remove_dir(&staging))
        .map_err(|e| ServiceError::io("cannot move imported files into place", &staging, e));
    if merged.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    merged?;
    // Directory modes last, so a read-only directory did not stop its own extraction.
    for (rel, mode) in dir_modes.iter().rev() {
        let _ = std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(*mode));
    }
    Ok(())
}

fn remove_stale_staging(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if name
            .as_encoded_bytes()
            .starts_with(STAGING_PREFIX.as_bytes())
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Unpacks every entry under `staging` after checking it; returns the directories'
/// modes (relative path, mode) to apply at the end.
fn extract(input: ChannelReader, staging: &Path) -> WorkerResult<Vec<(PathBuf, u32)>> {
    use tar::EntryType;
    let bad = |what: String| ServiceError::Other(format!("cannot import: {what}"));
    let mut archive = tar::Archive::new(input);
    let mut dir_modes = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("broken archive ({e})")))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let Some(rel) = entry_path(&entry).map_err(|e| bad(format!("entry '{shown}': {e}")))?
        else {
            continue; // "." or "./": the root itself
        };
        if rel
            .components()
            .next()
            .is_some_and(|c| is_reserved_top_level(c.as_os_str()))
        {
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                let mode = entry.header().mode().unwrap_or(0o755) & 0o777;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(staging.join(&rel))
                    .map_err(|e| ServiceError::io("cannot import directory", &rel, e))?;
                dir_modes.push((rel, mode));
                continue;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {}
            EntryType::Symlink => {
                let target = link_target(&entry).map_err(|e| bad(format!("'{shown}': {e}")))?;
                if !symlink_stays_inside(&rel, &target) {
                    return Err(bad(format!(
                        "symlink '{shown}' points outside the filesystem ({})",
                        target.display()
                    )));
                }
            }
            EntryType::Link => {
                let target = link_target(&entry).map_err(|e| bad(format!("'{shown}': {e}")))?;
                if !is_plain_relative(&target) {
                    return Err(bad(format!(
                        "hard link '{shown}' points outside the filesystem ({})",
                        target.display()
                    )));
                }
            }
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            other => {
                return Err(bad(format!(
                "entry '{shown}' is a {other:?}; only files, directories and links can be imported"
            )))
            }
        }
        match entry.unpack_in(staging) {
            Ok(true) => {}
            Ok(false) => return Err(bad(format!("entry '{shown}' leaves the filesystem"))),
            Err(e) => return Err(ServiceError::io("cannot import", &rel, e)),
        }
    }
    Ok(dir_modes)
}

/// The entry's path relative to the root, or an error when it leaves it (`..`, `/`).
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<Option<PathBuf>> {
    let path = entry.path()?;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("path contains '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(invalid("path is absolute")),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<PathBuf> {
    entry
        .link_name()?
        .map(|target| target.into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "link without a target"))
}

/// A path of plain names only (no `..`, not absolute).
fn is_plain_relative(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Whether a symlink at `link` (relative to the root) pointing to `target` resolves,
/// lexically, inside the root. Absolute targets are refused: the host and the
/// containers resolve them differently.
fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Moves everything in `src` into `dst`: directories merge, anything else replaces the
/// entry of the same name (never following a symlink found in `dst`).
fn merge(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let from_is_dir = entry.file_type()?.is_dir();
        match std::fs::symlink_metadata(&to) {
            Ok(existing) if existing.is_dir() && from_is_dir => {
                merge(&from, &to)?;
                std::fs::remove_dir(&from)?;
                continue;
            }
            Ok(existing) if existing.is_dir() => std::fs::remove_dir_all(&to)?,
            Ok(_) if from_is_dir => std::fs::remove_file(&to)?,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::rename(&from, &to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path(r"/a\040b\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape_mount_path(r"/plain\9"), b"/plain\\9".to_vec());
    }

    #[test]
    fn symlinks_must_resolve_inside_the_root() {
        let inside = [
            ("a", "b"),
            ("d/a", "../b"),
            ("d/e/a", "../../b"),
            ("a", "./x/../y"),
        ];
        for (link, target) in inside {
            assert!(
                symlink_stays_inside(Path::new(link), Path::new(target)),
                "{link} -> {target}"
            );
        }
        let outside = [
            ("a", "../b"),
            ("d/a", "../../b"),
            ("a", "/etc/passwd"),
            ("a", "x/../../y"),
        ];
        for (link, target) in outside {
            assert!(
                !symlink_stays_inside(Path::new(link), Path::new(target)),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn hard_link_targets_are_plain_relative_paths() {
        assert!(is_plain_relative(Path::new("a/b")));
        assert!(!is_plain_relative(Path::new("../a")));
        assert!(!is_plain_relative(Path::new("/etc/shadow")));
    }
}
