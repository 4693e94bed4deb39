//! For the archive targets: a fresh sandbox per input, with the extraction dir a few
//! levels down so that an entry climbing out with `..` still lands inside the sandbox,
//! where [`Sandbox::written_outside`] finds it.
#![allow(dead_code)] // each target uses its own part

use std::path::{Path, PathBuf};

pub struct Sandbox {
    pub root: tempfile::TempDir,
    /// Where the archive is extracted (created empty).
    pub dest: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let root = tempfile::tempdir().expect("a temp dir for the sandbox");
        let dest = root.path().join("l1/l2/l3/l4/l5/l6/dest");
        std::fs::create_dir_all(&dest).expect("the extraction dir");
        Sandbox { root, dest }
    }

    /// A path for the target's own files (the archive, caches), outside `dest`.
    pub fn own(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Every path in the sandbox that is neither inside `dest` or one of `own`, nor a
    /// directory on the way to them (symlinks are not followed).
    pub fn written_outside(&self, own: &[PathBuf]) -> Vec<PathBuf> {
        let mut allowed = own.to_vec();
        allowed.push(self.dest.clone());
        let mut found = Vec::new();
        let mut stack = vec![self.root.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if allowed.iter().any(|a| path.starts_with(a)) {
                    continue;
                }
                let on_the_way = allowed.iter().any(|a| a.starts_with(&path));
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if on_the_way && is_dir {
                    stack.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }
}

/// True when the symlink at `link` (inside `dest`) resolves, by its text alone, to a
/// path inside `dest`.
pub fn link_stays_inside(dest: &Path, link: &Path) -> bool {
    let Ok(target) = std::fs::read_link(link) else {
        return true;
    };
    if target.is_absolute() {
        return false;
    }
    let Some(parent) = link.parent() else {
        return false;
    };
    let Ok(inside) = parent.strip_prefix(dest) else {
        return false;
    };
    let mut parts: Vec<_> = inside.components().collect();
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => {
                if parts.pop().is_none() {
                    return false;
                }
            }
            std::path::Component::Normal(_) => parts.push(c),
            _ => {}
        }
    }
    true
}

/// Every symlink under `dir` (not following them).
pub fn symlinks_under(dir: &Path) -> Vec<PathBuf> {
    let mut links = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_symlink() => links.push(entry.path()),
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                _ => {}
            }
        }
    }
    links
}
