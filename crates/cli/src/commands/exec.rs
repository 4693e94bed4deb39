//! `strato run`, `ssh`, `scp` and `files`: commands and files inside an app's instances.
//!
//! `run`, `ssh` and `scp` open a WebSocket on `GET /v2/apps/{guid}/instances/{index}/ssh`
//! (the API relays it to the DEA that runs the instance) and speak the frames of
//! [`strato_core::messages::exec_frames`]: stdin goes up, stdout/stderr come down, the
//! last frame carries the exit code, which becomes strato's own. `ssh` from a terminal
//! asks for a pty, puts the local terminal in raw mode (restored on exit) and forwards
//! window size changes. `scp` is `cat` on the far side with the file as stdin or stdout.
//! `files` reads `GET .../files/{path}`, which also works for a crashed instance while the
//! DEA keeps its files.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use strato_core::messages::{exec_frames, FilesReply, SessionExit, TerminalSize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{Ctx, Scope};
use crate::cli::{FilesArgs, RunArgs, ScpArgs, SshArgs};
use crate::error::usage;

type Socket = crate::api::WsStream;

/// What goes up to the instance.
enum Input {
    Stdin(Vec<u8>),
    Eof,
    Resize(TerminalSize),
}

/// `strato run APP CMD...`.
pub async fn run(ctx: &Ctx, args: RunArgs) -> Result<()> {
    let scope = ctx.scope()?;
    let guid = scope.require_app(&args.name).await?.metadata.guid;
    let code = if args.all {
        run_everywhere(&scope, &guid, &args.command).await?
    } else {
        run_once(&scope, &guid, args.instance, &args.command).await?
    };
    exit_with(code)
}

/// Runs `argv` on one instance, stdin passed through when it is not a terminal.
async fn run_once(scope: &Scope, guid: &str, index: u32, argv: &[String]) -> Result<i32> {
    let socket = open(scope, guid, index, argv, None).await?;
    let (tx, rx) = mpsc::channel(8);
    if std::io::stdin().is_terminal() {
        let _ = tx.send(Input::Eof).await;
    } else {
        forward_stdin(tx);
    }
    drive(socket, rx, write_out).await
}

/// Runs `argv` on every running instance at once, each output line prefixed with the
/// instance index; the exit code is the first non-zero one by index.
async fn run_everywhere(scope: &Scope, guid: &str, argv: &[String]) -> Result<i32> {
    let indices = running_indices(scope, guid).await?;
    if indices.is_empty() {
        bail!("no instance of the app is running; see `strato instances`");
    }
    let runs = indices.iter().map(|&index| async move {
        let socket = open(scope, guid, index, argv, None).await?;
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(Input::Eof).await;
        let mut lines = [Prefixer::new(index), Prefixer::new(index)];
        let code = drive(socket, rx, |channel, data| {
            let which = usize::from(channel == exec_frames::STDERR);
            let text = lines[which].push(data);
            write_out(channel, &text);
        })
        .await?;
        for (which, prefixer) in lines.iter_mut().enumerate() {
            let channel = if which == 0 {
                exec_frames::STDOUT
            } else {
                exec_frames::STDERR
            };
            write_out(channel, &prefixer.finish());
        }
        Ok::<i32, anyhow::Error>(code)
    });
    let codes = futures::future::join_all(runs).await;
    let mut result = 0;
    for (index, code) in indices.iter().zip(codes) {
        match code {
            Ok(0) => {}
            Ok(code) if result == 0 => result = code,
            Ok(_) => {}
            Err(e) => {
                eprintln!("[{index}] error: {e:#}");
                if result == 0 {
                    result = 1;
                }
            }
        }
    }
    Ok(result)
}

async fn running_indices(scope: &Scope, guid: &str) -> Result<Vec<u32>> {
    let instances: serde_json::Value = scope.api.get(&format!("/v2/apps/{guid}/instances")).await?;
    let mut indices: Vec<u32> = instances
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v["state"] == "RUNNING")
                .filter_map(|(k, _)| k.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    indices.sort_unstable();
    Ok(indices)
}

