//! The backend every target proxies to: a tiny keep-alive HTTP/1.1 server answering
//! `hello`, on its own tokio runtime so it does not share threads with the router.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// The body the backend answers every request with.
pub const BODY: &[u8] = b"hello\n";

/// A running backend; stopped when dropped.
pub struct Backend {
    addr: SocketAddr,
    runtime: Option<Runtime>,
}

impl Backend {
    /// Starts the server on a free port of 127.0.0.1 with `threads` worker threads.
    pub fn start(threads: usize) -> anyhow::Result<Backend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("bench-backend")
            .enable_all()
            .build()
            .context("cannot start the backend's tokio runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind the backend to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        runtime.spawn(accept_loop(listener));
        Ok(Backend {
            addr,
            runtime: Some(runtime),
        })
    }

    /// Where the backend listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
