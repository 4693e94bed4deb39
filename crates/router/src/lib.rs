//! The router role: an HTTP reverse proxy from Host names to app instances.
//!
//! DEAs announce instances on the bus (`router.register` / `router.unregister`); the router
//! keeps them in a [`RouteTable`] that request handlers read without locking, balances
//! round-robin over an app's instances, forwards WebSocket upgrades, and serves the cloud's
//! API at `api.<domain>` and at the machine's own names. See [`Router`].

mod body;
mod config;
pub mod host;
mod pages;
mod proxy;
mod sync;
mod table;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use strato_bus::{BusError, SharedBus, Subscription};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::RouterConfig;
pub use table::{RouteChange, RouteTable};

use proxy::Proxy;
use table::{Backend, Pool};

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
    routes: Subscription,
    table: Arc<RouteTable>,
}

impl Router {
    /// Subscribes to route messages and binds the listener, so the port is known at once
    /// and no registration published from now on is missed.
    pub async fn bind(cfg: RouterConfig, bus: SharedBus) -> Result<Router, RouterError> {
        let routes = bus.subscribe(sync::ROUTE_SUBJECTS).await?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| RouterError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| RouterError::Bind {
            addr: cfg.listen,
            source,
        })?;
        Ok(Router {
            table: Arc::new(RouteTable::new(cfg.route_ttl, cfg.drain)),
            id: uuid::Uuid::new_v4().to_string(),
            cfg,
            bus,
            listener,
            local_addr,
            routes,
        })
    }

    /// The address the router accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live route table (stays valid after [`serve`](Router::serve) takes the router).
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.clone()
    }

    /// The id this router announces in `router.start`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Follows route changes, prunes, announces `router.start` and proxies requests until
    /// `shutdown` is cancelled; then stops accepting and gives in-flight requests
    /// [`RouterConfig::shutdown_grace`] to finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let stop = shutdown.child_token();
        let background = [
            tokio::spawn(sync::follow_routes(
                self.routes,
                self.table.clone(),
                stop.clone(),
            )),
            tokio::spawn(sync::prune(
                self.table.clone(),
                self.cfg.prune_interval,
                stop.clone(),
            )),
            tokio::spawn(sync::announce(
                self.bus.clone(),
                sync::router_start(&self.id, self.local_addr, &self.cfg),
                self.cfg.announce_interval,
                stop.clone(),
            )),
        ];
        let proxy = Arc::new(Proxy {
            table: self.table.clone(),
            client: backend_client(&self.cfg),
            api: self
                .cfg
                .api_backend
                .and_then(|addr| Backend::new(addr.to_string()).map(|b| Arc::new(Pool::fixed(b)))),
            api_host: format!("api.{}", host::normalize(&self.cfg.domain)),
            max_attempts: self.cfg.max_attempts,
            eject_ms: self.cfg.backend_eject.as_millis() as u64,
            stop: stop.clone(),
        });
        tracing::info!(addr = %self.local_addr, id = %self.id, "router listening");
        accept_loop(&self.listener, proxy, &stop, self.cfg.shutdown_grace).await;
        drop(self.listener);
        stop.cancel();
        for task in background {
            let _ = task.await;
        }
    }
}

/// Accepts connections until `stop`, then waits (up to `grace`) for them to end and drops
/// the rest.
async fn accept_loop(
    listener: &TcpListener,
    proxy: Arc<Proxy>,
    stop: &CancellationToken,
    grace: Duration,
) {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server.http1().timer(TokioTimer::new());
    let server = Arc::new(server);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
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
        let client_ip = peer.ip().to_canonical();
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, client_ip).await) }
        });
        let server = server.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let connection = server.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, %peer, "client connection ended with an error");
            }
        });
    }
    drop(proxy);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown grace period");
    }
    connections.abort_all();
}

/// The keep-alive pool of connections to backends.
fn backend_client(cfg: &RouterConfig) -> Client<HttpConnector, body::OutboundBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_backend)
        .build(connector)
}