/// Splits output into lines and prefixes each with `[index] `.
struct Prefixer {
    prefix: String,
    partial: Vec<u8>,
}

impl Prefixer {
    fn new(index: u32) -> Self {
        Prefixer {
            prefix: format!("[{index}] "),
            partial: Vec::new(),
        }
    }

    /// The complete lines of what arrived so far, prefixed.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend(self.partial.drain(..=pos));
        }
        out
    }

    /// The last line when it had no newline.
    fn finish(&mut self) -> Vec<u8> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        let mut out = self.prefix.as_bytes().to_vec();
        out.append(&mut self.partial);
        out.push(b'\n');
        out
    }
}

/// `strato ssh APP [CMD...]`.
pub async fn ssh(ctx: &Ctx, args: SshArgs) -> Result<()> {
    if args.all {
        if args.command.is_empty() {
            return usage("ssh --all needs a command to run on every instance");
        }
        return run(
            ctx,
            RunArgs {
                name: args.name,
                instance: 0,
                all: true,
                command: args.command,
            },
        )
        .await;
    }
    let scope = ctx.scope()?;
    let guid = scope.require_app(&args.name).await?.metadata.guid;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !interactive {
        let code = run_once(&scope, &guid, args.instance, &args.command).await?;
        return exit_with(code);
    }
    let size = terminal_size().unwrap_or(TerminalSize { rows: 24, cols: 80 });
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string());
    let socket = open(
        &scope,
        &guid,
        args.instance,
        &args.command,
        Some((size, term)),
    )
    .await?;
    let (tx, rx) = mpsc::channel(8);
    forward_stdin(tx.clone());
    forward_resizes(tx);
    let raw = RawMode::enable().context("cannot put the terminal in raw mode")?;
    let code = drive(socket, rx, |_, data| write_out(exec_frames::STDOUT, data)).await;
    drop(raw);
    exit_with(code?)
}

/// `strato scp SRC DST`: one of them `APP:PATH` (relative to the app dir).
pub async fn scp(ctx: &Ctx, args: ScpArgs) -> Result<()> {
    match (remote_spec(&args.source), remote_spec(&args.destination)) {
        (None, Some((app, remote))) => {
            upload(ctx, &args, Path::new(&args.source), app, remote).await
        }
        (Some((app, remote)), None) => {
            download(ctx, &args, app, remote, Path::new(&args.destination)).await
        }
        (Some(_), Some(_)) => {
            usage("scp copies between here and an app: only one side may be APP:PATH")
        }
        (None, None) => {
            usage("scp needs APP:PATH on one side, e.g. `strato scp notes.txt web:notes.txt`")
        }
    }
}

/// `APP:PATH` as (app, path); a local path (one with `/` before any `:`) is `None`.
fn remote_spec(spec: &str) -> Option<(&str, &str)> {
    let (app, path) = spec.split_once(':')?;
    (!app.is_empty() && !app.contains('/')).then_some((app, path))
}

async fn upload(ctx: &Ctx, args: &ScpArgs, local: &Path, app: &str, remote: &str) -> Result<()> {
    let mut file =
        std::fs::File::open(local).with_context(|| format!("cannot read {}", local.display()))?;
    if file.metadata()?.is_dir() {
        bail!("{} is a directory; scp copies files", local.display());
    }
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let remote = if remote.is_empty() { "." } else { remote };
    let script = r#"f="$1"; if [ -d "$f" ]; then f="$f/$2"; fi; cat > "$f""#;
    let argv: Vec<String> = ["sh", "-c", script, "sh", remote, &name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let scope = ctx.scope()?;
    let guid = scope.require_app(app).await?.metadata.guid;
    let socket = open(&scope, &guid, args.instance, &argv, None).await?;
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || pump_reader(&mut file, &tx));
    let code = drive(socket, rx, |channel, data| {
        if channel == exec_frames::STDERR {
            write_out(channel, data)
        }
    })
    .await?;
    if code != 0 {
        bail!("copying to {app}:{remote} failed (exit status {code})");
    }
    Ok(())
}

