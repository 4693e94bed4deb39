//! Paths inside an app, as named by a user's upload: the one rule the controller (checking
//! an upload) and the stager (extracting a package) both apply, so they cannot disagree.

use std::path::{Component, Path, PathBuf};

/// An archive entry name as a relative path of normal components only; `None` when it
/// would leave the app (absolute, `..`, a NUL or a backslash). `"./"` gives an empty path.
pub fn app_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.contains('\\') {
        return None;
    }
    let mut out = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// True when a symlink `target` in a directory `depth` levels below the app root stays
/// inside the app: relative, and every `..` before the first normal component (after one,
/// that component might itself be a link, so climbing is refused).
pub fn link_stays_inside(depth: usize, target: &str) -> bool {
    let mut depth = depth;
    let mut seen_normal = false;
    for component in Path::new(target).components() {
        match component {
            Component::ParentDir if !seen_normal && depth > 0 => depth -= 1,
            Component::Normal(_) => seen_normal = true,
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(app_relative("a/./b.txt"), Some(PathBuf::from("a/b.txt")));
        assert_eq!(app_relative("./"), Some(PathBuf::new()));
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../x", "a\\b", "a\0b"] {
            assert_eq!(app_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn link_targets() {
        assert!(link_stays_inside(1, "../app.py"));
        assert!(link_stays_inside(0, "lib/x"));
        assert!(!link_stays_inside(0, "../x"));
        assert!(!link_stays_inside(2, "../../../etc/passwd"));
        assert!(!link_stays_inside(1, "/etc/passwd"));
        assert!(
            !link_stays_inside(1, "x/../../y"),
            "no climbing after a component that may be a link"
        );
    }
}
