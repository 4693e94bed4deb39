//! The fast path for the common request: a plain HTTP/1.1 request without a body (`GET`,
//! `HEAD`, `DELETE`, ...) is forwarded byte for byte, without hyper.
//!
//! The request head is parsed in place with `httparse`, the backend's copy is written into
//! one buffer (hop-by-hop headers dropped, the forwarding headers added, exactly as
//! [`crate::proxy`] does), sent over one of the worker's raw keep-alive connections, and
//! the response head and as much of the body as has arrived go back to the client in one
//! write. That keeps the router at four system calls per request with very little work in
//! between, where a general HTTP stack spends most of its time in allocation, header maps
//! and task hand-offs.
//!
//! Plain HTTP and HTTPS connections that chose HTTP/1.1 go through the relay alike
//! ([`ClientIo`]). Anything else — a request with a body, an upgrade, HTTP/1.0 or HTTP/2,
//! a request hyper should answer with an error page (no Host, unknown route, malformed) —
//! is handed to hyper with the bytes already read ([`Relayed::Handoff`]), and hyper serves
//! that connection from then on. So the relay never has to be a complete HTTP server; it only
//! has to frame responses correctly (length, chunked, until close, none).
//!
//! Buffers are borrowed from the worker for one exchange and given back, so an idle
//! keep-alive connection holds no buffer at all.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::pages::Unanswered;
use crate::proxy::{epoch_ms, Peer, Proxy};
use crate::request_id;
use crate::sticky::Session;
use crate::table::{Backend, Pool, Tried};

/// Headers a request or response may have; one with more goes to hyper (requests) or
/// fails (responses).
const MAX_HEADERS: usize = 100;
/// A client's read buffer starts this large and grows up to the header limit.
const CLIENT_BUFFER: usize = 4096;
/// Reads from backends go into a buffer this large.
const BACKEND_BUFFER: usize = 32 * 1024;
/// How long closing a client connection properly may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Buffer sets a worker keeps for the next exchanges.
const SPARE_BUFFERS: usize = 128;

/// What the relay did with a client connection.
pub(crate) enum Relayed<C> {
    /// The connection is finished: closed by either side, timed out, or the router stops.
    Closed,
    /// A request the relay does not forward itself: hyper serves the connection from here
    /// on, starting with the bytes already read.
    Handoff(Rewind<C>),
}

/// A client connection the relay can serve: plain TCP or TLS over it.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Completes once reading may give bytes (or end-of-file), so an idle keep-alive
    /// connection can wait without holding a buffer.
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl ClientIo for TcpStream {
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    async fn readable(&self) -> io::Result<()> {
        let (tcp, tls) = self.get_ref();
        // rustls may hold decrypted bytes already (it does not want more TLS records
        // then): those are readable now, whatever the socket says.
        if !tls.wants_read() {
            return Ok(());
        }
        tcp.readable().await
    }
}

/// The buffers of one exchange.
#[derive(Default)]
pub(crate) struct Buffers {
    /// Bytes from the client not yet consumed (a request head, pipelined requests).
    client: Vec<u8>,
    /// Bytes from the backend.
    backend: Vec<u8>,
    /// What is written next: the backend's request, then the client's response head.
    out: Vec<u8>,
}

/// One worker's spare [`Buffers`]; only that worker's thread ever takes the lock.
#[derive(Default)]
pub(crate) struct BufferPool(Mutex<Vec<Buffers>>);

impl BufferPool {
    fn take(&self) -> Buffers {
        let spare = self.0.lock().ok().and_then(|mut spare| spare.pop());
        spare.unwrap_or_else(|| Buffers {
            client: Vec::with_capacity(CLIENT_BUFFER),
            backend: Vec::with_capacity(BACKEND_BUFFER),
            out: Vec::with_capacity(1024),
        })
    }

    fn give_back(&self, mut buffers: Buffers) {
        // A buffer that grew for one huge head is not kept.
        if buffers.client.capacity() > 4 * CLIENT_BUFFER
            || buffers.backend.capacity() > BACKEND_BUFFER
            || buffers.out.capacity() > 16 * 1024
        {
            return;
        }
        buffers.client.clear();
        buffers.backend.clear();
        buffers.out.clear();
        if let Ok(mut spare) = self.0.lock() {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buffers);
            }
        }
    }
}

