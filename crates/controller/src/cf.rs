//! Cloud Foundry v2 response shapes: resources, paginated lists, errors, `q=` filters.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use strato_core::ApiError;

/// An [`ApiError`] that axum can return.
#[derive(Debug)]
pub struct CfError(pub ApiError);

impl From<ApiError> for CfError {
    fn from(e: ApiError) -> Self {
        CfError(e)
    }
}

impl IntoResponse for CfError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({"code": self.0.code, "description": self.0.description, "error_code": self.0.error_code}))).into_response()
    }
}

/// Maps a database error to a 500, logging the detail (never user data).
pub fn db_err(e: strato_db::DbError) -> CfError {
    tracing::error!(error = %e, "database error");
    CfError(ApiError::server(e.to_string()))
}

pub type CfResult<T> = Result<T, CfError>;

/// For writes that can hit a unique name: a conflict becomes `taken()` (the CF error
/// naming what is taken), any other database error a 500 as [`db_err`] makes it.
pub fn taken_or_db_err<E: Into<CfError>>(
    taken: impl FnOnce() -> E,
) -> impl FnOnce(strato_db::DbError) -> CfError {
    move |e| match e {
        strato_db::DbError::Conflict { .. } => taken().into(),
        e => db_err(e),
    }
}

/// `{metadata:{guid,url,created_at,updated_at},entity}`.
pub fn resource(
    kind: &str,
    guid: &str,
    created_at: &str,
    updated_at: &str,
    entity: Value,
) -> Value {
    json!({
        "metadata": {"guid": guid, "url": format!("/v2/{kind}/{guid}"), "created_at": created_at, "updated_at": updated_at},
        "entity": entity,
    })
}

/// Parsed list parameters: `q=field:value` filters, `page`, `results-per-page`,
/// `inline-relations-depth`.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub filters: Vec<(String, String)>,
    pub page: usize,
    pub per_page: usize,
    pub depth: u32,
    pub raw: Vec<(String, String)>,
}

impl ListParams {
    pub fn parse(query: Option<&str>) -> Result<Self, CfError> {
        let mut p = ListParams {
            page: 1,
            per_page: 50,
            ..Default::default()
        };
        for (k, v) in parse_query(query.unwrap_or("")) {
            match k.as_str() {
                "q" => {
                    let (f, val) = v.split_once(':').ok_or_else(|| {
                        CfError(ApiError::invalid_request(format!(
                            "the filter '{v}' is not of the form field:value"
                        )))
                    })?;
                    p.filters.push((f.to_string(), val.to_string()));
                }
                "page" => {
                    p.page = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        CfError(ApiError::invalid_request("page must be a number from 1"))
                    })?
                }
                "results-per-page" => {
                    p.per_page = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            CfError(ApiError::invalid_request(
                                "results-per-page must be between 1 and 100",
                            ))
                        })?
                }
                "inline-relations-depth" => p.depth = v.parse().unwrap_or(0),
                _ => p.raw.push((k, v)),
            }
        }
        Ok(p)
    }

    /// The value of filter `field`, refusing filters the endpoint does not know.
    pub fn filter(&self, field: &str) -> Option<String> {
        self.filters
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.clone())
    }

    pub fn check_known(&self, known: &[&str]) -> Result<(), CfError> {
        for (f, _) in &self.filters {
            if !known.contains(&f.as_str()) {
                return Err(CfError(ApiError::invalid_request(format!(
                    "cannot filter by '{f}'; filters here: {}",
                    known.join(", ")
                ))));
            }
        }
        Ok(())
    }

    /// The `q=` filters as a database filter, refusing fields this list does not know.
    /// Hosts compare lowercased, as routes are stored.
    pub fn db_filter(&self, known: &[&str]) -> Result<strato_db::Filter, CfError> {
        self.check_known(known)?;
        Ok(strato_db::Filter {
            name: self.filter("name"),
            space_guid: self.filter("space_guid"),
            organization_guid: self.filter("organization_guid"),
            host: self.filter("host").map(|h| h.to_ascii_lowercase()),
            domain_guid: self.filter("domain_guid"),
            app_guid: self.filter("app_guid"),
            service_instance_guid: self.filter("service_instance_guid"),
            service_guid: self.filter("service_guid"),
            label: self.filter("label"),
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A paginated list in CF's shape.
pub fn paginate(path: &str, params: &ListParams, items: Vec<Value>) -> Value {
    let total = items.len();
    let per = params.per_page.max(1);
    let pages = total.div_ceil(per).max(1);
    let page = params.page.min(pages);
    let start = (page - 1) * per;
    let resources: Vec<Value> = items.into_iter().skip(start).take(per).collect();
    let url = |n: usize| format!("{path}?page={n}&results-per-page={per}");
    json!({
        "total_results": total,
        "total_pages": pages,
        "prev_url": if page > 1 { Value::from(url(page - 1)) } else { Value::Null },
        "next_url": if page < pages { Value::from(url(page + 1)) } else { Value::Null },
        "resources": resources,
    })
}

/// Splits and percent-decodes a query string, keeping repeated keys.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
        } else if b == b'%' && i + 2 < bytes.len() {
            match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            }
        } else {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_with_repeated_filters() {
        let p = ListParams::parse(Some(
            "q=name%3Aweb&q=space_guid:abc&results-per-page=2&inline-relations-depth=1",
        ))
        .unwrap();
        assert_eq!(p.filter("name").as_deref(), Some("web"));
        assert_eq!(p.filter("space_guid").as_deref(), Some("abc"));
        assert_eq!(p.per_page, 2);
        assert_eq!(p.depth, 1);
        assert!(ListParams::parse(Some("q=nocolon")).is_err());
        assert!(p.check_known(&["name"]).is_err());
    }

    #[test]
    fn filters_become_a_db_filter() {
        let p = ListParams::parse(Some("q=host:WeB&q=space_guid:s1")).unwrap();
        let f = p.db_filter(&["host", "space_guid"]).unwrap();
        assert_eq!(f.host.as_deref(), Some("web"), "hosts compare lowercased");
        assert_eq!(f.space_guid.as_deref(), Some("s1"));
        assert!(f.name.is_none());
        assert!(
            p.db_filter(&["host"]).is_err(),
            "a filter the list does not know is refused"
        );
    }

    #[test]
    fn pagination_links() {
        let p = ListParams {
            page: 1,
            per_page: 2,
            ..Default::default()
        };
        let v = paginate("/v2/apps", &p, (0..5).map(Value::from).collect());
        assert_eq!(v["total_results"], 5);
        assert_eq!(v["total_pages"], 3);
        assert_eq!(v["resources"].as_array().unwrap().len(), 2);
        assert_eq!(v["next_url"], "/v2/apps?page=2&results-per-page=2");
        assert!(v["prev_url"].is_null());
    }

    #[test]
    fn percent_decoding_is_safe_on_bad_input() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a%20b+c"), "a b c");
    }
}
