//! The request path: pick a backend for the Host, add the forwarding headers, send the
//! request over one of this worker's keep-alive connections, and retry another instance
//! only when the TCP connection could not be made. WebSocket upgrades are handed to
//! [`tunnel`].
//!
//! Nothing here waits on another thread: the route table is read through `arc-swap`,
//! backends are ejected with an atomic, connections belong to the worker, and a client that
//! goes away simply drops the future (no backend is ever marked bad for it).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    HeaderValue, CONNECTION, COOKIE, HOST, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::PathAndQuery;
use http::{request, HeaderMap, HeaderName, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::body::{BodySent, PooledBody, ProxyBody, RequestBody};
use crate::host;
use crate::pages::{self, Unanswered};
use crate::request_id;
use crate::sticky::Session;
use crate::table::{Backend, Pool, RouteTable, Tried};
use crate::upstream::Upstream;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
static X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
/// Proves to a controller that a request came through one of the cluster's routers.
pub(crate) static X_STRATO_ROUTER: HeaderName = HeaderName::from_static("x-strato-router");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Everything a request needs, shared by all connections of one worker.
pub(crate) struct Proxy {
    pub(crate) table: Arc<RouteTable>,
    /// This worker's connections to backends.
    pub(crate) upstream: Arc<Upstream>,
    /// The API server's pool, when internal hosts are routed to it.
    pub(crate) api: Option<Arc<Pool>>,
    /// `api.<domain>`, normalized.
    pub(crate) api_host: String,
    /// [`crate::RouterConfig::api_proof`].
    pub(crate) api_proof: Option<HeaderValue>,
    pub(crate) max_attempts: usize,
    pub(crate) eject_ms: u64,
    /// [`crate::RouterConfig::response_timeout`].
    pub(crate) response_timeout: Duration,
    /// [`crate::RouterConfig::body_read_timeout`].
    pub(crate) body_read_timeout: Duration,
    /// Ends WebSocket tunnels on shutdown.
    pub(crate) stop: CancellationToken,
}

/// The client end of one connection, worked out once for all its requests.
pub(crate) struct Peer {
    ip: IpAddr,
    /// `X-Forwarded-For` for a request that brings none.
    pub(crate) forwarded_for: HeaderValue,
    /// The connection came over TLS.
    pub(crate) https: bool,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr, https: bool) -> Peer {
        let forwarded_for = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            ip,
            forwarded_for,
            https,
        }
    }
}