/// The relay of one worker: what every client connection it serves shares.
pub(crate) struct Relay {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) buffers: BufferPool,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) stop: CancellationToken,
}

impl Relay {
    /// Serves `client` until it closes or needs hyper.
    pub(crate) async fn serve<C: ClientIo>(&self, mut client: C, peer: &Peer) -> Relayed<C> {
        match self.serve_until_handoff(&mut client, peer).await {
            Ok(prefix) => Relayed::Handoff(Rewind::new(client, prefix)),
            Err(After::Close) => {
                // Closed properly: over TLS that is a close_notify, without which clients
                // reading to the end see an error.
                let _ = tokio::time::timeout(CLOSE_GRACE, client.shutdown()).await;
                Relayed::Closed
            }
            // A response broke off: no close_notify, so a TLS client sees the truncation.
            Err(After::KeepOpen | After::Abort) => Relayed::Closed,
        }
    }

    /// Serves requests on `client` until a request needs hyper (`Ok`: the bytes read so
    /// far) or the connection must end (`Err`: how).
    async fn serve_until_handoff<C: ClientIo>(
        &self,
        client: &mut C,
        peer: &Peer,
    ) -> Result<Bytes, After> {
        let timer = tokio::time::sleep(self.header_read_timeout);
        tokio::pin!(timer);
        let mut held: Option<Buffers> = None;
        loop {
            if self.stop.is_cancelled() {
                return Err(After::Close);
            }
            timer
                .as_mut()
                .reset(Instant::now() + self.header_read_timeout);
            let mut buffers = match held.take() {
                Some(buffers) => buffers,
                None => match self.wait_for_request(client, timer.as_mut()).await {
                    true => self.buffers.take(),
                    false => return Err(After::Close),
                },
            };
            let prepared = match self
                .read_head(client, &mut buffers, peer, timer.as_mut())
                .await
            {
                Ok(prepared) => prepared,
                Err(Ended) => {
                    self.buffers.give_back(buffers);
                    return Err(After::Close);
                }
            };
            let Some(request) = prepared else {
                let prefix = Bytes::copy_from_slice(&buffers.client);
                self.buffers.give_back(buffers);
                return Ok(prefix);
            };
            buffers.client.drain(..request.head_len);
            let after = self
                .exchange(client, &mut buffers, &request, timer.as_mut())
                .await;
            if after != After::KeepOpen {
                self.buffers.give_back(buffers);
                return Err(after);
            }
            if buffers.client.is_empty() {
                self.buffers.give_back(buffers);
            } else {
                // A pipelined request is already here.
                held = Some(buffers);
            }
        }
    }

    /// Waits, without holding a buffer, until the client sends something; false when the
    /// connection should close instead (timeout, shutdown).
    async fn wait_for_request<C: ClientIo>(&self, client: &C, timer: Pin<&mut Sleep>) -> bool {
        tokio::select! {
            biased;
            ready = client.readable() => ready.is_ok(),
            () = timer => false,
            () = self.stop.cancelled() => false,
        }
    }

