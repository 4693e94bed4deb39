//! The settings stratod reads from the config store (`kato config set COMPONENT KEY
//! VALUE`). They are checked when an operator sets them, so a typo is refused at once
//! with the reason, instead of being found (and passed over) when a role next starts.

use std::time::Duration;

use serde_json::Value;

/// Settings that are a number of seconds, by component. Roles read them when they start.
const SECONDS: &[(&str, &[&str])] = &[
    (
        "router2g",
        &[
            "route_ttl",
            "drain",
            "dea_deadline",
            "register_interval",
            "response_timeout",
            "body_read_timeout",
        ],
    ),
    (
        "dea_ng",
        &[
            "advertise_interval",
            "heartbeat_interval",
            "register_interval",
            "stop_grace",
            "crash_retention",
        ],
    ),
    (
        "health_manager",
        &["interval", "heartbeat_deadline", "backoff_max"],
    ),
    (
        "cloud_controller_ng",
        &["staging_timeout", "dea_expiry", "start_shield"],
    ),
];

/// The built-in buildpacks a stager tries, in order: a list of names, or one string of
/// comma-separated names.
pub const BUILDPACK_ORDER: &str = "stager/buildpack_order";

/// Checks `value` for the setting at `path` (`component/key`); settings stratod does not
/// know are taken as they are. An object set at once is checked leaf by leaf.
pub fn check(path: &str, value: &Value) -> Result<(), String> {
    if path == BUILDPACK_ORDER {
        return buildpack_order(value).map(drop);
    }
    if let Value::Object(fields) = value {
        return fields
            .iter()
            .try_for_each(|(key, leaf)| check(&format!("{path}/{key}"), leaf));
    }
    let Some((component, key)) = path.split_once('/') else {
        return Ok(());
    };
    if is_seconds(component, key) && seconds(Some(value)).is_err() {
        return Err(format!(
            "{component} {key} is a number of seconds greater than 0 (e.g. 30), not {value}"
        ));
    }
    Ok(())
}

/// Whether `component/key` is one of the timing settings, which are checked when set.
pub fn is_seconds(component: &str, key: &str) -> bool {
    SECONDS
        .iter()
        .any(|(c, keys)| *c == component && keys.contains(&key))
}

/// A number of seconds: `Err(false)` when there is no value, `Err(true)` when it is not a
/// positive number.
pub fn seconds(value: Option<&Value>) -> Result<Duration, bool> {
    let v = value.ok_or(false)?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or(true)
}

/// The detection order in `value`: built-in names, each once, at least one.
pub fn buildpack_order(value: &Value) -> Result<Vec<String>, String> {
    let builtins = strato_stager::buildpacks::builtin_names();
    let example = builtins.join(",");
    let names: Vec<String> = match value {
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(|s| s.trim().to_string()))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                format!("stager buildpack_order is a list of buildpack names, e.g. {example}")
            })?,
        Value::String(list) => list
            .split(',')
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .collect(),
        _ => {
            return Err(format!(
                "stager buildpack_order is a list of buildpack names, e.g. {example}"
            ))
        }
    };
    if names.is_empty() {
        return Err(format!(
            "stager buildpack_order needs at least one buildpack, e.g. {example}"
        ));
    }
    for (i, name) in names.iter().enumerate() {
        if !builtins.contains(&name.as_str()) {
            return Err(format!(
                "stager buildpack_order names '{name}', which is not a built-in buildpack \
                 (built-ins: {})",
                builtins.join(", ")
            ));
        }
        if names[..i].contains(name) {
            return Err(format!("stager buildpack_order names '{name}' twice"));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn buildpack_orders_are_lists_or_comma_strings_of_built_ins() {
        assert_eq!(
            buildpack_order(&json!("procfile, static")).unwrap(),
            ["procfile", "static"]
        );
        assert_eq!(
            buildpack_order(&json!(["node", "python"])).unwrap(),
            ["node", "python"]
        );
        let typo = check(BUILDPACK_ORDER, &json!("pythn,node")).unwrap_err();
        assert!(
            typo.contains("'pythn'") && typo.contains("python"),
            "{typo}"
        );
        assert!(check(BUILDPACK_ORDER, &json!("")).is_err());
        assert!(check(BUILDPACK_ORDER, &json!(["static", "static"])).is_err());
        assert!(check(BUILDPACK_ORDER, &json!([1, 2])).is_err());
        assert!(check(BUILDPACK_ORDER, &json!(true)).is_err());
    }

    #[test]
    fn seconds_are_positive_numbers_or_strings_of_them() {
        assert_eq!(seconds(Some(&json!(2.5))), Ok(Duration::from_millis(2500)));
        assert_eq!(seconds(Some(&json!("3"))), Ok(Duration::from_secs(3)));
        assert_eq!(seconds(None), Err(false), "absent: the default, quietly");
        assert_eq!(seconds(Some(&json!(0))), Err(true));
        assert_eq!(seconds(Some(&json!(-1))), Err(true));
        assert_eq!(seconds(Some(&json!("soon"))), Err(true));
    }

    #[test]
    fn timings_must_be_positive_seconds() {
        assert!(check("router2g/response_timeout", &json!(60)).is_ok());
        assert!(check("router2g/response_timeout", &json!("2.5")).is_ok());
        let bad = check("dea_ng/stop_grace", &json!("soon")).unwrap_err();
        assert!(bad.contains("dea_ng stop_grace"), "{bad}");
        assert!(check("health_manager/interval", &json!(0)).is_err());
        assert!(check("cloud_controller_ng/staging_timeout", &json!(-5)).is_err());
        // Settings stratod does not read are kept as they are.
        assert!(check("my_component/anything", &json!("soon")).is_ok());
        // A whole component at once: each leaf is checked.
        assert!(check("router2g", &json!({"drain": 1, "other": "x"})).is_ok());
        let nested = check("router2g", &json!({"drain": "soon"})).unwrap_err();
        assert!(nested.contains("router2g drain"), "{nested}");
        assert!(check("stager", &json!({"buildpack_order": "pythn"})).is_err());
    }
}
