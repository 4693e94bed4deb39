//! Turning JSON documents into leaves and back.
//!
//! Backends store leaves (see the crate docs): [`explode`] splits a value being set into the
//! leaves and interior paths it becomes, [`assemble`] rebuilds the document a `get` of an
//! interior path returns.

use serde_json::{Map, Value};

use crate::path;

/// The leaves and interior paths a value set at one path becomes.
#[derive(Debug, Default, PartialEq)]
pub struct Exploded {
    /// Full paths and the non-document values stored there, sorted by path.
    pub leaves: Vec<(String, Value)>,
    /// Full paths of the documents (interior nodes), the set path included if it is one.
    pub dirs: Vec<String>,
}

/// Whether a value is a document that is stored as separate leaves: a non-empty object
/// whose keys are all valid path segments.
pub fn is_document(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty() && map.keys().all(|k| path::is_valid_segment(k)),
        _ => false,
    }
}

/// Splits `value`, to be stored at `at`, into leaves and interior paths.
pub fn explode(at: &str, value: Value) -> Exploded {
    let mut out = Exploded::default();
    explode_into(at.to_string(), value, &mut out);
    out.leaves.sort_by(|a, b| a.0.cmp(&b.0));
    out.dirs.sort();
    out
}

fn explode_into(at: String, value: Value, out: &mut Exploded) {
    if !is_document(&value) {
        out.leaves.push((at, value));
        return;
    }
    if let Value::Object(map) = value {
        for (key, child) in map {
            explode_into(path::join(&at, &key), child, out);
        }
        out.dirs.push(at);
    }
}

/// Rebuilds the document at `prefix` from the leaves below it (full paths).
pub fn assemble(prefix: &str, leaves: impl IntoIterator<Item = (String, Value)>) -> Value {
    let mut root = Map::new();
    for (full_path, value) in leaves {
        let segments = path::relative_segments(&full_path, prefix);
        insert_at(&mut root, &segments, value);
    }
    Value::Object(root)
}

fn insert_at(map: &mut Map<String, Value>, segments: &[&str], value: Value) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.insert(first.to_string(), value);
        return;
    }
    let child = map
        .entry(first.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(child_map) = child {
        insert_at(child_map, rest, value);
    }
}

/// A short name of a value's JSON type, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn explodes_nested_objects_into_leaves() {
        let exploded = explode(
            "dea_ng",
            json!({"resources": {"memory_max_percent": 80, "dirs": ["/a"]}, "empty": {}, "odd": {"*.x": 1}}),
        );
        assert_eq!(
            exploded.leaves,
            vec![
                ("dea_ng/empty".to_string(), json!({})),
                ("dea_ng/odd".to_string(), json!({"*.x": 1})),
                ("dea_ng/resources/dirs".to_string(), json!(["/a"])),
                ("dea_ng/resources/memory_max_percent".to_string(), json!(80)),
            ]
        );
        assert_eq!(exploded.dirs, vec!["dea_ng", "dea_ng/resources"]);
    }

    #[test]
    fn scalar_is_one_leaf() {
        let exploded = explode("a/b", json!("x"));
        assert_eq!(exploded.leaves, vec![("a/b".to_string(), json!("x"))]);
        assert!(exploded.dirs.is_empty());
    }

    #[test]
    fn assemble_inverts_explode() {
        let doc = json!({"resources": {"memory_max_percent": 80, "dirs": ["/a"]}, "empty": {}, "n": null});
        let exploded = explode("dea_ng", doc.clone());
        assert_eq!(assemble("dea_ng", exploded.leaves), doc);
    }
}
