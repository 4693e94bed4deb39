//! `dea.<id>.files`: reading an instance's files (`strato files`) without letting a path or
//! a symlink planted by the app reach anything outside the instance dir.
//!
//! Paths are resolved with `openat2(RESOLVE_BENEATH)`, so `..`, absolute symlinks and
//! symlinks leading out of the instance dir fail in the kernel, with no check-then-open race.
//! Only regular files and directories are read (a FIFO must not hang the DEA).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

/// Largest file content returned in one reply.
pub const MAX_CONTENT: u64 = 1024 * 1024;

pub use strato_core::messages::{FileEntry, FilesReply, FilesRequest};

/// Reads `rel` under `root`: a listing for a directory, the content for a file.
pub fn read_beneath(root: &Path, rel: &str) -> FilesReply {
    match read(root, rel) {
        Ok(reply) => reply,
        Err(e) => FilesReply::error(e),
    }
}

fn read(root: &Path, rel: &str) -> Result<FilesReply, String> {
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let file = open_beneath(root, rel).map_err(|e| match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            format!("'{rel}' leads outside the instance's files")
        }
        Some(libc::ENOENT) => format!("'{rel}' does not exist"),
        _ => format!("cannot open '{rel}': {e}"),
    })?;
    let meta = file.metadata().map_err(|e| format!("stat '{rel}': {e}"))?;
    if meta.is_dir() {
        list_dir(&file).map(|entries| FilesReply {
            entries: Some(entries),
            ..FilesReply::default()
        })
    } else if meta.is_file() {
        let mut buf = Vec::new();
        file.take(MAX_CONTENT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("read '{rel}': {e}"))?;
        let truncated = buf.len() as u64 > MAX_CONTENT;
        buf.truncate(MAX_CONTENT as usize);
        Ok(FilesReply {
            content: Some(String::from_utf8_lossy(&buf).into_owned()),
            truncated,
            ..FilesReply::default()
        })
    } else {
        Err(format!("'{rel}' is not a regular file or directory"))
    }
}

fn list_dir(dir: &File) -> Result<Vec<FileEntry>, String> {
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(|e| format!("list: {e}"))? {
        let entry = entry.map_err(|e| format!("list: {e}"))?;
        let Ok(meta) = entry.metadata() else { continue };
        let kind = if meta.is_symlink() {
            "symlink"
        } else if meta.is_dir() {
            "dir"
        } else if meta.is_file() {
            "file"
        } else {
            "other"
        };
        entries.push(FileEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind.to_string(),
            size: meta.len(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn open_beneath(root: &Path, rel: &str) -> std::io::Result<File> {
    let root = File::open(root)?;
    let path = CString::new(rel).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: all pointers are valid for the call; `how` has the kernel's layout and size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_reads_but_never_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("inst");
        std::fs::create_dir_all(root.join("app/sub")).unwrap();
        std::fs::write(root.join("app/hello.txt"), "hello").unwrap();
        std::fs::write(dir.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("app/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("app/abs")).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("app/in")).unwrap();

        let listing = read_beneath(&root, "/app");
        let names: Vec<_> = listing
            .entries
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["abs", "hello.txt", "in", "out", "sub"]);
        assert_eq!(
            read_beneath(&root, "app/hello.txt").content.as_deref(),
            Some("hello")
        );
        assert_eq!(
            read_beneath(&root, "app/in").content.as_deref(),
            Some("hello")
        );
        for bad in ["app/out", "app/abs", "../secret", "app/../../secret"] {
            let reply = read_beneath(&root, bad);
            assert!(
                reply.content.is_none() && reply.error.is_some(),
                "{bad}: {reply:?}"
            );
        }
        assert!(read_beneath(&root, "").entries.is_some());
        assert!(read_beneath(&root, "nope")
            .error
            .unwrap()
            .contains("does not exist"));
    }
}
