//! A small HTTP client for stratod's control socket (HTTP/1.1 over a Unix socket).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::Value;

pub struct Control {
    pub socket: PathBuf,
}

impl Control {
    pub fn new(home: &Path) -> Self {
        Control {
            socket: strato_core::home::Layout::new(home.to_path_buf()).control_socket(),
        }
    }

    /// True when a stratod answers on the socket.
    pub async fn is_up(&self) -> bool {
        self.call("GET", "/status", None).await.is_ok()
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
            .uri(path)
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
