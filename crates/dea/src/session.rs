//! Streaming exec sessions (`strato run`, `ssh`, `scp`): the DEA's own small WebSocket
//! endpoint, so command output and file transfers never travel in bus messages (payload
//! limits, no flow control).
//!
//! 1. The controller asks `dea.<id>.session` ([`SessionRequest`]); the DEA resolves the
//!    instance's container and answers a [`SessionReply`]: the endpoint's `ws://` URL and a
//!    random 32-character token, valid once, for [`TOKEN_TTL`], bound to that container and
//!    command.
//! 2. The controller connects with `Authorization: Bearer <token>`; the DEA starts the
//!    command through the container driver (`runc exec`) and relays its stdio in the
//!    frames of [`strato_core::messages::exec_frames`] until it exits (an `EXIT` frame), or
//!    kills it when the WebSocket goes away first.
//!
//! A command runs in the app dir after sourcing `.profile.d/*.sh`, as the app's start
//! command does; an empty command is an interactive shell. A tty session runs under a pty
//! pair allocated here ([`crate::pty`]): its slave is the stdio of `runc exec --tty`, which
//! makes the container's own pty (so `tty` inside prints `/dev/pts/N`) and relays it;
//! resizing sets the size on our master and sends runc SIGWINCH, on which runc copies it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use strato_container::{ContainerDriver, ExecProcess, APP_HOME};
use strato_core::messages::{exec_frames, SessionExit, SessionReply, SessionRequest, TerminalSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pty;

/// How long a session token may wait for its connection.
pub const TOKEN_TTL: Duration = Duration::from_secs(30);
/// After the command exits, how long output may still drain (a background child that
/// keeps stdout open must not hold the session).
const DRAIN: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 32 * 1024;
/// How long a terminal session's first keystrokes wait for the command's first output.
const FIRST_OUTPUT_WAIT: Duration = Duration::from_secs(1);

/// A session offered but not yet connected.
struct Pending {
    container: String,
    argv: Vec<String>,
    env: Vec<String>,
    tty: Option<TerminalSize>,
    expires: Instant,
}

/// The session endpoint of one DEA.
pub struct Sessions {
    driver: Arc<dyn ContainerDriver>,
    pending: Mutex<HashMap<String, Pending>>,
    url: String,
}

impl Sessions {
    /// Serves the endpoint on a free port of `host` until `shutdown`.
    pub async fn start(
        host: &str,
        driver: Arc<dyn ContainerDriver>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Sessions>> {
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let sessions = Arc::new(Sessions {
            driver,
            pending: Mutex::new(HashMap::new()),
            url: format!("ws://{addr}/session"),
        });
        let app = Router::new()
            .route("/session", get(connect))
            .with_state(sessions.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!("the DEA session endpoint stopped: {e}");
            }
        });
        info!(url = %sessions.url, "DEA session endpoint listening");
        Ok(sessions)
    }

    /// Offers a session running `req` in `container`: the URL and a one-time token.
    pub fn offer(&self, container: String, req: &SessionRequest) -> SessionReply {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut env = Vec::new();
        if req.tty.is_some() {
            env.push(format!("TERM={}", sane_term(req.term.as_deref())));
        }
        let pending = Pending {
            container,
            argv: session_argv(&req.argv),
            env,
            tty: req.tty,
            expires: Instant::now() + TOKEN_TTL,
        };
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, p| p.expires > now);
        map.insert(token.clone(), pending);
        SessionReply {
            url: self.url.clone(),
            token,
            error: None,
        }
    }

    /// The session of `token`, which is thereby used up.
    fn take(&self, token: &str) -> Option<Pending> {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(token).filter(|p| p.expires > Instant::now())
    }
}

/// `TERM` as asked when it looks like a terminal name, else `xterm`.
fn sane_term(term: Option<&str>) -> String {
    term.filter(|t| {
        !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
    })
    .unwrap_or("xterm")
    .to_string()
}

