//! One worker thread's kept-alive connections to the upstream.
//!
//! A connection is taken for one request and given back when that request's response body has
//! been read to its end, so the next request on it never waits behind a body still streaming.
//! Most recently used first: a burst reuses warm connections, and connections idle for longer
//! than [`IDLE_FOR`] are closed when the pool is next touched, before the upstream's own
//! keep-alive timeout can race a request with its close.
//!
//! The pool belongs to one thread (a worker's single-threaded runtime), so its lock is never
//! contended; it is a lock only because the tasks it is shared by must be `Send`.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// Connections idle for longer are closed: under the keep-alive timeouts of common upstream
/// servers (nginx 75 s, most application servers 60 s or more).
const IDLE_FOR: Duration = Duration::from_secs(50);
/// Idle connections kept per worker; more are closed as they come back.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request as sent upstream: the client's body, or none when sent again.
pub type RequestBody = BoxBody<Bytes, hyper::Error>;

/// A copy of `req` to send again, if it has an idempotent method (RFC 9110 §9.2.2) and no
/// body: the body is streamed through, not kept.
fn replayable_copy(req: &Request<Incoming>) -> Option<Request<RequestBody>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Empty::new().map_err(|never| match never {}).boxed());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: String },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake { addr: String, source: hyper::Error },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// The pool of one worker.
#[derive(Debug)]
pub struct UpstreamPool {
    /// `host:port` to connect to.
    addr: String,
    idle: Mutex<VecDeque<Idle>>,
    idle_for: Duration,
}

impl UpstreamPool {
    pub fn new(addr: String) -> Arc<Self> {
        Self::with_idle_for(addr, IDLE_FOR)
    }

    fn with_idle_for(addr: String, idle_for: Duration) -> Arc<Self> {
        Arc::new(Self { addr, idle: Mutex::new(VecDeque::new()), idle_for })
    }

    /// Sends `req` on an idle connection, or a new one.
    ///
    /// An upstream may close a kept connection just as a request is written on it (the
    /// keep-alive race every HTTP/1.1 client has). The request is then sent once more, on a
    /// new connection, when that cannot repeat its effect: it never reached the upstream, or
    /// it has an idempotent method and no body, as nginx does.
    pub async fn send(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<PooledBody>, UpstreamError> {
        let (mut sender, reused) = match self.checkout().await {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        // Kept only where it can be used: a new connection has no race to lose.
        let replay = if reused { replayable_copy(&req) } else { None };
        let res = match sender.try_send_request(req.map(BodyExt::boxed)).await {
            Ok(res) => res,
            Err(mut e) => match e.take_message().or(replay) {
                Some(req) if reused => {
                    debug!(error = %e.error(), "kept connection failed before a response; sending again on a new one");
                    sender = self.connect().await?;
                    sender.send_request(req).await?
                }
                _ => return Err(e.into_error().into()),
            },
        };
        let (parts, body) = res.into_parts();
        let mut body = PooledBody { inner: body, sender: Some(sender), pool: self.clone() };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        Ok(Response::from_parts(parts, body))
    }

    /// The most recently used idle connection that is still open and free.
    async fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        loop {
            let mut sender = {
                let mut idle = self.lock();
                self.close_stale(&mut idle, Instant::now());
                idle.pop_back()?.sender
            };
            if sender.is_closed() {
                continue;
            }
            // A body read to its end leaves the connection free once its task has seen the
            // end; that is at most one poll of that task away.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let addr = &self.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr: addr.clone(), source }),
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr: addr.clone() }),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: addr.clone(), source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn checkin(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        self.close_stale(&mut idle, now);
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle { sender, since: now });
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

/// An upstream response body that gives its connection back to the pool when read to its end.
/// Dropped before that, it closes the connection: the rest of the body would be in the way of
/// the next response.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    sender: Option<SendRequest<RequestBody>>,
    pool: Arc<UpstreamPool>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(s) = self.sender.take() {
            self.pool.checkin(s);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            // An error leaves the connection in an unknown state: it is not reused.
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// An upstream speaking just enough HTTP/1.1: it answers `body` to each request head it
    /// reads, keeps the connection for `per_connection` requests, then closes it without a
    /// word 20 ms later, as an upstream's keep-alive timeout does. Counts the connections it
    /// accepts.
    async fn upstream(body: &'static str, per_connection: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_connection {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let res = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(res.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        (addr, accepted)
    }

    /// A request with an empty `Incoming` body, as the server side hands the proxy: made by
    /// a throwaway hyper server, since `Incoming` has no public constructor.
    async fn requests(n: usize) -> Vec<Request<Incoming>> {
        requests_of("GET /item HTTP/1.1\r\nhost: shop\r\n\r\n", n).await
    }

    async fn requests_of(head: &str, n: usize) -> Vec<Request<Incoming>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let _ = tx.send(Request::from_parts(parts, body));
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(head.repeat(n).as_bytes()).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(rx.recv().await.unwrap());
        }
        // The server side stays open while its requests live on: keep the client with them.
        std::mem::forget(client);
        out
    }

    async fn body_of(res: Response<PooledBody>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = upstream("ok", 100).await;
        let pool = UpstreamPool::new(addr);
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
        let (addr, accepted) = upstream("ok", 100).await;
        let pool = UpstreamPool::with_idle_for(addr, Duration::from_millis(100));
        let mut reqs = requests(2).await.into_iter();
        body_of(pool.send(reqs.next().unwrap()).await.unwrap()).await;
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // No request came back in between: the next one closes it and opens another.
        assert_eq!(body_of(pool.send(reqs.next().unwrap()).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_not_read_is_not_reused() {
        let (addr, accepted) = upstream("a body never read", 100).await;
        let pool = UpstreamPool::new(addr);
        let mut reqs = requests(2).await.into_iter();
        let first = pool.send(reqs.next().unwrap()).await.unwrap();
        drop(first);
        assert_eq!(pool.idle(), 0, "a dropped body does not give its connection back");
        let second = pool.send(reqs.next().unwrap()).await.unwrap();
        assert_eq!(body_of(second).await, "a body never read");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn requests_go_through_when_the_upstream_closes_kept_connections() {
        // Every connection is closed after one response, with nothing said: each next request
        // finds its kept connection closed (or closing) and goes on a new one.
        let (addr, accepted) = upstream("ok", 1).await;
        let pool = UpstreamPool::new(addr);
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
    async fn only_idempotent_requests_without_a_body_are_kept_to_send_again() {
        let get = requests(1).await.pop().unwrap();
        let copy = replayable_copy(&get).expect("a GET without a body can be sent again");
        assert_eq!((copy.method(), copy.uri(), copy.headers()), (get.method(), get.uri(), get.headers()));
        let post = requests_of("POST /order HTTP/1.1\r\nhost: shop\r\ncontent-length: 0\r\n\r\n", 1).await;
        assert!(replayable_copy(&post[0]).is_none(), "POST is not idempotent");
        let put = requests_of("PUT /item HTTP/1.1\r\nhost: shop\r\ncontent-length: 2\r\n\r\nab", 1).await;
        assert!(replayable_copy(&put[0]).is_none(), "a body is streamed through, not kept");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_named_in_the_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = UpstreamPool::new(addr.clone());
        let err = pool.send(requests(1).await.pop().unwrap()).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
