//! Config paths: validation and the prefix arithmetic every backend needs.
//!
//! A path is one or more non-empty segments of `[A-Za-z0-9_.-]` joined by `/`, e.g.
//! `dea_ng/resources/memory_max_percent`. A path is *within* a prefix when it equals it or
//! continues it after a `/` (`a/bc` is not within `a/b`); the empty prefix holds everything.

use crate::{KvError, Result};

/// Whether `segment` can be one segment of a path.
pub fn is_valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks that `path` names a key, explaining what is wrong if not.
pub fn validate(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(invalid(path, "the path is empty"));
    }
    for (index, segment) in path.split('/').enumerate() {
        if segment.is_empty() {
            return Err(invalid(
                path,
                &format!(
                    "segment {} is empty (leading, trailing or double '/')",
                    index + 1
                ),
            ));
        }
        if !is_valid_segment(segment) {
            return Err(invalid(
                path,
                &format!("segment '{segment}' has a character that is not allowed"),
            ));
        }
    }
    Ok(())
}

/// Like [`validate`], but also accepts the empty prefix (the whole store).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate(prefix)
    }
}

fn invalid(path: &str, reason: &str) -> KvError {
    KvError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether `path` equals `prefix` or lies below it; everything is within `""`.
pub fn is_within(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The proper ancestors of `path`, deepest first: `a/b/c` gives `a/b`, then `a`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.rmatch_indices('/')
        .map(move |(index, _)| &path[..index])
}

/// `parent/child`, or `child` when `parent` is empty.
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}/{child}")
    }
}

/// Bounds `[low, high)` of the strings strictly below `path` in byte order: `path/` up to
/// `path0` (`'0'` is the byte after `'/'`).
pub fn below_bounds(path: &str) -> (String, String) {
    (format!("{path}/"), format!("{path}0"))
}

/// `path` relative to `prefix`, as segments (`[]` when they are equal).
pub fn relative_segments<'p>(path: &'p str, prefix: &str) -> Vec<&'p str> {
    let rest = if prefix.is_empty() {
        path
    } else {
        path.strip_prefix(prefix).unwrap_or(path)
    };
    rest.split('/').filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_component_key_paths() {
        for path in [
            "dea_ng",
            "dea_ng/resources/memory_max_percent",
            "node/10.0.0.1/roles/dea",
            "a-b/c.d/E_9",
        ] {
            assert!(validate(path).is_ok(), "{path} should be valid");
        }
    }

    #[test]
    fn rejects_bad_paths_with_a_reason() {
        for path in ["", "/a", "a/", "a//b", "a b", "a/*", "ü"] {
            match validate(path) {
                Err(KvError::InvalidPath { path: p, reason }) => {
                    assert_eq!(p, path);
                    assert!(!reason.is_empty());
                }
                other => panic!("{path:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn within_respects_segment_boundaries() {
        assert!(is_within("a/b", "a/b"));
        assert!(is_within("a/b/c", "a/b"));
        assert!(!is_within("a/bc", "a/b"));
        assert!(!is_within("a", "a/b"));
        assert!(is_within("anything", ""));
    }

    #[test]
    fn ancestors_are_deepest_first() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a"]);
        assert_eq!(ancestors("a").count(), 0);
    }

    #[test]
    fn below_bounds_cover_exactly_the_subtree() {
        let (low, high) = below_bounds("a/b");
        for inside in ["a/b/c", "a/b/zz/y", "a/b/-"] {
            assert!(inside >= low.as_str() && inside < high.as_str(), "{inside}");
        }
        for outside in ["a/b", "a/bc", "a/b-", "a/b.x", "a/c"] {
            assert!(
                !(outside >= low.as_str() && outside < high.as_str()),
                "{outside}"
            );
        }
    }
}
