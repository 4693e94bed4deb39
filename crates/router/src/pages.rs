//! The router's own answers: unknown route, no instance answered, bad request. Plain text,
//! worded like Cloud Foundry's router so users and scripts recognise them.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderName, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::ProxyBody;

static X_CF_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-cf-routererror");
static NOSNIFF: HeaderName = HeaderName::from_static("x-content-type-options");
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// 404 naming the host nobody registered.
pub(crate) fn unknown_route(host: &str) -> Response<ProxyBody> {
    page(
        StatusCode::NOT_FOUND,
        format!("404 Not Found: Requested route ('{host}') does not exist.\n"),
        "unknown_route",
    )
}

const BAD_GATEWAY: &str = "502 Bad Gateway: Registered endpoint failed to handle the request.\n";

/// 502 when no instance of the app could take the request.
pub(crate) fn bad_gateway() -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        BAD_GATEWAY.to_string(),
        "endpoint_failure",
    )
}

/// The same 502 as [`bad_gateway`], written out as an HTTP/1.1 response for the relay;
/// `close` adds `connection: close`; the answer to a `HEAD` request has no body.
pub(crate) fn bad_gateway_http1(out: &mut Vec<u8>, date: &[u8], close: bool, head: bool) {
    out.extend_from_slice(b"HTTP/1.1 502 Bad Gateway\r\n");
    for (name, value) in [
        (CONTENT_TYPE.as_str(), PLAIN_TEXT),
        (NOSNIFF.as_str(), "nosniff"),
        (X_CF_ROUTER_ERROR.as_str(), "endpoint_failure"),
    ] {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n", BAD_GATEWAY.len()).as_bytes());
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(BAD_GATEWAY.as_bytes());
    }
}

/// 400 for a request that names no host at all.
pub(crate) fn missing_host() -> Response<ProxyBody> {
    page(
        StatusCode::BAD_REQUEST,
        "400 Bad Request: the request has no Host header; send one naming the app's route.\n"
            .to_string(),
        "empty_host",
    )
}

fn page(status: StatusCode, text: String, error: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PLAIN_TEXT));
    headers.insert(NOSNIFF.clone(), HeaderValue::from_static("nosniff"));
    headers.insert(X_CF_ROUTER_ERROR.clone(), HeaderValue::from_static(error));
    response
}