async fn download(ctx: &Ctx, args: &ScpArgs, app: &str, remote: &str, local: &Path) -> Result<()> {
    if remote.is_empty() {
        return usage("name the file to copy: APP:PATH");
    }
    let target: PathBuf = if local.is_dir() {
        let name = Path::new(remote)
            .file_name()
            .ok_or_else(|| anyhow!("'{remote}' names no file"))?;
        local.join(name)
    } else {
        local.to_path_buf()
    };
    let argv: Vec<String> = vec!["cat".into(), "--".into(), remote.into()];
    let scope = ctx.scope()?;
    let guid = scope.require_app(app).await?.metadata.guid;
    let socket = open(&scope, &guid, args.instance, &argv, None).await?;
    let mut file = std::fs::File::create(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(Input::Eof).await;
    let mut write_error = None;
    let code = drive(socket, rx, |channel, data| {
        if channel == exec_frames::STDOUT {
            if let Err(e) = file.write_all(data) {
                write_error.get_or_insert(e);
            }
        } else {
            write_out(channel, data)
        }
    })
    .await;
    let failure = match (code, write_error) {
        (Err(e), _) => Some(e),
        (Ok(_), Some(e)) => Some(anyhow!("cannot write {}: {e}", target.display())),
        (Ok(0), None) => None,
        (Ok(code), None) => Some(anyhow!(
            "copying {app}:{remote} failed (exit status {code})"
        )),
    };
    if let Some(e) = failure {
        drop(file);
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(())
}

/// `strato files APP [PATH]`.
pub async fn files(ctx: &Ctx, args: FilesArgs) -> Result<()> {
    let path = args.path.as_deref().unwrap_or("");
    if path.split('/').any(|part| part == "..") {
        return usage(format!(
            "'{path}': paths are relative to the app dir and may not contain '..'"
        ));
    }
    let scope = ctx.scope()?;
    let guid = scope.require_app(&args.name).await?.metadata.guid;
    let mut url = reqwest::Url::parse(&scope.api.url(&format!(
        "/v2/apps/{guid}/instances/{}/files",
        args.instance
    )))?;
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.extend(path.split('/').filter(|s| !s.is_empty()));
    }
    url.query_pairs_mut().append_pair("json", "1");
    let reply: FilesReply = scope.api.get(url.as_str()).await?;
    if ctx.out.json {
        return ctx.out.print_json(&reply);
    }
    let mut stdout = std::io::stdout();
    if let Some(content) = &reply.content {
        stdout.write_all(content.as_bytes())?;
        if reply.truncated {
            eprintln!("(cut: the file is larger than the DEA returns; copy it with `strato scp`)");
        }
    }
    for e in reply.entries.iter().flatten() {
        if e.kind == "dir" {
            writeln!(stdout, "{:<40} -", format!("{}/", e.name))?;
        } else {
            writeln!(stdout, "{:<40} {}", e.name, crate::output::bytes(e.size))?;
        }
    }
    Ok(())
}

// ---- the session client -----------------------------------------------------------------

/// Opens the session WebSocket for `argv` (none = a shell) on instance `index`.
async fn open(
    scope: &Scope,
    guid: &str,
    index: u32,
    argv: &[String],
    tty: Option<(TerminalSize, String)>,
) -> Result<Socket> {
    let mut url = reqwest::Url::parse(
        &scope
            .api
            .url(&format!("/v2/apps/{guid}/instances/{index}/ssh")),
    )?;
    {
        let mut query = url.query_pairs_mut();
        for arg in argv {
            query.append_pair("argv", arg);
        }
        if let Some((size, term)) = &tty {
            query
                .append_pair("tty", "1")
                .append_pair("rows", &size.rows.to_string())
                .append_pair("cols", &size.cols.to_string())
                .append_pair("term", term);
        }
    }
    let request = scope.api.websocket_request(url.as_str())?;
    match scope.api.websocket_connect(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let described = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["description"].as_str().map(str::to_string));
            Err(anyhow!(
                "{}",
                described.unwrap_or_else(|| format!(
                    "the API refused the session: HTTP {}",
                    response.status()
                ))
            ))
        }
        Err(e) => Err(anyhow!("cannot open a session on {}: {e}", scope.target)),
    }
}

