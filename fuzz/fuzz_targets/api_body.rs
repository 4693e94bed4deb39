//! The controller's reading of JSON request bodies, for every write endpoint's type: no
//! panic; every refusal is a 400 (or 413); a body nested deeper than the limit is refused
//! by every type; and the flat depth scan agrees with the real nesting of valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use strato_controller::body::{exceeds_depth, parse_as_each_request_type, MAX_JSON_DEPTH};

/// Nesting of arrays and objects (`[]` is 1); serde_json stops at 128 levels itself.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let too_deep = exceeds_depth(data, MAX_JSON_DEPTH);
    for (kind, outcome) in parse_as_each_request_type(data) {
        match outcome {
            Ok(()) => assert!(
                !too_deep,
                "{kind} accepted a body nested deeper than the limit"
            ),
            Err(e) => assert!(
                matches!(e.0.status, 400 | 413),
                "{kind}: a bad body must be the client's error, got {e:?}"
            ),
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        assert_eq!(
            too_deep,
            depth(&v) > MAX_JSON_DEPTH,
            "the depth scan disagrees with the parsed document"
        );
    }
});
