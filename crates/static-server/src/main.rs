//! `strato-static`: the small static file server the static buildpack copies into droplets.
//!
//! It must run on the read-only host stack inside an app container with nothing but the
//! binary itself, so it uses only `std`: one thread per connection, HTTP/1.1 `GET`/`HEAD`
//! with keep-alive, `Content-Type` by extension, `index.html` for directories, 404s, and
//! no way out of the served directory. It listens on `0.0.0.0:$PORT` (default 8080) and
//! serves the directory named by its first argument, or the current directory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest request head accepted; anything longer is answered with 431 and closed.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let root = match root.canonicalize() {
        Ok(r) if r.is_dir() => r,
        _ => {
            eprintln!(
                "strato-static: '{}' is not a directory; pass the directory to serve as the first argument",
                root.display()
            );
            std::process::exit(2);
        }
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "strato-static: cannot listen on 0.0.0.0:{port}: {e}; set PORT to a free port"
            );
            std::process::exit(1);
        }
    };
    println!(
        "strato-static: serving {} on 0.0.0.0:{port}",
        root.display()
    );
    serve(listener, Arc::new(root));
}

/// Accepts connections forever, one thread each.
fn serve(listener: TcpListener, root: Arc<PathBuf>) {
    for stream in listener.incoming().flatten() {
        let root = Arc::clone(&root);
        std::thread::spawn(move || {
            let _ = handle_connection(stream, &root);
        });
    }
}

/// A parsed request line plus the headers we care about.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
}

/// Serves requests on one connection until the client closes or asks to close.
fn handle_connection(stream: TcpStream, root: &Path) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                write_simple(&mut writer, 400, "Bad Request", false, true)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        respond(&mut writer, root, &request)?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

/// Reads one request head; `None` when the client closed the connection cleanly.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_HEAD_BYTES as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(bad("truncated request"))
            };
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // tolerate stray CRLF between requests (RFC 9112 §2.2)
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD_BYTES {
            return Err(bad("request head too large"));
        }
        if end {
            break;
        }
    }
    parse_head(&String::from_utf8_lossy(&head)).map(Some)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Parses the request line and the `Connection` header.
fn parse_head(head: &str) -> io::Result<Request> {
    let mut lines = head.lines();
    let request_line = lines.next().ok_or_else(|| bad("empty request"))?;
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m, t, v),
        _ => return Err(bad("malformed request line")),
    };
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                let value = value.trim().to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
    })
}

/// Answers one request.
fn respond(w: &mut impl Write, root: &Path, req: &Request) -> io::Result<()> {
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return write_simple(
                w,
                405,
                "Method Not Allowed",
                head_only_of(req),
                req.keep_alive,
            )
        }
    };
    let Some(path) = resolve(root, &req.target) else {
        return write_simple(w, 404, "Not Found", head_only, req.keep_alive);
    };
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(_) => return write_simple(w, 404, "Not Found", head_only, req.keep_alive),
    };
    let len = file.metadata()?.len();
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nConnection: {}\r\n\r\n",
        content_type(&path),
        connection_value(req.keep_alive)
    );
    w.write_all(header.as_bytes())?;
    if !head_only {
        io::copy(&mut file, w)?;
    }
    w.flush()
}

fn head_only_of(req: &Request) -> bool {
    req.method == "HEAD"
}

fn connection_value(keep_alive: bool) -> &'static str {
    if keep_alive {
        "keep-alive"
    } else {
        "close"
    }
}

/// Writes a small text response such as a 404.
fn write_simple(
    w: &mut impl Write,
    status: u16,
    reason: &str,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let body = format!("{status} {reason}\n");
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        connection_value(keep_alive)
    );
    w.write_all(header.as_bytes())?;
    if !head_only {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

/// Maps a request target to a file under `root`, or `None` when it does not exist or
/// would leave `root` (`..`, or a symlink pointing outside).
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path_part = target.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path_part)?;
    let mut path = root.to_path_buf();
    for component in Path::new(&decoded).components() {
        match component {
            Component::Normal(c) => path.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    let mut real = path.canonicalize().ok()?;
    if !real.starts_with(root) {
        return None;
    }
    if real.is_dir() {
        real = real.join("index.html").canonicalize().ok()?;
        if !real.starts_with(root) {
            return None;
        }
    }
    real.is_file().then_some(real)
}

/// Decodes `%XX` escapes; `None` on malformed escapes, NUL bytes or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` for a file, by extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn site() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/index.html"), "sub page").unwrap();
        std::fs::write(dir.path().join("style.css"), "body{}").unwrap();
        dir
    }

    fn start(root: &Path) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let root = Arc::new(root.canonicalize().unwrap());
        std::thread::spawn(move || serve(listener, root));
        addr
    }

    fn get(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_index_for_root_and_subdirectories() {
        let dir = site();
        let addr = start(dir.path());
        let root = get(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(root.starts_with("HTTP/1.1 200"), "{root}");
        assert!(root.contains("Content-Type: text/html"), "{root}");
        assert!(root.ends_with("<h1>home</h1>"), "{root}");
        let sub = get(addr, "GET /sub/ HTTP/1.0\r\n\r\n");
        assert!(sub.ends_with("sub page"), "{sub}");
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let dir = site();
        let addr = start(dir.path());
        let out = get(
            addr,
            "GET /style.css HTTP/1.1\r\nHost: x\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(out.contains("Content-Type: text/css"), "{out}");
        assert!(out.contains("Content-Length: 13"), "{out}");
        assert!(!out.contains("<h1>"), "HEAD must not send a body: {out}");
    }

    #[test]
    fn missing_files_and_traversal_are_404() {
        let dir = site();
        let inner = dir.path().join("www");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("index.html"), "inner").unwrap();
        std::os::unix::fs::symlink(dir.path().join("style.css"), inner.join("escape.css")).unwrap();
        let addr = start(&inner);
        for target in [
            "/nope.html",
            "/../style.css",
            "/%2e%2e/style.css",
            "/escape.css",
            "/%zz",
        ] {
            let out = get(addr, &format!("GET {target} HTTP/1.0\r\n\r\n"));
            assert!(out.starts_with("HTTP/1.1 404"), "{target}: {out}");
        }
    }

    #[test]
    fn other_methods_are_refused_and_garbage_is_400() {
        let dir = site();
        let addr = start(dir.path());
        assert!(get(addr, "POST / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, "nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type(Path::new("a/B.PNG")), "image/png");
        assert_eq!(
            content_type(Path::new("x.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
