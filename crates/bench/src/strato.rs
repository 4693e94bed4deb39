//! Strato's router as the benchmark runs it: in-process, on a tokio runtime with exactly as
//! many worker threads as nginx gets worker processes, with one route to the backend kept
//! alive by re-registering it like a DEA would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use strato_bus::InProcBus;
use strato_core::messages::RouteRegistration;
use strato_router::{Router, RouterConfig};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// The Host the benchmark's route is registered under.
pub const ROUTE_HOST: &str = "bench.localhost";
/// How often the route is registered again (well inside the route TTL).
const REREGISTER_EVERY: Duration = Duration::from_secs(5);

/// A running router; stopped when dropped.
pub struct StratoRouter {
    addr: SocketAddr,
    stop: CancellationToken,
    runtime: Option<Runtime>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl StratoRouter {
    /// Starts the router on a free port of 127.0.0.1 with `workers` threads, routing
    /// [`ROUTE_HOST`] to `backend`.
    pub fn start(workers: usize, backend: SocketAddr) -> anyhow::Result<StratoRouter> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("strato-router")
            .enable_all()
            .build()
            .context("cannot start the router's tokio runtime")?;
        let config = RouterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_backend: None,
            shutdown_grace: Duration::from_secs(1),
            ..Default::default()
        };
        let router = runtime
            .block_on(Router::bind(config, Arc::new(InProcBus::new())))
            .context("cannot start Strato's router")?;
        let addr = router.local_addr();
        let table = router.table();
        let registration = RouteRegistration {
            dea: "strato-bench".to_string(),
            app: "bench".to_string(),
            uris: vec![ROUTE_HOST.to_string()],
            host: backend.ip().to_string(),
            port: backend.port(),
            tags: Default::default(),
            private_instance_id: "bench-0".to_string(),
        };
        table.register(&registration);
        let stop = CancellationToken::new();
        let keep_registered = stop.clone();
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = keep_registered.cancelled() => break,
                    _ = tokio::time::sleep(REREGISTER_EVERY) => table.register(&registration),
                }
            }
        });
        let serving = runtime.spawn(router.serve(stop.clone()));
        Ok(StratoRouter {
            addr,
            stop,
            runtime: Some(runtime),
            serving: Some(serving),
        })
    }

    /// Where the router listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StratoRouter {
    fn drop(&mut self) {
        self.stop.cancel();
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if let Some(serving) = self.serving.take() {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(3), serving).await });
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}
