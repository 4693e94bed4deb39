//! `min_version:` checks: dotted versions compared number by number (`1.10` > `1.9`;
//! missing parts count as 0; a `-suffix` or `+build` is ignored).

use std::cmp::Ordering;

/// The numeric parts of `v`, or `None` when it is not a dotted version.
pub fn parse(v: &str) -> Option<Vec<u64>> {
    let v = v.trim().trim_start_matches(['v', 'V']);
    let core = v.split(['-', '+', ' ']).next().unwrap_or(v);
    if core.is_empty() {
        return None;
    }
    core.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// Compares two parsed versions.
pub fn compare(a: &[u64], b: &[u64]) -> Ordering {
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// True when `have` is at least `need` (both dotted versions).
pub fn at_least(have: &str, need: &str) -> Option<bool> {
    Some(compare(&parse(have)?, &parse(need)?) != Ordering::Less)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(at_least("0.1.0", "0.1"), Some(true));
        assert_eq!(at_least("1.10", "1.9"), Some(true));
        assert_eq!(at_least("1.9", "1.10"), Some(false));
        assert_eq!(at_least("v2.0.0-beta", "2"), Some(true));
        assert_eq!(at_least("0.1.0", "99"), Some(false));
        assert_eq!(at_least("x", "1"), None);
    }
}
