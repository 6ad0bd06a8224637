//! One worker thread's kept-alive connections to the upstream, and the exchange of a request
//! and its response on one of them (the wire format is [`super::wire`]'s).
//!
//! Everything happens in the task that serves the client: the request is written, and the
//! response read, by that task, with no task per connection and no channel between them.
//! A connection is taken for one request and given back when that request's response body
//! has been read to its end, so the next request on it never waits behind a body still
//! streaming; a small response arrives with its head and is given back at once. Most recently
//! used first: a burst reuses warm connections, and connections idle for longer than
//! [`IDLE_FOR`] are closed when the pool is next touched, before the upstream's own keep-alive
//! timeout can race a request with its close.
//!
//! The pool belongs to one thread (a worker's single-threaded runtime), so its lock is never
//! contended; it is a lock only because the tasks it is shared by must be `Send`.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::net::TcpStream;
use tracing::debug;

use super::wire::{self, Decoded, Decoder, Malformed, Parsed};

/// Connections idle for longer are closed: under the keep-alive timeouts of common upstream
/// servers (nginx 75 s, most application servers 60 s or more).
const IDLE_FOR: Duration = Duration::from_secs(50);
/// Idle connections kept per worker; more are closed as they come back.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Room made in a connection's buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Why a request got no response, or its response no whole body, from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: String },
    #[error("connection to the upstream failed: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection without a response")]
    Closed,
    #[error("the upstream closed the connection before the end of the body")]
    BodyCut,
    #[error("the upstream sent nothing of the body for {0:?}")]
    BodyStalled(Duration),
    #[error("the upstream's response is not HTTP/1.1 as expected: {0}")]
    Malformed(#[from] Malformed),
    #[error("reading the client's request body failed: {0}")]
    ClientBody(hyper::Error),
}

/// How far an exchange got before it failed: what decides whether the request may be sent
/// again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reached {
    /// Not even the request head was written: the upstream cannot have acted on it.
    Nothing,
    /// The request was written and not a byte came back: the kept connection had been closed,
    /// or the upstream closed it on reading the request.
    NoAnswer,
    /// Some of the response came back.
    Answer,
}

/// A connection to the upstream, with the bytes read from it and not yet used.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The request's body was cut short (the upstream answered first): the connection ends
    /// with this response.
    spent: bool,
}

impl Conn {
    /// Whether a connection that was idle can carry a request: nothing arrived on it while
    /// idle. Without a system call unless the runtime saw it readable.
    fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // The upstream closed it, sent what no request asked for, or the readiness is
            // left over from the last read: only the last is an open connection.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Writes the request (`head`, then the body if any) and reads the response head.
    async fn exchange(
        &mut self,
        head: &[u8],
        body: &mut Option<Incoming>,
        chunked: bool,
        method: &Method,
    ) -> Result<wire::Head, (UpstreamError, Reached)> {
        write_all(&self.stream, head).await.map_err(|e| (e.into(), Reached::Nothing))?;
        if let Some(body) = body.take() {
            // An upstream may answer before the body is all sent (a 413, a 401), and stop
            // reading it: the body is then cut short and the answer read.
            let mut probe = [0u8; 1];
            let sent = tokio::select! {
                biased;
                r = send_body(&self.stream, body, chunked) => Some(r),
                _ = self.stream.peek(&mut probe) => None,
            };
            match sent {
                Some(Ok(())) => {}
                None => self.spent = true,
                Some(Err(BodyError::Client(e))) => return Err((UpstreamError::ClientBody(e), Reached::Answer)),
                // Writing failed: the upstream may have answered and closed; read what it said.
                Some(Err(BodyError::Upstream(e))) => {
                    debug!(error = %e, "writing the request body upstream failed; reading the response");
                    self.spent = true;
                }
            }
        }
        let mut answered = !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                match wire::parse_head(&mut self.buf, method) {
                    Ok(Parsed::Final(h)) => return Ok(h),
                    Ok(Parsed::Interim) => continue,
                    Ok(Parsed::Incomplete) => {}
                    Err(m) => return Err((m.into(), Reached::Answer)),
                }
            }
            let reached = if answered { Reached::Answer } else { Reached::NoAnswer };
            match self.fill().await {
                Ok(0) => return Err((UpstreamError::Closed, reached)),
                Ok(_) => answered = true,
                Err(e) => return Err((e.into(), reached)),
            }
        }
    }
}

