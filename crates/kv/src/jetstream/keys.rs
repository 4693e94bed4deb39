//! Config paths as NATS KV keys and subjects, and back.
//!
//! A KV key is a NATS subject tail: tokens separated by `.`, made of `[-/_=.a-zA-Z0-9]`. A
//! path's `/` becomes the token separator `.`, and the `.` a segment may contain becomes `=`
//! (which no segment contains), so the mapping is reversible and one segment is one token:
//! `node/10.0.0.1/roles/dea` ↔ `node.10=0=0=1.roles.dea`. Everything below a path is then the
//! subject wildcard `$KV.<bucket>.<key>.>`, which respects segment boundaries (`a.b.>` does
//! not match `a.bc`). Keys holding a `/` never come from a path; the store keeps its own
//! bookkeeping there and never shows them as paths.

use crate::path;

/// The key the store writes filler entries to when it completes an abandoned write.
pub(crate) const PAD_KEY: &str = "strato/pad";

/// The KV key of a valid path.
pub(crate) fn key_of(path: &str) -> String {
    path.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '=',
            other => other,
        })
        .collect()
}

/// The path a KV key encodes, or `None` for the store's own keys and foreign keys.
pub(crate) fn path_of(key: &str) -> Option<String> {
    if key.contains('/') {
        return None;
    }
    let decoded: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '=' => '.',
            other => other,
        })
        .collect();
    path::validate(&decoded).ok().map(|()| decoded)
}

/// Subjects of one bucket: `$KV.<bucket>.<key>`.
#[derive(Clone, Debug)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(bucket: &str) -> Self {
        Subjects {
            prefix: format!("$KV.{bucket}."),
        }
    }

    /// The subject of one key.
    pub(crate) fn of_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The subject a path is stored at.
    pub(crate) fn of_path(&self, path: &str) -> String {
        self.of_key(&key_of(path))
    }

    /// The wildcard for everything strictly below `path` (everything for the empty path).
    pub(crate) fn below(&self, path: &str) -> String {
        if path.is_empty() {
            format!("{}>", self.prefix)
        } else {
            format!("{}{}.>", self.prefix, key_of(path))
        }
    }

    /// The path a subject of this bucket encodes, if it is one.
    pub(crate) fn path_in(&self, subject: &str) -> Option<String> {
        subject.strip_prefix(&self.prefix).and_then(path_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_keys() {
        for path in [
            "dea_ng",
            "node/10.0.0.1/roles/dea",
            "a-b/c.d/E_9",
            "x/../y",
            ".../-",
        ] {
            let key = key_of(path);
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=.".contains(c)),
                "{key}"
            );
            assert_eq!(key.split('.').count(), path.split('/').count(), "{key}");
            assert_eq!(path_of(&key).as_deref(), Some(path));
        }
    }

    #[test]
    fn own_and_foreign_keys_are_not_paths() {
        assert_eq!(path_of(PAD_KEY), None);
        assert_eq!(path_of("a..b"), None);
        assert_eq!(path_of("a*"), None);
    }

    #[test]
    fn subtree_wildcard_respects_segments() {
        let subjects = Subjects::new("cfg");
        assert_eq!(subjects.of_path("a/b.c"), "$KV.cfg.a.b=c");
        assert_eq!(subjects.below("a/b"), "$KV.cfg.a.b.>");
        assert_eq!(subjects.below(""), "$KV.cfg.>");
        assert_eq!(
            subjects.path_in("$KV.cfg.node.10=0=0=1").as_deref(),
            Some("node/10.0.0.1")
        );
        assert_eq!(subjects.path_in("$KV.other.a"), None);
        assert_eq!(subjects.path_in(&subjects.of_key(PAD_KEY)), None);
    }
}