    /// Reads until the buffer holds a whole request head, and prepares the backend's copy
    /// in `out`. `Ok(None)`: a request for hyper.
    async fn read_head<C: ClientIo>(
        &self,
        client: &mut C,
        buffers: &mut Buffers,
        peer: &Peer,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<Option<Request>, Ended> {
        loop {
            if !buffers.client.is_empty() {
                match self.prepare(&buffers.client, &mut buffers.out, peer) {
                    Prepared::Forward(request) => return Ok(Some(request)),
                    Prepared::Handoff => return Ok(None),
                    Prepared::Partial if buffers.client.len() >= self.max_header_bytes => {
                        // hyper answers 431.
                        return Ok(None);
                    }
                    Prepared::Partial => {}
                }
            }
            if buffers.client.capacity() == buffers.client.len() {
                buffers.client.reserve(CLIENT_BUFFER);
            }
            let read = tokio::select! {
                biased;
                read = client.read_buf(&mut buffers.client) => read,
                () = timer.as_mut() => return Err(Ended),
                () = self.stop.cancelled() => return Err(Ended),
            };
            match read {
                Ok(0) | Err(_) => return Err(Ended),
                Ok(_) => {}
            }
        }
    }

    /// Parses the request head at the start of `buf` and, when the relay forwards it
    /// itself, writes the backend's request into `out`.
    fn prepare(&self, buf: &[u8], out: &mut Vec<u8>, peer: &Peer) -> Prepared {
        // Left uninitialized: httparse fills what it uses (saves copying 3 KiB each time).
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let head_len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Prepared::Partial,
            Err(_) => return Prepared::Handoff,
        };
        let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version)
        else {
            return Prepared::Handoff;
        };
        let Some(mut facts) = RequestFacts::of(parsed.headers) else {
            return Prepared::Handoff;
        };
        // Absolute-form and `*` targets, CONNECT: rare, and hyper knows them.
        if !target.starts_with('/') || method == "CONNECT" {
            return Prepared::Handoff;
        }
        let Ok(raw_host) = std::str::from_utf8(facts.host) else {
            return Prepared::Handoff;
        };
        let host = crate::host::normalize(raw_host);
        let Some((pool, to_api)) = self.proxy.route(&host) else {
            return Prepared::Handoff;
        };
        let now_ms = epoch_ms();
        out.clear();
        write_request(out, method, target, parsed.headers, &facts, peer, now_ms);
        if let (true, Some(proof)) = (to_api, &self.proxy.api_proof) {
            header(out, b"x-strato-router", proof.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        Prepared::Forward(Request {
            head_len,
            pool,
            now_ms,
            close: facts.close,
            head: method == "HEAD",
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            session: std::mem::take(&mut facts.session),
        })
    }

    /// Sends the prepared request to a backend and its response to the client, and says
    /// what becomes of the client connection.
    async fn exchange<C: ClientIo>(
        &self,
        client: &mut C,
        buffers: &mut Buffers,
        request: &Request,
        mut timer: Pin<&mut Sleep>,
    ) -> After {
        let answered = match self.send(client, buffers, request, timer.as_mut()).await {
            Ok((key, mut stream, backend)) => {
                let responded = self
                    .respond(client, &mut stream, buffers, request, &backend, timer)
                    .await;
                if let Ok(Finished {
                    backend_reusable: true,
                    ..
                }) = responded
                {
                    self.proxy.upstream.give_back_stream(key, stream);
                }
                responded
            }
            Err(failed) => Err(failed),
        };
        match answered {
            Ok(Finished {
                client_open: true, ..
            }) => After::KeepOpen,
            Ok(Finished { .. }) => After::Close,
            // Nothing of a final response was sent: the client gets a 502 or 504 instead.
            Err(failed @ (Failed::Backend | Failed::TimedOut)) => {
                let page = match failed {
                    Failed::TimedOut => Unanswered::TimedOut(self.proxy.response_timeout),
                    _ => Unanswered::Failed,
                };
                buffers.out.clear();
                let close = request.close || self.stop.is_cancelled();
                let date = http_date(request.now_ms);
                page.write_http1(&mut buffers.out, &date, close, request.head);
                match send_to(client, &buffers.out).await {
                    Err(_) => After::Abort,
                    Ok(()) if close => After::Close,
                    Ok(()) => After::KeepOpen,
                }
            }
            Err(Failed::Client) => After::Abort,
        }
    }

    /// Writes the request to one backend after another until one takes it and the first
    /// bytes of its answer arrive (left in `buffers.backend`). Retries as
    /// [`crate::proxy::Proxy`] does: another instance only when a connection cannot be
    /// made; a pooled connection that turns out closed is replaced, and a request it
    /// swallowed without a word is sent again (once, on a new connection) only when it is
    /// idempotent. A new connection that takes the request and fails is a 502: the app got
    /// it, and another instance must not get it too.
    async fn send<C: ClientIo>(
        &self,
        client: &mut C,
        buffers: &mut Buffers,
        request: &Request,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<(Arc<str>, TcpStream, Arc<Backend>), Failed> {
        let pool: &Pool = &request.pool;
        let attempts = self.proxy.max_attempts.clamp(1, pool.len().max(1));
        let mut tried = Tried::default();
        for _ in 0..attempts {
            let Some((index, backend)) =
                pool.pick_for(request.session.instance(), tried, request.now_ms)
            else {
                break;
            };
            tried.add(index);
            let mut pooled = true;
            loop {
                let (key, mut stream, reused) = match self
                    .proxy
                    .upstream
                    .checkout_stream(backend, pooled)
                    .await
                {
                    Ok(checkout) => checkout,
                    Err(error) => {
                        backend.eject_until(request.now_ms + self.proxy.eject_ms);
                        tracing::warn!(backend = %backend.addr, %error, "cannot connect to the backend; trying another instance");
                        break;
                    }
                };
                buffers.backend.clear();
                // The app's time to answer runs from here to its response head.
                timer
                    .as_mut()
                    .reset(Instant::now() + self.proxy.response_timeout);
                if let Err(error) = stream.write_all(&buffers.out).await {
                    // Not delivered: a pooled connection the backend had closed.
                    if reused {
                        continue;
                    }
                    backend.eject_until(request.now_ms + self.proxy.eject_ms);
                    tracing::warn!(backend = %backend.addr, %error, "new backend connection closed at once; trying another instance");
                    break;
                }
                let read = self
                    .read_backend(
                        &mut stream,
                        &mut buffers.backend,
                        client,
                        &mut buffers.client,
                        Some(timer.as_mut()),
                    )
                    .await;
                match read {
                    BackendRead::Data(n) if n > 0 => return Ok((key, stream, backend.clone())),
                    BackendRead::ClientGone => return Err(Failed::Client),
                    BackendRead::TimedOut => {
                        self.proxy.log_timeout(backend);
                        return Err(Failed::TimedOut);
                    }
                    BackendRead::Data(_) | BackendRead::Failed if reused && request.idempotent => {
                        pooled = false;
                    }
                    BackendRead::Data(_) | BackendRead::Failed => {
                        tracing::warn!(backend = %backend.addr, "backend failed to answer the request");
                        return Err(Failed::Backend);
                    }
                }
            }
        }
        Err(Failed::Backend)
    }

    /// Reads from a backend while watching the client: bytes it sends meanwhile (a
    /// pipelined request) are kept for later, and its going away ends the wait, as with
    /// hyper, so a hung app does not hold connections of clients long gone. With a
    /// `deadline`, waits at most until it.
    async fn read_backend<C: ClientIo>(
        &self,
        stream: &mut TcpStream,
        into: &mut Vec<u8>,
        client: &mut C,
        client_buf: &mut Vec<u8>,
        mut deadline: Option<Pin<&mut Sleep>>,
    ) -> BackendRead {
        loop {
            let watch = client_buf.len() < self.max_header_bytes;
            let timed = deadline.is_some();
            tokio::select! {
                biased;
                read = stream.read_buf(into) => {
                    return read.map_or(BackendRead::Failed, BackendRead::Data);
                }
                () = expiry(deadline.as_mut()), if timed => return BackendRead::TimedOut,
                read = client.read_buf(client_buf), if watch => match read {
                    Ok(n) if n > 0 => {}
                    _ => return BackendRead::ClientGone,
                },
            }
        }
    }

    /// Reads the backend's response (its first bytes already in `buffers.backend`) and
    /// passes it to the client.
    async fn respond<C: ClientIo>(
        &self,
        client: &mut C,
        stream: &mut TcpStream,
        buffers: &mut Buffers,
        request: &Request,
        backend: &Backend,
        mut timer: Pin<&mut Sleep>,
    ) -> Result<Finished, Failed> {
        buffers.out.clear();
        // Informational answers (103 Early Hints, ...) go on to the client; then the final one.
        let (head_len, response) = loop {
            match parse_response(
                &buffers.backend,
                request,
                &backend.instance,
                &mut buffers.out,
            ) {
                ResponseHead::Final(head_len, response) => break (head_len, response),
                ResponseHead::Informational(head_len) => {
                    send_to(client, &buffers.out)
                        .await
                        .map_err(|_| Failed::Client)?;
                    buffers.out.clear();
                    buffers.backend.drain(..head_len);
                    continue;
                }
                ResponseHead::Invalid => {
                    tracing::warn!("backend answered with a malformed response head");
                    buffers.out.clear();
                    return Err(Failed::Backend);
                }
                ResponseHead::Partial if buffers.backend.len() >= self.max_header_bytes => {
                    tracing::warn!("backend's response head is larger than the header limit");
                    buffers.out.clear();
                    return Err(Failed::Backend);
                }
                ResponseHead::Partial => {}
            }
            buffers.out.clear();
            if buffers.backend.capacity() == buffers.backend.len() {
                buffers.backend.reserve(BACKEND_BUFFER);
            }
            let read = self
                .read_backend(
                    stream,
                    &mut buffers.backend,
                    client,
                    &mut buffers.client,
                    Some(timer.as_mut()),
                )
                .await;
            match read {
                BackendRead::Data(n) if n > 0 => {}
                BackendRead::ClientGone => return Err(Failed::Client),
                BackendRead::TimedOut => {
                    self.proxy.log_timeout(backend);
                    return Err(Failed::TimedOut);
                }
                BackendRead::Data(_) | BackendRead::Failed => return Err(Failed::Backend),
            }
        };
        if !response.dated {
            header(&mut buffers.out, b"date", &http_date(request.now_ms));
        }
        let client_open =
            !request.close && response.framing != Framing::UntilClose && !self.stop.is_cancelled();
        if !client_open {
            buffers.out.extend_from_slice(b"connection: close\r\n");
        }
        buffers.out.extend_from_slice(b"\r\n");
        let mut body = BodyEnd::new(response.framing);
        let arrived = &buffers.backend[head_len..];
        let taken = body.feed(arrived).map_err(|()| Failed::Backend)?;
        let mut backend_reusable = response.reusable && taken == arrived.len();
        buffers.out.extend_from_slice(&arrived[..taken]);
        send_to(client, &buffers.out)
            .await
            .map_err(|_| Failed::Client)?;
        while !body.done() {
            buffers.backend.clear();
            let read = self
                .read_backend(
                    stream,
                    &mut buffers.backend,
                    client,
                    &mut buffers.client,
                    None,
                )
                .await;
            let BackendRead::Data(n) = read else {
                return Err(Failed::Client);
            };
            if n == 0 {
                if body.framing == Framing::UntilClose {
                    break;
                }
                // A truncated body: the client learns by the connection closing.
                return Err(Failed::Client);
            }
            let taken = body.feed(&buffers.backend).map_err(|()| Failed::Client)?;
            backend_reusable &= taken == buffers.backend.len();
            send_to(client, &buffers.backend[..taken])
                .await
                .map_err(|_| Failed::Client)?;
        }
        Ok(Finished {
            backend_reusable: backend_reusable && body.framing != Framing::UntilClose,
            client_open,
        })
    }
}

/// The connection ended (closed, timed out) while a request head was read.
struct Ended;

/// Ends when `deadline` passes; never without one.
async fn expiry(deadline: Option<&mut Pin<&mut Sleep>>) {
    match deadline {
        Some(deadline) => deadline.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What becomes of a client connection after an exchange.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum After {
    /// Ready for the next request.
    KeepOpen,
    /// Done in good order: shut down (over TLS, with a close_notify).
    Close,
    /// Broken off (client gone, response truncated): dropped without a close_notify, so a
    /// TLS client cannot mistake a truncated body for a whole one.
    Abort,
}

/// Writes `bytes` to the client and flushes them: over TLS, a write can leave its tail in
/// the session's buffer, and the client must not wait on it until the next response.
async fn send_to<C: ClientIo>(client: &mut C, bytes: &[u8]) -> io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// What came of waiting for a backend's bytes.
enum BackendRead {
    /// Bytes read; 0 when the backend closed the connection.
    Data(usize),
    Failed,
    ClientGone,
    /// The deadline passed first.
    TimedOut,
}

/// What went wrong in an exchange.
enum Failed {
    /// The backend failed before the response head was complete.
    Backend,
    /// The client went away, or the response broke off after it had begun.
    Client,
    /// The backend took the request and did not begin its response in time.
    TimedOut,
}

/// How an exchange ended.
struct Finished {
    backend_reusable: bool,
    client_open: bool,
}

/// What [`Relay::prepare`] made of the buffer.
enum Prepared {
    Forward(Request),
    Partial,
    Handoff,
}

/// A request the relay forwards, its backend copy being in `out`.
struct Request {
    head_len: usize,
    pool: Arc<Pool>,
    now_ms: u64,
    /// The client asked to close the connection after this exchange.
    close: bool,
    /// A `HEAD` request: the response has no body whatever its headers say.
    head: bool,
    /// Safe to send again on a fresh connection when a pooled one turned out closed.
    idempotent: bool,
    /// The sticky session the request's cookies carry.
    session: Session,
}

/// What the relay must know of a request's headers before forwarding it.
struct RequestFacts<'b> {
    host: &'b [u8],
    close: bool,
    /// Headers named in `Connection`, dropped like the other hop-by-hop ones.
    named: Vec<&'b [u8]>,
    forwarded_proto: bool,
    forwarded_host: bool,
    request_start: bool,
    request_id: bool,
    /// The sticky session the cookies carry.
    session: Session,
}

impl<'b> RequestFacts<'b> {
    /// `None` for requests hyper should serve: a body, an upgrade, `Expect`, no single Host.
    fn of(headers: &'b [httparse::Header<'b>]) -> Option<RequestFacts<'b>> {
        let mut facts = RequestFacts {
            host: b"",
            close: false,
            named: Vec::new(),
            forwarded_proto: false,
            forwarded_host: false,
            request_start: false,
            request_id: false,
            session: Session::default(),
        };
        for h in headers {
            if !h.name.eq_ignore_ascii_case("connection") {
                continue;
            }
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    facts.close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                } else if !token.is_empty() {
                    facts.named.push(token);
                }
            }
        }
        let mut hosts = 0;
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
                facts.host = h.value;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                if h.value.trim_ascii() != b"0" {
                    return None;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
            {
                return None;
            } else if name.eq_ignore_ascii_case(b"cookie") {
                facts.session.read(h.value);
            } else if facts.is_named(name) {
                // Dropped on the way, so the router adds its own below.
            } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                facts.forwarded_proto = true;
            } else if name.eq_ignore_ascii_case(b"x-forwarded-host") {
                facts.forwarded_host = true;
            } else if name.eq_ignore_ascii_case(b"x-request-start") {
                facts.request_start = true;
            } else if name.eq_ignore_ascii_case(b"x-vcap-request-id") {
                facts.request_id = true;
            }
        }
        (hosts == 1 && !facts.host.is_empty()).then_some(facts)
    }

    fn is_named(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Headers that describe one connection (RFC 9110 §7.6.1), never forwarded, and the
/// router's own proof, which a client must not send.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-strato-router",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The backend's request head, without the final blank line: the client's headers minus
/// hop-by-hop ones, then the forwarding headers `proxy::prepare_request_headers` adds.
fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    facts: &RequestFacts<'_>,
    peer: &Peer,
    now_ms: u64,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Option<Vec<u8>> = None;
    for h in headers {
        let name = h.name.as_bytes();
        // Host stays whatever `Connection` says (the hyper path puts it back).
        let host = name.eq_ignore_ascii_case(b"host");
        if is_hop_by_hop(name) || (facts.is_named(name) && !host) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let value = h.value.trim_ascii();
            if !value.is_empty() {
                let joined = forwarded_for.get_or_insert_with(Vec::new);
                joined.extend_from_slice(value);
                joined.extend_from_slice(b", ");
            }
            continue;
        }
        header(out, name, h.value);
    }
    let client_ip = peer.forwarded_for.as_bytes();
    match forwarded_for {
        Some(mut joined) => {
            joined.extend_from_slice(client_ip);
            header(out, b"x-forwarded-for", &joined);
        }
        None => header(out, b"x-forwarded-for", client_ip),
    }
    if !facts.forwarded_proto {
        header(
            out,
            b"x-forwarded-proto",
            if peer.https { b"https" } else { b"http" },
        );
    }
    if !facts.forwarded_host {
        header(out, b"x-forwarded-host", facts.host);
    }
    if !facts.request_start {
        out.extend_from_slice(b"x-request-start: ");
        let _ = io::Write::write_fmt(out, format_args!("{now_ms}\r\n"));
    }
    if !facts.request_id {
        out.extend_from_slice(b"x-vcap-request-id: ");
        request_id::write_next(out);
        out.extend_from_slice(b"\r\n");
    }
}