enum BodyError {
    Client(hyper::Error),
    Upstream(io::Error),
}

/// Streams the client's body upstream: as it comes, or chunked when its length is unknown.
async fn send_body(stream: &TcpStream, mut body: Incoming, chunked: bool) -> Result<(), BodyError> {
    let mut framed = Vec::new();
    while let Some(frame) = body.frame().await {
        // Trailers are not forwarded.
        let Ok(data) = frame.map_err(BodyError::Client)?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        let out = if chunked {
            framed.clear();
            wire::encode_chunk(&data, &mut framed);
            &framed[..]
        } else {
            &data[..]
        };
        write_all(stream, out).await.map_err(BodyError::Upstream)?;
    }
    if chunked {
        write_all(stream, wire::LAST_CHUNK).await.map_err(BodyError::Upstream)?;
    }
    Ok(())
}

/// Writes all of `buf`, waiting for room when the socket has none. Through a shared reference,
/// unlike `AsyncWriteExt::write_all`: the body is written while the same socket is peeked for
/// an early answer.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// The pool of one worker.
#[derive(Debug)]
pub struct UpstreamPool {
    /// `host:port` to connect to, and the `host` of requests that came without one.
    addr: String,
    idle: Mutex<VecDeque<Idle>>,
    idle_for: Duration,
    /// A response body that gets no byte for this long is cut (nginx's `proxy_read_timeout`).
    stall: Duration,
}

impl UpstreamPool {
    /// A pool for `addr` whose response bodies are cut after `stall` without a byte.
    pub fn new(addr: String, stall: Duration) -> Arc<Self> {
        Self::with_idle_for(addr, IDLE_FOR, stall)
    }

    fn with_idle_for(addr: String, idle_for: Duration, stall: Duration) -> Arc<Self> {
        Arc::new(Self { addr, idle: Mutex::new(VecDeque::new()), idle_for, stall })
    }