impl Proxy {
    /// Answers one client request.
    pub(crate) async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let Some(raw_host) = request_host(&req) else {
            return pages::missing_host();
        };
        let Ok(raw_host_str) = raw_host.to_str() else {
            return pages::missing_host();
        };
        let host = host::normalize(raw_host_str);
        let Some((pool, to_api)) = self.route(&host) else {
            return pages::unknown_route(&host);
        };
        let now_ms = epoch_ms();
        let mut session = Session::default();
        for cookie in req.headers().get_all(COOKIE) {
            session.read(cookie.as_bytes());
        }
        let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        prepare_request_headers(
            &mut parts.headers,
            &raw_host,
            peer,
            now_ms,
            client_upgrade.is_some(),
        );
        parts.headers.remove(&X_STRATO_ROUTER);
        if let (true, Some(proof)) = (to_api, &self.api_proof) {
            parts.headers.insert(X_STRATO_ROUTER.clone(), proof.clone());
        }
        let (body, body_sent) = RequestBody::new(body, self.body_read_timeout);
        let request = backend_request(parts, body);
        let (mut response, backend) = match self
            .forward(&pool, request, body_sent, now_ms, session.instance())
            .await
        {
            Ok(answered) => answered,
            Err(unanswered) => return unanswered.response(),
        };
        pin_session(response.headers_mut(), &backend.instance, &session);
        match client_upgrade {
            Some(client_upgrade) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let backend_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(client_upgrade, backend_upgrade, self.stop.clone()));
            }
            _ => strip_hop_by_hop(response.headers_mut(), false),
        }
        response.map(Either::Left)
    }

    /// The pool for a normalized host: for the API's names, the controllers registered as
    /// `api.<domain>` (a cluster's), else the local API server; other hosts from the table.
    /// True with the pool when it is the API's.
    pub(crate) fn route(&self, host: &str) -> Option<(Arc<Pool>, bool)> {
        if host == self.api_host || host::is_local_name(host) {
            if let Some(pool) = self.table.pool(&self.api_host).or_else(|| self.api.clone()) {
                return Some((pool, true));
            }
        }
        self.table.pool(host).map(|pool| (pool, false))
    }

    /// Sends the request to one backend after another until one accepts the connection.
    /// `Err` when no backend answered: every connect failed, or the one that took the
    /// request failed (or timed out) before its response headers.
    ///
    /// The request is only built once: a connection is made before it is handed over, and
    /// hyper gives it back untouched when a pooled connection turns out closed before
    /// sending, so neither headers nor body are ever copied for a retry.
    async fn forward(
        &self,
        pool: &Pool,
        mut request: Request<RequestBody>,
        mut body_sent: BodySent,
        now_ms: u64,
        session: Option<&[u8]>,
    ) -> Result<(Response<PooledBody>, Arc<Backend>), Unanswered> {
        let attempts = self.max_attempts.clamp(1, pool.len().max(1));
        let mut tried = Tried::default();
        for _ in 0..attempts {
            let (index, backend) = pool
                .pick_for(session, tried, now_ms)
                .ok_or(Unanswered::Failed)?;
            tried.add(index);
            // Pooled connections the backend closed meanwhile are skipped, then a new one.
            loop {
                let checkout = match self.upstream.checkout(backend).await {
                    Ok(checkout) => checkout,
                    Err(error) => {
                        backend.eject_until(now_ms + self.eject_ms);
                        tracing::warn!(backend = %backend.addr, %error, "cannot connect to the backend; trying another instance");
                        break;
                    }
                };
                let mut sender = checkout.sender;
                let expired = async {
                    body_sent.wait().await;
                    tokio::time::sleep(self.response_timeout).await;
                };
                let sent = tokio::select! {
                    biased;
                    sent = sender.try_send_request(request) => sent,
                    () = expired => {
                        // Dropping the request closes this connection; the app got the
                        // request, so no other instance gets it.
                        self.log_timeout(backend);
                        return Err(Unanswered::TimedOut(self.response_timeout));
                    }
                };
                match sent {
                    Ok(response) => {
                        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
                        let response = response.map(|body| {
                            PooledBody::new(
                                body,
                                self.upstream.clone(),
                                checkout.key,
                                sender,
                                reusable,
                            )
                        });
                        return Ok((response, backend.clone()));
                    }
                    Err(mut error) => match error.take_message() {
                        Some(unsent) if checkout.reused => request = unsent,
                        Some(unsent) => {
                            request = unsent;
                            backend.eject_until(now_ms + self.eject_ms);
                            tracing::warn!(backend = %backend.addr, error = %error.error(), "new backend connection closed at once; trying another instance");
                            break;
                        }
                        None if body_sent.stalled() => {
                            return Err(Unanswered::ClientStalled(self.body_read_timeout))
                        }
                        None => {
                            tracing::warn!(backend = %backend.addr, error = %error.error(), "backend failed to answer the request");
                            return Err(Unanswered::Failed);
                        }
                    },
                }
            }
        }
        Err(Unanswered::Failed)
    }

    /// Logs that `backend` took a request and did not begin its response in time (on
    /// either request path).
    pub(crate) fn log_timeout(&self, backend: &Backend) {
        let timeout = self.response_timeout;
        tracing::warn!(backend = %backend.addr, ?timeout, "the app did not begin its response in time; answered 504");
    }
}

/// Adds the `__VCAP_ID__` cookie naming `instance` when the response starts a sticky
/// session, or the session moved there ([`crate::sticky`]).
fn pin_session(headers: &mut HeaderMap, instance: &str, session: &Session) {
    if !session.started && !headers.contains_key(SET_COOKIE) {
        return;
    }
    let set_cookies: Vec<&[u8]> = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let pins: Vec<HeaderValue> = session
        .pins(&set_cookies, instance)
        .into_iter()
        .filter_map(|pin| HeaderValue::from_bytes(&pin).ok())
        .collect();
    for pin in pins {
        headers.append(SET_COOKIE, pin);
    }
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    req.headers().get(HOST).filter(|h| !h.is_empty()).cloned()
}

