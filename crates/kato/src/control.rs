//! A small HTTP client for stratod's control socket (HTTP/1.1 over a Unix socket).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::Value;

#[derive(Clone)]
pub struct Control {
    pub socket: PathBuf,
    /// `/nodes/NODE` when the calls are for another node of the cluster, which the
    /// local stratod forwards them to over the bus.
    prefix: String,
}

impl Control {
    pub fn new(home: &Path) -> Self {
        Control {
            socket: strato_core::home::Layout::new(home.to_path_buf()).control_socket(),
            prefix: String::new(),
        }
    }

    /// The same control API, its calls run by node `node` (id, id prefix or address).
    pub fn at(&self, node: &str) -> Control {
        let node: String = node
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect();
        Control {
            socket: self.socket.clone(),
            prefix: format!("/nodes/{node}"),
        }
    }

    /// [`Control::at`] when a node is given, else this node's.
    pub fn maybe_at(&self, node: &Option<String>) -> Control {
        match node {
            Some(n) => self.at(n),
            None => self.clone(),
        }
    }

    /// True when a stratod answers on the socket.
    pub async fn is_up(&self) -> bool {
        self.call("GET", "/status", None).await.is_ok()
    }

    /// True while a stratod process holds this node's pid file lock, which it takes at
    /// start and the kernel releases when it exits: after its control API has closed,
    /// it may still be letting go of its files.
    pub fn process_alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let pid_file = self.socket.with_file_name("stratod.pid");
        let Ok(file) = std::fs::File::open(pid_file) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own; a shared lock is released when `file`
        // is dropped.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        locked != 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| {
                format!(
                    "stratod is not running (no answer on {}); start it with `kato start`",
                    self.socket.display()
                )
            })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header("host", "stratod")
            .header("content-type", "application/json")
            .body(Full::new(bytes))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()))
        };
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            anyhow::bail!("{msg}");
        }
        Ok(v)
    }
}