/// Sends `input` up and hands every output frame to `output` (channel, bytes) until the
/// exit frame; returns the exit code.
async fn drive(
    socket: Socket,
    mut input: mpsc::Receiver<Input>,
    mut output: impl FnMut(u8, &[u8]),
) -> Result<i32> {
    let (mut up, mut down) = socket.split();
    let mut input_open = true;
    loop {
        tokio::select! {
            msg = down.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Close(_))) | None => {
                        bail!("the session ended without an exit status (the instance or its DEA went away)")
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("the session broke off: {e}"),
                };
                match data.split_first() {
                    Some((&exec_frames::EXIT, rest)) => {
                        let exit: SessionExit = serde_json::from_slice(rest)
                            .context("unreadable exit status from the instance")?;
                        if let Some(error) = exit.error {
                            bail!("{error}");
                        }
                        let _ = up.close().await;
                        return Ok(exit.code);
                    }
                    Some((&channel, rest)) => output(channel, rest),
                    None => {}
                }
            }
            next = input.recv(), if input_open => {
                let frame = match next {
                    Some(Input::Stdin(data)) => frame(exec_frames::STDIN, &data),
                    Some(Input::Eof) => frame(exec_frames::STDIN_EOF, &[]),
                    Some(Input::Resize(size)) => frame(exec_frames::RESIZE, &serde_json::to_vec(&size)?),
                    None => {
                        input_open = false;
                        continue;
                    }
                };
                up.send(Message::Binary(frame)).await.context("the session broke off")?;
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

fn write_out(channel: u8, data: &[u8]) {
    if channel == exec_frames::STDERR {
        let mut err = std::io::stderr();
        let _ = err.write_all(data);
        let _ = err.flush();
    } else {
        let mut out = std::io::stdout();
        let _ = out.write_all(data);
        let _ = out.flush();
    }
}

/// Reads stdin on a thread of its own (a blocking read must not hold the runtime).
fn forward_stdin(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || pump_reader(&mut std::io::stdin().lock(), &tx));
}

fn pump_reader(reader: &mut impl Read, tx: &mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.blocking_send(Input::Stdin(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.blocking_send(Input::Eof);
}

/// Sends the terminal's new size on every SIGWINCH.
fn forward_resizes(tx: mpsc::Sender<Input>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(size) = terminal_size() {
                if tx.send(Input::Resize(size)).await.is_err() {
                    return;
                }
            }
        }
    });
}

fn terminal_size() -> Option<TerminalSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` to a valid pointer.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(TerminalSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The local terminal in raw mode (keys go to the remote shell as typed) until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enable() -> Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Ends strato with the remote command's exit code.
fn exit_with(code: i32) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(if (0..=255).contains(&code) { code } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs_are_told_from_local_paths() {
        assert_eq!(remote_spec("web:a/b.txt"), Some(("web", "a/b.txt")));
        assert_eq!(remote_spec("web:"), Some(("web", "")));
        assert_eq!(remote_spec("./dir/x:y"), None);
        assert_eq!(remote_spec("notes.txt"), None);
        assert_eq!(remote_spec(":x"), None);
    }

    #[test]
    fn lines_get_their_instance_prefix() {
        let mut p = Prefixer::new(2);
        assert_eq!(p.push(b"a\nb"), b"[2] a\n");
        assert_eq!(p.push(b"c\n"), b"[2] bc\n");
        assert_eq!(p.push(b"tail"), b"");
        assert_eq!(p.finish(), b"[2] tail\n");
        assert!(p.finish().is_empty());
    }
}