    /// Sends `req` on an idle connection, or a new one.
    ///
    /// An upstream may close a kept connection just as a request is written on it (the
    /// keep-alive race every HTTP/1.1 client has). The request is then sent once more, on a
    /// new connection, when that cannot repeat its effect: it never reached the upstream, or
    /// it has an idempotent method and no body and nothing came back, as nginx does.
    pub async fn send(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<PooledBody>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let has_body = !body.is_end_stream();
        let chunked = has_body && !parts.headers.contains_key(header::CONTENT_LENGTH);
        let mut head = Vec::with_capacity(256 + parts.headers.len() * 32);
        wire::encode_head(&parts, &self.addr, chunked, &mut head);
        let replayable = !has_body
            && matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            );
        let mut body = has_body.then_some(body);
        let (mut conn, mut reused) = match self.checkout() {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let head = loop {
            match conn.exchange(&head, &mut body, chunked, &parts.method).await {
                Ok(h) => break h,
                Err((e, reached)) => {
                    let again = reused && (reached == Reached::Nothing || (reached == Reached::NoAnswer && replayable));
                    if !again {
                        return Err(e);
                    }
                    debug!(error = %e, "kept connection failed before a response; sending again on a new one");
                    conn = self.connect().await?;
                    reused = false;
                }
            }
        };
        let reusable = head.keep_alive && !conn.spent;
        let mut res = Response::new(PooledBody {
            conn: Some(conn),
            decoder: head.body,
            first: None,
            reusable,
            pool: self.clone(),
            stall_timer: None,
            waiting: false,
        });
        *res.status_mut() = head.status;
        *res.headers_mut() = head.headers;
        res.body_mut().take_buffered();
        Ok(res)
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let conn = {
                let mut idle = self.lock();
                self.close_stale(&mut idle, Instant::now());
                idle.pop_back()?.conn
            };
            if conn.is_open() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let addr = &self.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr: addr.clone(), source }),
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr: addr.clone() }),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), spent: false })
    }

    fn checkin(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        self.close_stale(&mut idle, now);
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle { conn, since: now });
        }
    }

    /// Closes the connections idle for longer than `idle_for` (the oldest are in front).
    fn close_stale(&self, idle: &mut VecDeque<Idle>, now: Instant) {
        while idle.front().is_some_and(|i| now - i.since > self.idle_for) {
            idle.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// An upstream response body, read from its connection as the client takes it. The
/// connection goes back to the pool when the body has been read to its end; dropped before
/// that, the body closes it: the rest of the body would be in the way of the next response.
#[derive(Debug)]
pub struct PooledBody {
    /// None once the body has ended (or failed).
    conn: Option<Conn>,
    decoder: Decoder,
    /// Body bytes that came with the head.
    first: Option<Bytes>,
    /// Whether the connection may carry another request after this body.
    reusable: bool,
    pool: Arc<UpstreamPool>,
    /// Fires when a read has waited the pool's `stall`. Made the first time a read must wait,
    /// so that a body that comes with its head, or keeps flowing, costs no timer.
    stall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A read is waiting, and `stall_timer` counts from when it began.
    waiting: bool,
}

impl PooledBody {
    /// Takes the body bytes that arrived with the head, and gives the connection back at once
    /// when they are the whole body: the usual small response then needs no more reads.
    fn take_buffered(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        // An error here is met again, and returned, when the body is read.
        if let Ok(Decoded::Data(b)) = self.decoder.decode(&mut conn.buf) {
            self.first = Some(b);
        }
        if self.decoder.ends_in(&conn.buf) {
            self.finish();
        }
    }

    /// Reads past the body's end (already in the buffer) and gives the connection back, if
    /// it can carry another request.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let ended = matches!(self.decoder.decode(&mut conn.buf), Ok(Decoded::End));
        // Bytes after the response are an answer to no request: the connection is not reused.
        if ended && self.reusable && conn.buf.is_empty() {
            self.pool.checkin(conn);
        }
    }

    /// A read must wait: starts the stall clock if this wait is new, and ends the body when
    /// the wait has lasted the pool's `stall`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let stall = self.pool.stall;
        if !self.waiting {
            let deadline = tokio::time::Instant::now() + stall;
            match &mut self.stall_timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.stall_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        match self.stall_timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => self.fail(UpstreamError::BodyStalled(stall)),
            _ => Poll::Pending,
        }
    }

    /// Ends the body with `e`; the connection is closed.
    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.decoder.decode(&mut conn.buf) {
                Err(m) => return this.fail(m.into()),
                Ok(Decoded::Data(b)) => {
                    if this.decoder.ends_in(&conn.buf) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Pending => return this.poll_stall(cx),
                    Poll::Ready(Ok(0)) if this.decoder.ends_at_close() => {
                        this.decoder = Decoder::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => return this.fail(UpstreamError::BodyCut),
                    Poll::Ready(Ok(_)) => this.waiting = false,
                    Poll::Ready(Err(e)) => return this.fail(e.into()),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n + first),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// How the scripted upstream below behaves on each connection.
    #[derive(Clone, Copy)]
    struct Script {
        body: &'static str,
        /// Requests answered on one connection.
        per_connection: usize,
        /// After those: read one more request and close without answering it (else close
        /// 20 ms later without a word, as an upstream's keep-alive timeout does).
        drop_next: bool,
        /// Send each response's body this long after its head.
        body_after: Duration,
    }

    /// Longer than any test waits for a body that keeps coming.
    const STALL: Duration = Duration::from_secs(30);

    const PLAIN: Script = Script { body: "ok", per_connection: 100, drop_next: false, body_after: Duration::ZERO };

    /// An upstream speaking just enough HTTP/1.1, as `script` says. Counts the connections it
    /// accepts.
    async fn upstream(script: Script) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..script.per_connection {
                        if !read_head(&mut s, &mut buf).await {
                            return;
                        }
                        let body = script.body;
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let sent = if script.body_after.is_zero() {
                            s.write_all(format!("{head}{body}").as_bytes()).await
                        } else {
                            let _ = s.write_all(head.as_bytes()).await;
                            tokio::time::sleep(script.body_after).await;
                            s.write_all(body.as_bytes()).await
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    if script.drop_next {
                        read_head(&mut s, &mut buf).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        (addr, accepted)
    }

    /// Reads one request head (and drops it); false when the connection ended first.
    async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        true
    }

    /// An upstream that takes one connection, reads one request head (none of its body), and
    /// writes `answer`, then holds the connection open for `hold`.
    async fn answering_once(answer: &'static [u8], hold: Duration) -> String {
        answering_in_pieces(answer.to_vec(), &[], Duration::ZERO, hold).await
    }

    /// [`answering_once`] that then writes `pieces`, with `gap` before each, before holding.
    async fn answering_in_pieces(
        answer: Vec<u8>,
        pieces: &'static [&'static str],
        gap: Duration,
        hold: Duration,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s, &mut Vec::new()).await;
            s.write_all(&answer).await.unwrap();
            for piece in pieces {
                tokio::time::sleep(gap).await;
                if s.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(hold).await;
        });
        addr
    }

    /// A real HTTP/1.1 server (hyper's) that answers each request with its method and body,
    /// chunked when the request path is `/chunked`.
    async fn echo_upstream() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let chunked = req.uri().path() == "/chunked";
                    let method = req.method().to_string();
                    let body = req.into_body().collect().await?.to_bytes();
                    let echo = Bytes::from([method.as_bytes(), b" ", &body].concat());
                    let res = if chunked {
                        // A body of unknown length goes chunked.
                        let frames = futures::stream::iter([echo.slice(..3), echo.slice(3..)])
                            .map(|b| Ok::<_, hyper::Error>(Frame::data(b)));
                        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
                    } else {
                        Response::new(Full::new(echo).map_err(|never| match never {}).boxed())
                    };
                    Ok::<_, hyper::Error>(res)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        addr
    }

    use futures::StreamExt as _;

    /// A request with an empty `Incoming` body, as the server side hands the proxy: made by
    /// a throwaway hyper server, since `Incoming` has no public constructor.
    async fn requests(n: usize) -> Vec<Request<Incoming>> {
        requests_of("GET /item HTTP/1.1\r\nhost: shop\r\n\r\n", n).await
    }

    async fn requests_of(head: &str, n: usize) -> Vec<Request<Incoming>> {
        let mut rx = requests_from(head.repeat(n).into_bytes()).await;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(rx.recv().await.unwrap());
        }
        out
    }

    /// The requests a client sends as `wire`, as the server side hands them on, written by a
    /// task of its own so that a body larger than the socket's buffers streams as it is read.
    /// A request after one with a body comes once that body has been read, as on any
    /// connection.
    async fn requests_from(wire: Vec<u8>) -> tokio::sync::mpsc::UnboundedReceiver<Request<Incoming>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(req);
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            let io = hyper_util::rt::TokioIo::new(s);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        tokio::spawn(async move {
            let _ = client.write_all(&wire).await;
            // The server side stays open while its requests live on: keep the client with them.
            std::future::pending::<()>().await;
        });
        rx
    }

    async fn body_of(res: Response<PooledBody>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = upstream(PLAIN).await;
        let pool = UpstreamPool::new(addr, STALL);
        for req in requests(5).await {
            let res = pool.send(req).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(body_of(res).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for five requests in turn");
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_closed_rather_than_used() {
        let (addr, accepted) = upstream(PLAIN).await;
        let pool = UpstreamPool::with_idle_for(addr, Duration::from_millis(100), STALL);
        let mut reqs = requests(2).await.into_iter();
        body_of(pool.send(reqs.next().unwrap()).await.unwrap()).await;
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // No request came back in between: the next one closes it and opens another.
        assert_eq!(body_of(pool.send(reqs.next().unwrap()).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_that_came_whole_gives_its_connection_back_before_its_body_is_read() {
        let (addr, _) = upstream(PLAIN).await;
        let pool = UpstreamPool::new(addr, STALL);
        let res = pool.send(requests(1).await.pop().unwrap()).await.unwrap();
        assert_eq!(pool.idle(), 1, "head and body arrived together: nothing more to read");
        assert_eq!(res.body().size_hint().exact(), Some(2));
        assert_eq!(body_of(res).await, "ok");
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_not_read_is_not_reused() {
        let late = Script { body: "a body sent after its head", body_after: Duration::from_millis(50), ..PLAIN };
        let (addr, accepted) = upstream(late).await;
        let pool = UpstreamPool::new(addr, STALL);
        let mut reqs = requests(2).await.into_iter();
        let first = pool.send(reqs.next().unwrap()).await.unwrap();
        drop(first);
        assert_eq!(pool.idle(), 0, "a dropped body does not give its connection back");
        let second = pool.send(reqs.next().unwrap()).await.unwrap();
        assert_eq!(pool.idle(), 0, "the body is still on its way");
        assert_eq!(body_of(second).await, "a body sent after its head");
        assert_eq!(pool.idle(), 1, "read to its end, the body gives the connection back");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn requests_go_through_when_the_upstream_closes_kept_connections() {
        // Every connection is closed after one response, with nothing said: each next request
        // finds its kept connection closed (or closing) and goes on a new one.
        let (addr, accepted) = upstream(Script { per_connection: 1, ..PLAIN }).await;
        let pool = UpstreamPool::new(addr, STALL);
        for (i, req) in requests(6).await.into_iter().enumerate() {
            let res = pool.send(req).await.expect("a closed kept connection is not the client's error");
            assert_eq!(body_of(res).await, "ok");
            if i % 2 == 0 {
                // The close is seen before the next request: the connection is left alone.
                tokio::time::sleep(Duration::from_millis(60)).await;
            } else {
                // The close arrives unseen (this thread, which would see it, is held): the next
                // request is handed to a connection already closed, and must come back.
                std::thread::sleep(Duration::from_millis(60));
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_request_dropped_unanswered_is_sent_again_only_if_that_repeats_nothing() {
        // Each connection answers one request, then takes the next and closes without a word.
        let script = Script { per_connection: 1, drop_next: true, ..PLAIN };
        let (addr, accepted) = upstream(script).await;
        let pool = UpstreamPool::new(addr, STALL);
        let mut gets = requests(2).await.into_iter();
        body_of(pool.send(gets.next().unwrap()).await.unwrap()).await;
        let again = pool.send(gets.next().unwrap()).await.expect("a GET is sent again");
        assert_eq!(body_of(again).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        let mut posts =
            requests_of("POST /order HTTP/1.1\r\nhost: shop\r\ncontent-length: 0\r\n\r\n", 2).await.into_iter();
        let pool = UpstreamPool::new(pool.addr.clone(), STALL);
        body_of(pool.send(posts.next().unwrap()).await.unwrap()).await;
        let err = pool.send(posts.next().unwrap()).await.expect_err("a POST the upstream may have acted on");
        assert!(matches!(err, UpstreamError::Closed), "{err:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "not sent again");
    }

    #[tokio::test]
    async fn request_bodies_go_upstream_whole_and_chunked_responses_come_back_whole() {
        let pool = UpstreamPool::new(echo_upstream().await, STALL);
        let wire = "PUT /sized HTTP/1.1\r\nhost: shop\r\ncontent-length: 11\r\n\r\nhello there\
                    POST /chunked HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n\
                    GET /chunked HTTP/1.1\r\nhost: shop\r\n\r\n";
        let mut reqs = requests_from(wire.as_bytes().to_vec()).await;
        assert_eq!(body_of(pool.send(reqs.recv().await.unwrap()).await.unwrap()).await, "PUT hello there");
        let res = pool.send(reqs.recv().await.unwrap()).await.unwrap();
        assert_eq!(res.headers()[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(body_of(res).await, "POST abcdefg");
        assert_eq!(body_of(pool.send(reqs.recv().await.unwrap()).await.unwrap()).await, "GET ");
        assert_eq!(pool.idle(), 1, "all three on one connection, given back after each");
    }

    #[tokio::test]
    async fn an_upstream_answering_before_the_body_is_sent_is_heard() {
        // The upstream refuses the request on its head and reads none of its 8 MiB body.
        let refusal = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large";
        let addr = answering_once(refusal, Duration::from_secs(30)).await;
        let size = 8 << 20;
        let mut wire = format!("POST /upload HTTP/1.1\r\nhost: shop\r\ncontent-length: {size}\r\n\r\n").into_bytes();
        wire.resize(wire.len() + size, b'x');
        let req = requests_from(wire).await.recv().await.unwrap();
        let pool = UpstreamPool::new(addr, STALL);
        let res = tokio::time::timeout(Duration::from_secs(5), pool.send(req)).await.expect("not stuck on the body");
        let res = res.unwrap();
        assert_eq!(res.status(), 413);
        assert_eq!(body_of(res).await, "too large");
        assert_eq!(pool.idle(), 0, "a connection whose request was cut short is not reused");
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_upstream_is_an_error_not_a_short_body() {
        let addr = answering_once(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", Duration::ZERO).await;
        let pool = UpstreamPool::new(addr, STALL);
        let res = pool.send(requests(1).await.pop().unwrap()).await.unwrap();
        let err = res.into_body().collect().await.unwrap_err();
        assert!(matches!(err, UpstreamError::BodyCut), "{err:?}");
    }

    /// An upstream that answers one request with a head declaring `length` body bytes, then
    /// writes `pieces` with `gap` before each, then holds the connection open.
    async fn trickling(length: usize, pieces: &'static [&'static str], gap: Duration) -> String {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
        answering_in_pieces(head.into_bytes(), pieces, gap, Duration::from_secs(30)).await
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_cut_after_the_stall_time() {
        let addr = trickling(100, &["the start"], Duration::ZERO).await;
        let pool = UpstreamPool::new(addr, Duration::from_millis(300));
        let res = pool.send(requests(1).await.pop().unwrap()).await.unwrap();
        let began = Instant::now();
        let err = res.into_body().collect().await.unwrap_err();
        assert!(matches!(err, UpstreamError::BodyStalled(_)), "{err:?}");
        let waited = began.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(pool.idle(), 0, "a cut body's connection is not reused");
    }

    #[tokio::test]
    async fn a_slow_body_that_keeps_coming_is_not_cut() {
        // Six pieces 150 ms apart: 900 ms in all, three times the stall time, never a gap of it.
        let pieces: &[&str] = &["a", "b", "c", "d", "e", "f"];
        let addr = trickling(pieces.len(), pieces, Duration::from_millis(150)).await;
        let pool = UpstreamPool::new(addr, Duration::from_millis(300));
        let res = pool.send(requests(1).await.pop().unwrap()).await.unwrap();
        assert_eq!(body_of(res).await, "abcdef");
    }

    #[tokio::test]
    async fn garbage_from_the_upstream_is_an_error_that_says_so() {
        let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n";
        let addr = answering_once(tls_hello, Duration::from_secs(5)).await;
        let pool = UpstreamPool::new(addr, STALL);
        let err = pool.send(requests(1).await.pop().unwrap()).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains("not HTTP/1.1"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_named_in_the_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = UpstreamPool::new(addr.clone(), STALL);
        let err = pool.send(requests(1).await.pop().unwrap()).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
