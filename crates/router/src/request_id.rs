//! `X-Vcap-Request-Id` values without a system call per request.
//!
//! Each thread draws 128 random bits once; every id it makes is that value plus a counter
//! in the low bits, laid out as a version-4 UUID (apps and log tools that parse the id as a
//! UUID keep working). Ids are unique (the counter never wraps in practice, and two threads
//! share a prefix with negligible probability) but, unlike `uuid::Uuid::new_v4`, not
//! unpredictable: they are request ids, not secrets.

use std::cell::Cell;

use http::HeaderValue;

thread_local! {
    /// (random base, requests numbered so far on this thread)
    static SEQUENCE: Cell<(u128, u64)> = Cell::new((random_base(), 0));
}

fn random_base() -> u128 {
    u128::from_be_bytes(*uuid::Uuid::new_v4().as_bytes())
}

/// A fresh request id as a header value (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
pub(crate) fn next() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = fresh().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A fresh request id, appended to `out` as text.
pub(crate) fn write_next(out: &mut Vec<u8>) {
    let mut buf = uuid::Uuid::encode_buffer();
    out.extend_from_slice(fresh().hyphenated().encode_lower(&mut buf).as_bytes());
}

fn fresh() -> uuid::Uuid {
    let (base, count) = SEQUENCE.with(|sequence| {
        let (base, count) = sequence.get();
        sequence.set((base, count.wrapping_add(1)));
        (base, count)
    });
    uuid::Builder::from_random_bytes(id_bytes(base, count)).into_uuid()
}

/// The base with the counter added to its low 62 bits (the ones a v4 UUID leaves random
/// after the variant), so consecutive ids of one thread always differ.
fn id_bytes(base: u128, count: u64) -> [u8; 16] {
    const LOW_62: u128 = (1 << 62) - 1;
    let low = (base as u64 as u128).wrapping_add(count as u128) & LOW_62;
    ((base & !LOW_62) | low).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_v4_uuids_and_unique_across_threads() {
        let per_thread = || (0..10_000).map(|_| next()).collect::<Vec<_>>();
        let other = std::thread::spawn(per_thread).join().unwrap();
        let mine = per_thread();
        let mut seen = HashSet::new();
        for value in mine.iter().chain(&other) {
            let id = uuid::Uuid::parse_str(value.to_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 4, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert!(seen.insert(id), "{id} made twice");
        }
    }

    #[test]
    fn the_counter_changes_the_id_even_when_the_low_bits_overflow() {
        let base = u128::MAX;
        assert_ne!(id_bytes(base, 0), id_bytes(base, 1));
        assert_eq!(id_bytes(base, 0)[..8], id_bytes(base, 1)[..8]);
    }
}
