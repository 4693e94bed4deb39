//! Request bodies: every JSON body the API accepts is read by [`parse_json`], the one
//! place that refuses what is too large or nested too deeply *before* serde builds the
//! handler's type from it. A deep `[[[[...]]]]` would otherwise cost a recursion per level
//! in the deserializer (and in every later walk over a `Value`), so it is counted with a
//! flat scan first and refused with a 400 naming the limit.

use serde::de::DeserializeOwned;
use strato_core::ApiError;

use crate::cf::{CfError, CfResult};

/// Largest JSON body accepted, in bytes.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// Deepest nesting of arrays and objects accepted (`[]` is 1, `{"a":[]}` is 2).
pub const MAX_JSON_DEPTH: usize = 32;

/// Like [`parse_json`], but an empty (or all-whitespace) body is `T::default()`: for
/// actions whose options are all optional (`restart`, `rollback`).
pub fn parse_json_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> CfResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}

/// Reads a JSON request body as `T`: 413 when larger than [`MAX_JSON_BYTES`], 400
/// `CF-MessageParseError` when nested deeper than [`MAX_JSON_DEPTH`] or not valid JSON of
/// the expected shape.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> CfResult<T> {
    if body.len() > MAX_JSON_BYTES {
        return Err(CfError(ApiError::new(
            413,
            1,
            "CF-RequestTooLarge",
            "the request body is larger than 1 MB",
        )));
    }
    check_depth(body)?;
    serde_json::from_slice(body).map_err(|e| CfError(ApiError::message_parse(e.to_string())))
}

/// 400 when `body` nests arrays and objects deeper than [`MAX_JSON_DEPTH`].
pub fn check_depth(body: &[u8]) -> CfResult<()> {
    if exceeds_depth(body, MAX_JSON_DEPTH) {
        return Err(CfError(ApiError::message_parse(format!(
            "the JSON body is nested deeper than the limit of {MAX_JSON_DEPTH} levels of arrays and objects; send a flatter document"
        ))));
    }
    Ok(())
}

/// True when the brackets of `body` (outside strings) nest deeper than `limit`. A flat
/// scan that stops at the first level too deep; it does not validate the JSON (serde does
/// that next), so malformed input can only make it err on the side of "too deep".
pub fn exceeds_depth(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Reads `body` as each request type of the API's write endpoints (and checks what is
/// checked right after reading, where that needs no database), naming each outcome. For
/// the `api_body` fuzz target: none of this may panic, whatever the bytes.
#[doc(hidden)]
pub fn parse_as_each_request_type(body: &[u8]) -> Vec<(&'static str, CfResult<()>)> {
    fn read<T: DeserializeOwned>(body: &[u8]) -> CfResult<()> {
        parse_json::<T>(body).map(drop)
    }
    vec![
        ("app", crate::api::parse_app_fields(body)),
        ("route", read::<crate::api::NewRoute>(body)),
        (
            "resource_match",
            read::<Vec<crate::bits::WireResource>>(body),
        ),
        (
            "service_instance",
            read::<crate::services::NewInstance>(body),
        ),
        (
            "service_instance_update",
            read::<crate::services::InstanceUpdate>(body),
        ),
        (
            "user_provided_service_instance",
            read::<crate::services::NewUserProvided>(body),
        ),
        ("service_binding", read::<crate::services::NewBinding>(body)),
        ("space", read::<crate::tenancy::NewSpace>(body)),
        ("organization", read::<crate::tenancy::NameOnly>(body)),
        (
            "organization_update",
            read::<crate::tenancy::OrgUpdate>(body),
        ),
        ("user", read::<crate::tenancy::NewUser>(body)),
        ("user_update", read::<crate::tenancy::UserUpdate>(body)),
        (
            "password_change",
            read::<crate::tenancy::PasswordChange>(body),
        ),
        ("member_by_name", read::<crate::tenancy::ByName>(body)),
        ("feature_flag", read::<crate::tenancy::FlagUpdate>(body)),
        ("quota", read::<crate::quotas::QuotaFields>(body)),
        ("rollback", read::<crate::releases::RollbackBody>(body)),
        ("restart", read::<crate::releases::RestartBody>(body)),
        ("oauth_client", crate::clients::parse_new_client(body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_arrays_and_objects_outside_strings() {
        assert!(!exceeds_depth(nested(32).as_bytes(), 32));
        assert!(exceeds_depth(nested(33).as_bytes(), 32));
        assert!(!exceeds_depth(br#"{"a":{"b":[1,2,{"c":"[[[[["}]}}"#, 4));
        assert!(exceeds_depth(br#"{"a":{"b":[1,2,{"c":"x"}]}}"#, 3));
        assert!(
            !exceeds_depth(br#"["\"[[[[", "\\", []]"#, 2),
            "escaped quotes and backslashes do not end a string early"
        );
    }

    #[test]
    fn too_deep_is_a_400_naming_the_limit() {
        let e = parse_json::<serde_json::Value>(nested(10_000).as_bytes()).unwrap_err();
        assert_eq!(e.0.status, 400);
        assert!(e.0.description.contains("limit of 32 levels"), "{e:?}");
        assert!(parse_json::<serde_json::Value>(nested(32).as_bytes()).is_ok());
    }

    #[test]
    fn too_large_and_malformed_are_refused() {
        let big = vec![b' '; MAX_JSON_BYTES + 1];
        assert_eq!(
            parse_json::<serde_json::Value>(&big).unwrap_err().0.status,
            413
        );
        let e = parse_json::<serde_json::Value>(b"name=web").unwrap_err();
        assert_eq!(e.0.error_code, "CF-MessageParseError");
    }

    #[test]
    fn every_request_type_refuses_a_deep_body() {
        let deep = format!(r#"{{"name": {}}}"#, nested(100));
        for (kind, outcome) in parse_as_each_request_type(deep.as_bytes()) {
            let e = outcome.expect_err(kind);
            assert!(e.0.description.contains("nested deeper"), "{kind}: {e:?}");
        }
    }
}
