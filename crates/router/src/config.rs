//! The router's settings in one struct, so the role that starts it can fill them from the
//! config store; every timing defaults to `strato_core::timings`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strato_core::timings;
use tokio_rustls::rustls::ServerConfig;

/// Largest request head (request line and headers) by default: 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Where and how the router also serves HTTPS.
#[derive(Clone, Debug)]
pub struct HttpsSettings {
    /// Where to accept TLS connections (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Certificates (chosen by SNI) and protocols, e.g. from `strato_tls::server_config`.
    pub tls: Arc<ServerConfig>,
    /// A client that has not finished the TLS handshake after this is disconnected.
    pub handshake_timeout: Duration,
}

impl HttpsSettings {
    /// HTTPS on `listen` with `tls`, and a 10 s handshake timeout.
    pub fn new(listen: SocketAddr, tls: Arc<ServerConfig>) -> HttpsSettings {
        HttpsSettings {
            listen,
            tls,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How a [`crate::Router`] listens, routes and forgets routes.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Where to accept HTTP connections (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// HTTPS beside HTTP, with the same routes; `None` serves HTTP only.
    pub https: Option<HttpsSettings>,
    /// A request whose head (request line and headers) is larger than this is answered
    /// `431 Request Header Fields Too Large` and its connection closed. At least 8 KiB.
    pub max_header_bytes: usize,
    /// A client must send a request's whole head within this (a slowloris client that
    /// trickles headers is cut off); it also bounds how long an idle keep-alive
    /// connection is kept open.
    pub header_read_timeout: Duration,
    /// The cloud's domain: requests for `api.<domain>` go to [`RouterConfig::api_backend`].
    pub domain: String,
    /// The API server. Requests whose Host is `api.<domain>`, an IP literal or bare
    /// `localhost` go here; `None` routes those hosts through the route table like any other.
    pub api_backend: Option<SocketAddr>,
    /// A backend not re-registered for this long is dropped from the table.
    pub route_ttl: Duration,
    /// How often expired and drained backends are removed.
    pub prune_interval: Duration,
    /// How long an unregistered backend keeps serving when its host has no other backend.
    pub drain: Duration,
    /// How often DEAs are told to register again (`minimumRegisterIntervalInSeconds`).
    pub register_interval: Duration,
    /// How often `router.start` is published again after the first one (`None`: only once).
    pub announce_interval: Option<Duration>,
    /// Sent as `X-Strato-Router` with every request passed to the API's controllers, so
    /// they believe its `X-Forwarded-For`; a client's own header of that name is dropped
    /// from every request.
    pub api_proof: Option<String>,
    /// An app that has not begun its response (its status line and headers) this long
    /// after the router has sent it the whole request is cut off: the client gets `504
    /// Gateway Timeout` and the backend connection is closed. Cloud Foundry's
    /// `endpoint_timeout`; a slow upload, or a response body that has begun, may take as
    /// long as it takes.
    pub response_timeout: Duration,
    /// A client that sends nothing more of a request body for this long (a stalled or
    /// slowloris upload) is answered `408 Request Timeout` and the request to the app
    /// abandoned. nginx's `client_body_timeout`.
    pub body_read_timeout: Duration,
    /// Giving up on a TCP connect to a backend after this counts as a connect error.
    pub connect_timeout: Duration,
    /// A DEA silent (no `dea.heartbeat`) for this long is gone: its routes are dropped.
    pub dea_deadline: Duration,
    /// While the bus is not heard, routes are kept for at most this long.
    pub max_hold: Duration,
    /// A backend that refused a connection is skipped for this long when others are left.
    pub backend_eject: Duration,
    /// Backends tried for one request when connections are refused.
    pub max_attempts: usize,
    /// Idle keep-alive connections to backends are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per backend by each worker thread.
    pub pool_max_idle_per_backend: usize,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// Worker threads, each with its own current-thread runtime and its own connections to
    /// backends; client connections are spread over them. 0 means as many as the runtime
    /// that runs [`crate::Router::serve`] has worker threads.
    pub workers: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            https: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            header_read_timeout: Duration::from_secs(10),
            domain: "localhost".to_string(),
            api_backend: None,
            route_ttl: timings::ROUTE_TTL,
            prune_interval: Duration::from_secs(1),
            drain: timings::ROUTE_DRAIN,
            register_interval: timings::ROUTE_REGISTER_INTERVAL,
            announce_interval: Some(Duration::from_secs(30)),
            api_proof: None,
            // Long enough for one lost SYN to be sent again (after 1 s); a backend that
            // does not answer by then is ejected and the request tried on another.
            connect_timeout: Duration::from_secs(2),
            // Cloud Foundry's default: long polls and slow reports still get through.
            response_timeout: Duration::from_secs(900),
            body_read_timeout: Duration::from_secs(60),
            dea_deadline: timings::HEARTBEAT_DEADLINE,
            max_hold: Duration::from_secs(600),
            backend_eject: Duration::from_secs(2),
            max_attempts: 3,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_backend: 256,
            shutdown_grace: Duration::from_secs(5),
            workers: 0,
        }
    }
}