/// The argv run in the container: `argv` (or a shell) in the app dir with the app's
/// `.profile.d` environment.
fn session_argv(argv: &[String]) -> Vec<String> {
    let profile =
        format!("cd {APP_HOME} && for f in .profile.d/*.sh; do [ -f \"$f\" ] && . \"$f\"; done; ");
    let mut out = vec!["/bin/sh".to_string(), "-c".to_string()];
    if argv.is_empty() {
        out.push(format!(
            "{profile}if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"
        ));
    } else {
        out.push(format!("{profile}exec \"$@\""));
        out.push("sh".to_string());
        out.extend(argv.iter().cloned());
    }
    out
}

async fn connect(
    State(sessions): State<Arc<Sessions>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(pending) = token.and_then(|t| sessions.take(t)) else {
        return (
            StatusCode::UNAUTHORIZED,
            "unknown, used or expired session token: ask the controller for a new session",
        )
            .into_response();
    };
    let driver = sessions.driver.clone();
    ws.on_upgrade(move |socket| serve(driver, pending, socket))
}

/// Runs the session's command and relays it over `socket` until it exits.
async fn serve(driver: Arc<dyn ContainerDriver>, pending: Pending, socket: WebSocket) {
    let (mut sink, input) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let exit = match pending.tty {
        None => run_piped(driver.as_ref(), &pending, input, out_tx.clone()).await,
        Some(size) => run_tty(driver.as_ref(), &pending, size, input, out_tx.clone()).await,
    };
    let exit = exit.unwrap_or_else(|error| SessionExit {
        code: -1,
        error: Some(error),
    });
    let mut frame = vec![exec_frames::EXIT];
    frame.extend(serde_json::to_vec(&exit).unwrap_or_default());
    let _ = out_tx.send(frame).await;
    drop(out_tx);
    let _ = writer.await;
}

/// What the client sent, decoded.
enum Input {
    Stdin(Vec<u8>),
    Eof,
    Resize(TerminalSize),
    Closed,
}

async fn next_input(input: &mut SplitStream<WebSocket>) -> Input {
    loop {
        let Some(Ok(msg)) = input.next().await else {
            return Input::Closed;
        };
        let data = match msg {
            Message::Binary(data) => data,
            Message::Close(_) => return Input::Closed,
            _ => continue,
        };
        match data.split_first() {
            Some((&exec_frames::STDIN, rest)) => return Input::Stdin(rest.to_vec()),
            Some((&exec_frames::STDIN_EOF, _)) => return Input::Eof,
            Some((&exec_frames::RESIZE, rest)) => {
                if let Ok(size) = serde_json::from_slice(rest) {
                    return Input::Resize(size);
                }
            }
            _ => {}
        }
    }
}

