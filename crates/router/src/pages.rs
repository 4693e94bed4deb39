//! The router's own answers: unknown route, no instance answered, app too slow, bad request.
//! Plain text, worded like Cloud Foundry's router so users and scripts recognise them.

use std::time::Duration;

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
    let page = Http1Page {
        status: "502 Bad Gateway",
        text: BAD_GATEWAY,
        error: "endpoint_failure",
    };
    page.write(out, date, close, head);
}

/// 504 when the app took the request but did not begin its response within `timeout`
/// (the `router2g` key `response_timeout`).
pub(crate) fn gateway_timeout(timeout: Duration) -> Response<ProxyBody> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        gateway_timeout_text(timeout),
        "endpoint_timeout",
    )
}

/// The same 504 as [`gateway_timeout`], as an HTTP/1.1 response for the relay.
pub(crate) fn gateway_timeout_http1(
    out: &mut Vec<u8>,
    timeout: Duration,
    date: &[u8],
    close: bool,
    head: bool,
) {
    let page = Http1Page {
        status: "504 Gateway Timeout",
        text: &gateway_timeout_text(timeout),
        error: "endpoint_timeout",
    };
    page.write(out, date, close, head);
}

/// 408 when the client stopped sending its request body for `timeout` (the `router2g`
/// key `body_read_timeout`).
pub(crate) fn request_timeout(timeout: Duration) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "408 Request Timeout: no more of the request body arrived within {} s.\n",
            timeout.as_secs_f64()
        ),
        "client_timeout",
    );
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn gateway_timeout_text(timeout: Duration) -> String {
    format!(
        "504 Gateway Timeout: Registered endpoint did not begin its response within {} s.\n",
        timeout.as_secs_f64()
    )
}

/// One of the router's pages, for the relay to write out itself.
struct Http1Page<'a> {
    status: &'a str,
    text: &'a str,
    error: &'a str,
}

impl Http1Page<'_> {
    fn write(&self, out: &mut Vec<u8>, date: &[u8], close: bool, head: bool) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in [
            (CONTENT_TYPE.as_str(), PLAIN_TEXT),
            (NOSNIFF.as_str(), "nosniff"),
            (X_CF_ROUTER_ERROR.as_str(), self.error),
        ] {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n", self.text.len()).as_bytes());
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            out.extend_from_slice(self.text.as_bytes());
        }
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
