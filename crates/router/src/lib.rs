//! The router role: an HTTP reverse proxy from Host names to app instances.
//!
//! DEAs announce instances on the bus (`router.register` / `router.unregister`); the router
//! keeps them in a [`RouteTable`] that request handlers read without locking, balances
//! round-robin over an app's instances, forwards WebSocket upgrades, and serves the cloud's
//! API at `api.<domain>` and at the machine's own names. See [`Router`].
//!
//! With [`RouterConfig::https`] set it serves HTTPS beside HTTP on a second port, with the
//! same routes; the TLS handshake runs on the worker that serves the connection, and
//! backends learn the scheme from `X-Forwarded-Proto`.
//!
//! Requests are served by worker threads that each run a current-thread runtime with their
//! own keep-alive connections to backends (see `worker` and `upstream`), so a request
//! never crosses threads; the caller's runtime only accepts connections and follows the bus.

mod body;
mod config;
pub mod host;
mod pages;
mod proxy;
mod relay;
mod request_id;
mod sticky;
mod sync;
mod table;
mod upstream;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strato_bus::{BusError, SharedBus, Subscription};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{HttpsSettings, RouterConfig, DEFAULT_MAX_HEADER_BYTES};
pub use table::{RouteChange, RouteTable};
/// The rustls the router serves HTTPS with (its `ServerConfig` goes in [`HttpsSettings`]).
pub use tokio_rustls::rustls;

use table::{Backend, Pool};
use worker::Scheme;

/// What can stop the router from starting.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}; choose a free port or stop what uses it (ports below 1024 need root)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot follow route registrations on the bus: {0}; check that the bus is up")]
    Bus(#[from] BusError),
}

/// A router that is listening and subscribed, ready to [`serve`](Router::serve).
pub struct Router {
    cfg: RouterConfig,
    id: String,
    bus: SharedBus,
    listener: TcpListener,
    local_addr: SocketAddr,
    https: Option<(TcpListener, SocketAddr)>,
    routes: Subscription,
    heartbeats: Subscription,
    table: Arc<RouteTable>,
}

impl Router {
    /// Subscribes to route messages and binds the listener, so the port is known at once
    /// and no registration published from now on is missed.
    pub async fn bind(cfg: RouterConfig, bus: SharedBus) -> Result<Router, RouterError> {
        let routes = bus.subscribe(sync::ROUTE_SUBJECTS).await?;
        let heartbeats = bus.subscribe(strato_core::subjects::DEA_HEARTBEAT).await?;
        let (listener, local_addr) = listen(cfg.listen).await?;
        let https = match &cfg.https {
            Some(https) => Some(listen(https.listen).await?),
            None => None,
        };
        Ok(Router {
            table: Arc::new(
                RouteTable::new(cfg.route_ttl, cfg.drain).with_dea_deadline(cfg.dea_deadline),
            ),
            id: uuid::Uuid::new_v4().to_string(),
            cfg,
            bus,
            listener,
            local_addr,
            https,
            routes,
            heartbeats,
        })
    }

    /// The address the router accepts HTTP connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the router accepts HTTPS connections on, when it serves HTTPS.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(_, addr)| *addr)
    }

    /// The live route table (stays valid after [`serve`](Router::serve) takes the router).
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.clone()
    }

    /// The id this router announces in `router.start`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Follows route changes, prunes, announces `router.start`, accepts connections and
    /// proxies their requests on the worker threads until `shutdown` is cancelled (or this
    /// future is dropped); then closes the port and gives in-flight requests
    /// [`RouterConfig::shutdown_grace`] to finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let stop = shutdown.child_token();
        let _stop_if_dropped = stop.clone().drop_guard();
        let background = [
            tokio::spawn(sync::follow_routes(
                self.routes,
                self.table.clone(),
                stop.clone(),
            )),
            tokio::spawn(sync::follow_heartbeats(
                self.heartbeats,
                self.table.clone(),
                stop.clone(),
            )),
            tokio::spawn(sync::prune(
                self.table.clone(),
                self.bus.clone(),
                self.cfg.prune_interval,
                self.cfg.dea_deadline / 2,
                self.cfg.max_hold,
                stop.clone(),
            )),
            tokio::spawn(sync::announce(
                self.bus.clone(),
                sync::router_start(&self.id, self.local_addr, &self.cfg),
                self.cfg.announce_interval,
                stop.clone(),
            )),
        ];
        let shared = worker::Shared {
            table: self.table.clone(),
            api: self.cfg.api_backend.and_then(|addr| {
                Backend::new(addr.to_string(), "").map(|b| Arc::new(Pool::fixed(b)))
            }),
            api_host: format!("api.{}", host::normalize(&self.cfg.domain)),
            cfg: self.cfg.clone(),
            stop: stop.clone(),
        };
        let workers = match worker::Workers::start(worker_count(&self.cfg), &shared) {
            Ok(workers) => workers,
            Err(error) => {
                tracing::error!(%error, "cannot start the router's worker threads; the router is not serving");
                stop.cancel();
                for task in background {
                    let _ = task.await;
                }
                return;
            }
        };
        tracing::info!(addr = %self.local_addr, https = ?self.https.as_ref().map(|(_, addr)| addr), id = %self.id, workers = workers.len(), "router listening");
        let http = accept_loop(self.listener, Scheme::Http, &workers, &stop);
        match self.https {
            Some((listener, _)) => {
                let https = accept_loop(listener, Scheme::Https, &workers, &stop);
                tokio::join!(http, https);
            }
            None => http.await,
        }
        workers.finished().await;
        stop.cancel();
        for task in background {
            let _ = task.await;
        }
    }
}

/// Binds a listener, naming the address when that fails.
async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), RouterError> {
    let bind_error = |source| RouterError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local_addr))
}

/// Accepts connections until `stop` and hands each to a worker, to be served as `scheme`;
/// then closes the listener.
async fn accept_loop(
    listener: TcpListener,
    scheme: Scheme,
    workers: &worker::Workers,
    stop: &CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        workers.dispatch(stream, peer, scheme);
    }
}

/// [`RouterConfig::workers`], or the calling runtime's worker count when it is 0.
fn worker_count(cfg: &RouterConfig) -> usize {
    match cfg.workers {
        0 => tokio::runtime::Handle::try_current()
            .map_or(1, |runtime| runtime.metrics().num_workers())
            .max(1),
        n => n,
    }
}