async fn run_piped(
    driver: &dyn ContainerDriver,
    p: &Pending,
    mut input: SplitStream<WebSocket>,
    out: mpsc::Sender<Vec<u8>>,
) -> Result<SessionExit, String> {
    let mut cmd = driver
        .exec_command(&p.container, &p.argv, &p.env, false)
        .map_err(|e| e.to_string())?;
    cmd.command_mut()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = cmd.spawn().map_err(|e| e.to_string())?;
    let mut stdin = proc.child.stdin.take();
    let pumps = [
        tokio::spawn(pump(
            proc.child.stdout.take(),
            exec_frames::STDOUT,
            out.clone(),
        )),
        tokio::spawn(pump(
            proc.child.stderr.take(),
            exec_frames::STDERR,
            out.clone(),
        )),
    ];
    let feed = async {
        loop {
            match next_input(&mut input).await {
                Input::Stdin(data) => {
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Input::Eof => stdin = None,
                Input::Resize(_) => {}
                Input::Closed => return,
            }
        }
    };
    let code = wait_or_kill(&mut proc, feed).await?;
    let _ = tokio::time::timeout(DRAIN, futures::future::join_all(pumps)).await;
    Ok(SessionExit { code, error: None })
}

async fn run_tty(
    driver: &dyn ContainerDriver,
    p: &Pending,
    size: TerminalSize,
    mut input: SplitStream<WebSocket>,
    out: mpsc::Sender<Vec<u8>>,
) -> Result<SessionExit, String> {
    let (master, slave) = pty::open(size).map_err(|e| format!("cannot allocate a pty: {e}"))?;
    let mut cmd = driver
        .exec_command(&p.container, &p.argv, &p.env, true)
        .map_err(|e| e.to_string())?;
    let stdio = |fd: &std::os::fd::OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("cannot share the pty: {e}"))
    };
    cmd.command_mut()
        .stdin(stdio(&slave)?)
        .stdout(stdio(&slave)?)
        .stderr(Stdio::from(slave));
    // The command is consumed by spawn, which closes our copies of the slave: the master
    // reads EOF once the session's processes are gone.
    let mut proc = cmd.spawn().map_err(|e| e.to_string())?;
    let relay_pid = proc.pid();
    // runc sizes the container's own terminal once it set it up; until then the command
    // sees 0x0. Typing waits for its first output (or a moment), then asks runc to size
    // it again, so the first `stty size` already sees the client's terminal.
    let winch = move || {
        if let Some(pid) = relay_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGWINCH,
            );
        }
    };
    let (spoke, mut has_spoken) = tokio::sync::watch::channel(false);
    let master = Arc::new(master);
    let reader = {
        let master = master.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match master.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        spoke.send_replace(true);
                        if out
                            .send(frame(exec_frames::STDOUT, &buf[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        })
    };
    let feed = async {
        let mut sized = false;
        loop {
            match next_input(&mut input).await {
                Input::Stdin(data) => {
                    if !sized {
                        let _ = tokio::time::timeout(
                            FIRST_OUTPUT_WAIT,
                            has_spoken.wait_for(|spoke| *spoke),
                        )
                        .await;
                        winch();
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        sized = true;
                    }
                    if master.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Input::Resize(size) => {
                    if master.resize(size).is_ok() {
                        winch();
                    }
                }
                Input::Eof => {}
                Input::Closed => return,
            }
        }
    };
    let code = wait_or_kill(&mut proc, feed).await?;
    let _ = tokio::time::timeout(DRAIN, reader).await;
    Ok(SessionExit { code, error: None })
}

/// The exit code of `proc`, or kills it when `feed` ends first (the client went away).
async fn wait_or_kill(
    proc: &mut ExecProcess,
    feed: impl std::future::Future<Output = ()>,
) -> Result<i32, String> {
    tokio::pin!(feed);
    let mut feeding = true;
    loop {
        tokio::select! {
            status = proc.wait() => return status.map_err(|e| e.to_string()),
            _ = &mut feed, if feeding => {
                feeding = false;
                proc.kill();
            }
        }
    }
}

fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 1);
    f.push(channel);
    f.extend_from_slice(data);
    f
}

/// Sends everything read from `pipe` as `channel` frames.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, channel: u8, out: mpsc::Sender<Vec<u8>>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_in_the_app_environment() {
        let argv = session_argv(&["echo".into(), "a b".into()]);
        assert_eq!(argv[0], "/bin/sh");
        assert!(argv[2].starts_with(&format!("cd {APP_HOME} && ")));
        assert!(argv[2].ends_with("exec \"$@\""));
        assert_eq!(&argv[3..], ["sh", "echo", "a b"]);
        assert!(session_argv(&[])[2].contains("exec bash"));
    }

    #[test]
    fn term_names_are_checked() {
        assert_eq!(sane_term(Some("xterm-256color")), "xterm-256color");
        assert_eq!(sane_term(Some("x; rm -rf /")), "xterm");
        assert_eq!(sane_term(None), "xterm");
    }
}