/// `Date` for a response made at `now_ms`, formatted once per second per thread.
fn http_date(now_ms: u64) -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let second = now_ms / 1000;
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let when = std::time::UNIX_EPOCH + Duration::from_secs(second);
        let mut text = [b' '; 29];
        let formatted = httpdate::fmt_http_date(when);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        cached.set((second, text));
        text
    })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body: `HEAD`, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the backend closing the connection.
    UntilClose,
}

/// The final response as the relay needs to know it.
struct Response {
    framing: Framing,
    /// The backend sent a `Date` (else the router adds one, as RFC 9110 §6.6.1 asks).
    dated: bool,
    /// The backend connection can carry another request afterwards.
    reusable: bool,
}

enum ResponseHead {
    Partial,
    Invalid,
    /// A 1xx answer of this length, its copy for the client in `out`.
    Informational(usize),
    /// The final answer's head length; its copy for the client in `out` (without the
    /// blank line, so a `connection: close` can still be added).
    Final(usize, Response),
}

/// Parses a response head from `instance` and writes the client's copy into `out`.
fn parse_response(
    buf: &[u8],
    request: &Request,
    instance: &str,
    out: &mut Vec<u8>,
) -> ResponseHead {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let head_len = match parser.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return ResponseHead::Partial,
        Err(_) => return ResponseHead::Invalid,
    };
    let (Some(version), Some(code)) = (parsed.version, parsed.code) else {
        return ResponseHead::Invalid;
    };
    // The request asked for no protocol switch; below 100 is no status at all.
    if code == 101 || code < 100 {
        return ResponseHead::Invalid;
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let (mut close, mut keep_alive, mut dated, mut cookies) = (false, false, false, false);
    let mut named: Vec<&[u8]> = Vec::new();
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(value) = content_length(h.value) else {
                return ResponseHead::Invalid;
            };
            if length.is_some_and(|l| l != value) {
                return ResponseHead::Invalid;
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"date") {
            dated = true;
        } else if name.eq_ignore_ascii_case(b"set-cookie") {
            cookies = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoded = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        }
    }
    let framing = if request.head || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::Empty
    } else if transfer_encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = io::Write::write_fmt(out, format_args!("{code} "));
    out.extend_from_slice(parsed.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let framing_header = name.eq_ignore_ascii_case(b"transfer-encoding");
        let dropped = (is_hop_by_hop(name) && !framing_header)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            // With chunked framing a length is wrong (RFC 9112 §6.3).
            || (transfer_encoded && name.eq_ignore_ascii_case(b"content-length"));
        if !dropped {
            header(out, name, h.value);
        }
    }
    if cookies || request.session.started {
        let set_cookies: Vec<&[u8]> = parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("set-cookie"))
            .map(|h| h.value)
            .collect();
        for pin in request.session.pins(&set_cookies, instance) {
            header(out, b"set-cookie", &pin);
        }
    }
    if (100..200).contains(&code) {
        out.extend_from_slice(b"\r\n");
        return ResponseHead::Informational(head_len);
    }
    ResponseHead::Final(
        head_len,
        Response {
            framing,
            dated,
            // HTTP/1.0 closes unless asked to keep the connection alive, and its framing
            // cannot be trusted when it claims a transfer coding (RFC 9112 §6.1).
            reusable: !close && (version == 1 || (keep_alive && !transfer_encoded)),
        },
    )
}

