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

/// Why no response of the app's own reached the client; the same page on both request
/// paths: hyper's ([`Unanswered::response`]) and the relay's ([`Unanswered::write_http1`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unanswered {
    /// 502: no instance could take the request, or the one that took it failed.
    Failed,
    /// 504: the instance that took the request did not begin its response within this
    /// long (`router2g response_timeout`).
    TimedOut(Duration),
    /// 408: the client sent nothing more of its request body for this long (`router2g
    /// body_read_timeout`); the connection closes.
    ClientStalled(Duration),
}

impl Unanswered {
    fn status(self) -> StatusCode {
        match self {
            Unanswered::Failed => StatusCode::BAD_GATEWAY,
            Unanswered::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            Unanswered::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error(self) -> &'static str {
        match self {
            Unanswered::Failed => "endpoint_failure",
            Unanswered::TimedOut(_) => "endpoint_timeout",
            Unanswered::ClientStalled(_) => "client_timeout",
        }
    }

    fn text(self) -> String {
        match self {
            Unanswered::Failed => {
                "502 Bad Gateway: Registered endpoint failed to handle the request.\n".into()
            }
            Unanswered::TimedOut(t) => format!(
                "504 Gateway Timeout: Registered endpoint did not begin its response within {} s.\n",
                t.as_secs_f64()
            ),
            Unanswered::ClientStalled(t) => format!(
                "408 Request Timeout: no more of the request body arrived within {} s.\n",
                t.as_secs_f64()
            ),
        }
    }

    /// The page as hyper sends it.
    pub(crate) fn response(self) -> Response<ProxyBody> {
        let mut response = page(self.status(), self.text(), self.error());
        if let Unanswered::ClientStalled(_) = self {
            // The rest of the body may still come: it is not read.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The page written out as an HTTP/1.1 response for the relay; `close` adds
    /// `connection: close`; the answer to a `HEAD` request has no body.
    pub(crate) fn write_http1(self, out: &mut Vec<u8>, date: &[u8], close: bool, head: bool) {
        let status = self.status();
        let text = self.text();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in [
            (CONTENT_TYPE.as_str(), PLAIN_TEXT),
            (NOSNIFF.as_str(), "nosniff"),
            (X_CF_ROUTER_ERROR.as_str(), self.error()),
        ] {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n", text.len()).as_bytes());
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            out.extend_from_slice(text.as_bytes());
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