/// The request as an HTTP/1.1 backend gets it: origin-form target, the prepared headers.
fn backend_request(parts: request::Parts, body: RequestBody) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.uri_mut() = backend_uri(parts.uri);
    *request.method_mut() = parts.method;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers;
    request
}

/// `/path?query` of what the client asked for (HTTP/2 and absolute-form requests carry a
/// scheme and authority that an HTTP/1.1 backend must not get in its request line).
fn backend_uri(uri: Uri) -> Uri {
    if uri.authority().is_none() && uri.path_and_query().is_some() {
        return uri;
    }
    Uri::from(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    )
}

/// An HTTP/1.1 request asking to switch protocols (a WebSocket handshake).
fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn prepare_request_headers(
    headers: &mut HeaderMap,
    raw_host: &HeaderValue,
    peer: &Peer,
    now_ms: u64,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    join_cookies(headers);
    if !headers.contains_key(HOST) {
        headers.insert(HOST, raw_host.clone());
    }
    if headers.contains_key(&X_FORWARDED_FOR) {
        append_forwarded_for(headers, peer.ip);
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer.forwarded_for.clone());
    }
    // The router ends TLS itself, so over TLS it knows the scheme; over plain HTTP a value
    // from a proxy in front of it is kept.
    if peer.https {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), raw_host.clone());
    }
    if !headers.contains_key(&X_REQUEST_START) {
        headers.insert(X_REQUEST_START.clone(), HeaderValue::from(now_ms));
    }
    if !headers.contains_key(&X_VCAP_REQUEST_ID) {
        headers.insert(X_VCAP_REQUEST_ID.clone(), request_id::next());
    }
}

/// One `Cookie` field for the HTTP/1.1 backend where HTTP/2 may send several (RFC 9113
/// §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// `X-Forwarded-For: <what the client sent>, <client ip>`.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: IpAddr) {
    let mut value = String::new();
    for previous in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(previous) = previous.to_str() {
            if !previous.trim().is_empty() {
                value.push_str(previous.trim());
                value.push_str(", ");
            }
        }
    }
    let _ = write!(value, "{client_ip}");
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// Removes the headers that describe one connection (RFC 9110 §7.6.1), keeping
/// `Connection: upgrade` and `Upgrade` for a protocol switch.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        headers.remove(CONNECTION);
        for name in named {
            if !(keep_upgrade && name == UPGRADE) {
                headers.remove(name);
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Copies bytes both ways between an upgraded client and backend until either side closes
/// or the router shuts down.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, stop: CancellationToken) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "protocol upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    tokio::select! {
        _ = stop.cancelled() => {}
        copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(error) = copied {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
    }
}

pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_headers_survive_for_a_protocol_switch() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    #[test]
    fn cookies_split_over_fields_reach_the_backend_as_one() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("__VCAP_ID__=i"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; __VCAP_ID__=i");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
    }

    #[test]
    fn backends_get_origin_form_targets() {
        let cases = [
            ("http://App.Test:8080/a/b?c=d", "/a/b?c=d"),
            ("/x?y", "/x?y"),
            ("http://app.test", "/"),
        ];
        for (target, want) in cases {
            let (mut parts, ()) = Request::get(target).body(()).unwrap().into_parts();
            parts.version = Version::HTTP_2;
            let uri = backend_uri(parts.uri);
            assert_eq!(uri.to_string(), want, "{target}");
        }
    }

    #[test]
    fn incoming_request_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(X_VCAP_REQUEST_ID.clone(), HeaderValue::from_static("abc"));
        prepare_request_headers(
            &mut h,
            &HeaderValue::from_static("a.x"),
            &Peer::new("127.0.0.1".parse().unwrap(), false),
            5,
            false,
        );
        assert_eq!(h[&X_VCAP_REQUEST_ID], "abc");
        assert_eq!(h[&X_REQUEST_START], "5");
        assert_eq!(h[HOST], "a.x");
        assert_eq!(h[&X_FORWARDED_HOST], "a.x");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn tls_connections_are_forwarded_as_https_whatever_the_client_says() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        let peer = Peer::new("127.0.0.1".parse().unwrap(), true);
        prepare_request_headers(&mut h, &HeaderValue::from_static("a.x"), &peer, 5, false);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }
}