/// A `Content-Length` value: ASCII digits only (no sign, no other blanks), as hyper reads it.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Finds where a response body ends while it passes through.
struct BodyEnd {
    framing: Framing,
    /// Bytes left of a `Length` body.
    left: u64,
    chunk: Chunk,
}

/// Where a chunked body's scanner stands (RFC 9112 §7.1). As strict as hyper: lines end
/// with CRLF only, so the relay never finds a different end than a proxy in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk's size: its value so far and whether a digit was seen.
    Size(u64, bool),
    /// Blanks after the size.
    SizeBlank(u64),
    /// In a chunk extension, up to the line's CR.
    Extension(u64),
    /// After the size line's CR.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl BodyEnd {
    fn new(framing: Framing) -> BodyEnd {
        BodyEnd {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: Chunk::Size(0, false),
        }
    }

    fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunk == Chunk::Done,
            Framing::UntilClose => false,
        }
    }

    /// Takes the part of `bytes` that belongs to the body; the rest (if any) would be
    /// bytes the backend sent after its response. `Err` for a malformed chunked body.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => Ok(bytes.len()),
            Framing::Length(_) => {
                let take =
                    usize::try_from(self.left).map_or(bytes.len(), |left| left.min(bytes.len()));
                self.left -= take as u64;
                Ok(take)
            }
            Framing::Chunked => self.feed_chunked(bytes),
        }
    }

    fn feed_chunked(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        let mut at = 0;
        while at < bytes.len() && self.chunk != Chunk::Done {
            let b = bytes[at];
            self.chunk = match self.chunk {
                Chunk::Size(size, seen) => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(())?;
                        Chunk::Size(size, true)
                    }
                    b' ' | b'\t' if seen => Chunk::SizeBlank(size),
                    b';' if seen => Chunk::Extension(size),
                    b'\r' if seen => Chunk::SizeLf(size),
                    _ => return Err(()),
                },
                Chunk::SizeBlank(size) => match b {
                    b' ' | b'\t' => Chunk::SizeBlank(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => return Err(()),
                },
                Chunk::Extension(size) => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b'\n' => return Err(()),
                    _ => Chunk::Extension(size),
                },
                Chunk::SizeLf(size) if b == b'\n' => after_size(size),
                Chunk::Data(left) => {
                    let available = (bytes.len() - at) as u64;
                    let take = left.min(available);
                    at += take as usize;
                    self.chunk = if take == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - take)
                    };
                    continue;
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Size(0, false),
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::EndLf,
                    b'\n' => return Err(()),
                    _ => Chunk::TrailerLine,
                },
                Chunk::TrailerLine => match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\n' => return Err(()),
                    _ => Chunk::TrailerLine,
                },
                Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
                Chunk::EndLf if b == b'\n' => Chunk::Done,
                Chunk::SizeLf(_)
                | Chunk::DataCr
                | Chunk::DataLf
                | Chunk::TrailerLf
                | Chunk::EndLf => return Err(()),
                Chunk::Done => break,
            };
            at += 1;
        }
        Ok(at)
    }
}

fn after_size(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data(size)
    }
}

/// A connection that first replays bytes already read from it, so hyper can take over a
/// connection the relay started reading.
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(inner: T, prefix: Bytes) -> Rewind<T> {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; the body's length once it ended.
    fn chunked_end(body: &[u8], step: usize) -> Result<Option<usize>, ()> {
        let mut end = BodyEnd::new(Framing::Chunked);
        let mut at = 0;
        for piece in body.chunks(step) {
            at += end.feed(piece)?;
            if end.done() {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_however_it_is_split() {
        let body = b"5\r\nhello\r\nA;name=v\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(
                chunked_end(body, step),
                Ok(Some(body.len() - 4)),
                "step {step}"
            );
        }
        assert_eq!(chunked_end(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(chunked_end(b"3\r\nabc\r\n", 4), Ok(None));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX\r\n",
            b"0\rX",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(
                chunked_end(bad, 1),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_length_body_takes_only_its_bytes() {
        let mut end = BodyEnd::new(Framing::Length(5));
        assert_eq!(end.feed(b"abc"), Ok(3));
        assert!(!end.done());
        assert_eq!(end.feed(b"deXTRA"), Ok(2));
        assert!(end.done());
    }

    #[test]
    fn requests_with_bodies_upgrades_or_odd_hosts_are_for_hyper() {
        let facts = |raw: &str| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            request.parse(raw.as_bytes()).unwrap();
            RequestFacts::of(request.headers).map(|f| (f.close, f.named.len()))
        };
        assert_eq!(facts("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some((false, 0)));
        assert_eq!(
            facts(
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close, x-a\r\n\r\n"
            ),
            Some((true, 1))
        );
        for handed in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(facts(handed), None, "{handed}");
        }
    }
}
