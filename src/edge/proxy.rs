//! The reverse proxy: per request, identify the source, count it, apply the pool's rules, ask
//! the upstream's breaker, and forward.
//!
//! Hostile clients are hyper's to refuse first: a malformed request gets 400, headers over
//! `max_header_bytes` get 431, a client that does not finish its headers within
//! `header_timeout` is disconnected, and at most `max_connections` connections are served at
//! once (the rest wait in the kernel's accept queue).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::common::unix_now;

use super::{
    breaker::{Breaker, BreakerConfig, State},
    counter::{CounterConfig, TrafficCounter},
    metrics::EdgeMetrics,
    report::UpstreamReport,
    rules::{Outcome, RuleSet},
    settings::GuardSettings,
    source::{PrefixTable, Source, client_ip, prefix_of},
    upstream::{PooledBody, UpstreamError, UpstreamPool},
};

/// A response's body: the edge's own answer, or the upstream's read as the client takes it.
/// An enum rather than a boxed body: no allocation per response.
#[derive(Debug)]
pub enum Body {
    Local(Full<Bytes>),
    Upstream(PooledBody),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Self::Local(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Self::Upstream(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Local(b) => b.is_end_stream(),
            Self::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Local(b) => b.size_hint(),
            Self::Upstream(b) => b.size_hint(),
        }
    }
}

/// Settings of the proxy itself (the command line of `levee edge`).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// `http://host:port` of the upstream.
    pub upstream: Uri,
    /// The upstream's name in TrafficGuard `circuitBreakers[].upstream`.
    pub upstream_name: String,
    /// Proxies in front of the edge that append to `X-Forwarded-For`.
    pub trusted_hops: usize,
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    /// For the response head, and then between reads of its body.
    pub upstream_timeout: Duration,
    pub max_connections: usize,
    pub counter: CounterConfig,
}

/// Upstream call counts since the last report.
#[derive(Default)]
struct UpstreamCounts {
    calls: u64,
    failures: u64,
    refused: u64,
}

/// What the rules did since the last report.
#[derive(Default)]
pub struct Refusals {
    /// Requests answered 429 or 403.
    pub limited: u64,
    /// Requests a shadow rule would have limited.
    pub shadow_limited: u64,
    /// Requests from allowlisted sources (passed, and counted nowhere else).
    pub allowlisted: u64,
    /// Requests each rule answered 429 or 403 (a shadow rule: would have), by rule: how the
    /// operator tells a mitigation whose target still sends more than it may from one that
    /// could lapse, in shadow as in enforcement. One entry per rule in force, so bounded by
    /// the rule set.
    pub by_rule: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
}

impl Refusals {
    fn refused(&mut self, rule: &Arc<str>) {
        self.limited += 1;
        self.count(rule);
    }

    fn shadow_refused(&mut self, rule: &Arc<str>) {
        self.shadow_limited += 1;
        self.count(rule);
    }

    fn count(&mut self, rule: &Arc<str>) {
        match self.by_rule.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                self.by_rule.insert(rule.clone(), 1);
            }
        }
    }
}

/// Everything a request needs, shared by every connection.
pub struct EdgeState {
    cfg: ProxyConfig,
    table: PrefixTable,
    pub rules: ArcSwap<RuleSet>,
    pub settings: ArcSwap<GuardSettings>,
    counter: Mutex<TrafficCounter>,
    breaker: Mutex<(BreakerConfig, Breaker, UpstreamCounts)>,
    stats: Mutex<Refusals>,
    pub metrics: EdgeMetrics,
    epoch: Instant,
    /// The upstream's `host:port`: where each worker's pool connects, and the `Host` of
    /// requests that came without one.
    upstream_addr: String,
}

impl EdgeState {
    pub fn new(cfg: ProxyConfig, table: PrefixTable, metrics: EdgeMetrics) -> anyhow::Result<Self> {
        let scheme = cfg.upstream.scheme_str().unwrap_or("http");
        if scheme != "http" {
            anyhow::bail!("--upstream {}: only http:// upstreams are supported", cfg.upstream);
        }
        let Some(authority) = cfg.upstream.authority() else {
            anyhow::bail!("--upstream {}: needs a host, as in http://127.0.0.1:8080", cfg.upstream);
        };
        let upstream_addr = authority.to_string();
        let settings = GuardSettings::default();
        Ok(Self {
            counter: Mutex::new(TrafficCounter::new(cfg.counter, &settings.dimensions)),
            breaker: Mutex::new((settings.breaker, Breaker::new(settings.breaker), UpstreamCounts::default())),
            rules: ArcSwap::from_pointee(RuleSet::default()),
            settings: ArcSwap::from_pointee(settings),
            stats: Mutex::new(Refusals::default()),
            table,
            metrics,
            epoch: Instant::now(),
            upstream_addr,
            cfg,
        })
    }

    /// Puts new guard settings in force: the breaker is rebuilt if its settings changed, the
    /// counter if the dimensions did.
    pub fn set_settings(&self, s: GuardSettings) {
        let old = self.settings.load();
        if old.dimensions != s.dimensions {
            *lock(&self.counter) = TrafficCounter::new(self.cfg.counter, &s.dimensions);
        }
        {
            let mut b = lock(&self.breaker);
            if b.0 != s.breaker {
                b.0 = s.breaker;
                b.1 = Breaker::new(s.breaker);
            }
        }
        self.settings.store(Arc::new(s));
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Who sent `headers` from `peer`.
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap, settings: &GuardSettings) -> Source {
        let hops = self.cfg.trusted_hops;
        let ip = if hops == 0 {
            peer
        } else {
            let all = headers.get_all(X_FORWARDED_FOR);
            let mut values = all.iter();
            // Nearly every request has one X-Forwarded-For header or none: no list to allocate.
            match (values.next(), values.next()) {
                (None, _) => peer,
                (Some(one), None) => client_ip(peer, &[one.as_bytes()], hops),
                _ => client_ip(peer, &all.iter().map(HeaderValue::as_bytes).collect::<Vec<_>>(), hops),
            }
        };
        let origin = self.table.lookup(ip);
        let api_key = settings
            .api_key_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Source { ip, prefix: prefix_of(ip), asn: origin.asn, country: origin.country, api_key }
    }

    /// The interval's counts and upstream figures, for a report; starts the next interval.
    pub fn take_interval(&self) -> (super::counter::Counts, Refusals, UpstreamReport) {
        let counts = lock(&self.counter).take();
        let prefix_asns = self.prefix_asns(&counts);
        let refusals = std::mem::take(&mut *lock(&self.stats));
        let mut b = lock(&self.breaker);
        let c = std::mem::take(&mut b.2);
        let up = UpstreamReport {
            name: self.cfg.upstream_name.clone(),
            breaker: state_name(b.1.state()).to_owned(),
            calls: c.calls,
            failures: c.failures,
            refused: c.refused,
        };
        (super::counter::Counts { prefix_asns, ..counts }, refusals, up)
    }

    /// The ASN of each reported prefix, from the prefix table: looked up here, a thousand
    /// times a second, rather than remembered for every request.
    fn prefix_asns(&self, counts: &super::counter::Counts) -> std::collections::BTreeMap<String, u32> {
        let Some(prefixes) = counts.top.get(&super::report::Dimension::Prefix) else { return Default::default() };
        prefixes
            .iter()
            .filter_map(|(p, _)| {
                let net = p.parse::<ipnet::IpNet>().ok()?;
                self.table.lookup(net.network()).asn.map(|a| (p.clone(), a))
            })
            .collect()
    }

    pub fn upstream_name(&self) -> String {
        self.cfg.upstream_name.clone()
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Closed => "Closed",
        State::Open { .. } => "Open",
        State::HalfOpen => "HalfOpen",
    }
}

/// A poisoned lock only means a request panicked mid-count; the counts are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A refusal that tells the client when to try again (`Retry-After`), counted against `rule`
/// and in `counter`.
fn come_back_later(
    state: &EdgeState,
    counter: &prometheus_client::metrics::counter::Counter,
    rule: &Arc<str>,
    retry_after_secs: u64,
    status: StatusCode,
    body: &str,
) -> Response<Body> {
    lock(&state.stats).refused(rule);
    counter.inc();
    let retry = retry_after_secs.to_string();
    let headers = [(header::RETRY_AFTER, retry.as_str()), (header::HeaderName::from_static("x-levee-rule"), &**rule)];
    local(status, &headers, body.to_owned())
}

fn local(status: StatusCode, headers: &[(header::HeaderName, &str)], body: String) -> Response<Body> {
    let mut res = Response::new(Body::Local(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            res.headers_mut().insert(k.clone(), v);
        }
    }
    res
}

const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1). As names, not
/// strings: a string is parsed into a name at every removal.
const HOPS: usize = 8;
const HOP_BY_HOP: [header::HeaderName; HOPS] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the message's few headers says which hop-by-hop ones it has: removing all
    // eight by name would hash each name on every message, a tenth of the proxy's work.
    let mut present = [false; HOPS];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    // Headers the Connection header names are hop-by-hop too. Nearly every Connection header
    // says only keep-alive or close, which name no other header.
    if present[0] {
        let named: Vec<header::HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|t| header::HeaderName::from_bytes(t).ok())
            .collect();
        for h in named {
            headers.remove(h);
        }
    }
    for (h, here) in HOP_BY_HOP.into_iter().zip(present) {
        if here {
            headers.remove(h);
        }
    }
}

/// The X-Forwarded-For this edge sends on: the list it got (every such header, in order), then
/// `peer`. IPv4 is written by hand: the standard formatter took a twentieth of the proxy's work.
fn forwarded_for(prev: http::header::GetAll<'_, HeaderValue>, peer: IpAddr) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(64);
    for p in prev {
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b", ");
    }
    match peer {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// Handles one request.
pub async fn handle(
    state: Arc<EdgeState>,
    upstream: Arc<UpstreamPool>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let settings = state.settings.load();
    let src = state.source(peer, req.headers(), &settings);
    let class = settings.classifier.classify(req.headers(), req.uri().path());
    let check = state.rules.load().check(&src, class, unix_now());
    // What is let through is counted: a limited source then shows at its limit and a contained
    // surge stops looking like one, so detection sees what still reaches the upstream.
    // Allowlisted traffic is left out, so no baseline or aggregate is made of it.
    if check.outcome == Outcome::Pass {
        if settings.allowlist.iter().any(|n| n.contains(&src.ip)) {
            lock(&state.stats).allowlisted += 1;
        } else {
            lock(&state.counter).count(&src, class);
        }
    }
    if let Some(rule) = &check.shadow_limited {
        lock(&state.stats).shadow_refused(rule);
        state.metrics.shadow_limited.inc();
    }
    match check.outcome {
        Outcome::Pass => {}
        Outcome::Limited { rule, retry_after_secs } => {
            let (status, body) = (StatusCode::TOO_MANY_REQUESTS, "rate limited by levee\n");
            return Ok(come_back_later(&state, &state.metrics.limited, &rule, retry_after_secs, status, body));
        }
        Outcome::Gated { rule, retry_after_secs } => {
            let status = StatusCode::SERVICE_UNAVAILABLE;
            let body = "the service is warming up: levee admits a share of clients, rising; retry shortly\n";
            return Ok(come_back_later(&state, &state.metrics.gated, &rule, retry_after_secs, status, body));
        }
        Outcome::Blocked { rule, reason } => {
            lock(&state.stats).refused(&rule);
            state.metrics.blocked.inc();
            return Ok(local(
                StatusCode::FORBIDDEN,
                &[(header::HeaderName::from_static("x-levee-rule"), &rule)],
                format!("blocked by levee: {reason}\n"),
            ));
        }
    }
    drop(settings);

    let started = state.now();
    // Seconds until the breaker probes again, when it refuses this call.
    let refused_for = {
        let mut b = lock(&state.breaker);
        let allowed = b.1.allow(started);
        if !allowed {
            b.2.refused += 1;
        }
        state.metrics.breaker_open.set(i64::from(matches!(b.1.state(), State::Open { .. })));
        (!allowed).then(|| b.0.open_for_secs.ceil().max(1.0) as u64)
    };
    if let Some(retry) = refused_for {
        state.metrics.breaker_refused.inc();
        return Ok(local(
            StatusCode::SERVICE_UNAVAILABLE,
            &[(header::RETRY_AFTER, &retry.to_string())],
            format!("upstream {} is failing; levee's circuit breaker is open\n", state.cfg.upstream_name),
        ));
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = forwarded_for(parts.headers.get_all(X_FORWARDED_FOR), peer) {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    let result =
        tokio::time::timeout(state.cfg.upstream_timeout, upstream.send(Request::from_parts(parts, body))).await;
    let ended = state.now();
    state.metrics.upstream_seconds.observe(ended - started);
    let (response, failed) = match result {
        Ok(Ok(mut res)) => {
            let failed = res.status().is_server_error();
            strip_hop_by_hop(res.headers_mut());
            state.metrics.forwarded.inc();
            (res.map(Body::Upstream), failed)
        }
        Ok(Err(e)) => {
            debug!(error = %e, "upstream request failed");
            state.metrics.upstream_errors.inc();
            (local(StatusCode::BAD_GATEWAY, &[], format!("upstream {} unreachable\n", state.cfg.upstream_name)), true)
        }
        Err(_) => {
            state.metrics.upstream_errors.inc();
            (local(StatusCode::GATEWAY_TIMEOUT, &[], format!("upstream {} timed out\n", state.cfg.upstream_name)), true)
        }
    };
    let mut b = lock(&state.breaker);
    b.1.record(started, ended, failed);
    b.2.calls += 1;
    b.2.failures += u64::from(failed);
    state.metrics.breaker_open.set(i64::from(matches!(b.1.state(), State::Open { .. })));
    Ok(response)
}

/// Binds `addr` `workers` times with `SO_REUSEPORT`, so the kernel spreads connections over
/// the workers. Errors here (address in use, no permission) are the caller's to report.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::new();
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        // Port 0: the others join the port the first one got.
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Serves every listener on a thread of its own (a single-threaded runtime each, like nginx's
/// workers: a request never hops between threads) until `shutdown`, then lets open requests
/// finish for up to 10 s.
pub async fn serve(listeners: Vec<std::net::TcpListener>, state: Arc<EdgeState>, shutdown: CancellationToken) {
    let mut done = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new().name(format!("edge-worker-{i}")).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(async move {
                    match TcpListener::from_std(l) {
                        Ok(l) => serve_worker(l, state, shutdown).await,
                        Err(e) => warn!(error = %e, "edge worker cannot listen"),
                    }
                }),
                Err(e) => warn!(error = %e, "edge worker cannot start its runtime"),
            }
            let _ = tx.send(());
        });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => warn!(error = %e, "cannot start edge worker thread"),
        }
    }
    for rx in done {
        let _ = rx.await;
    }
}

/// How often each worker's heartbeat timer fires; see [`heartbeat`].
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Keeps the worker's time driver from being woken through its eventfd by every request.
///
/// Each request sets timers: hyper's head-read timeout and the upstream timeout. Tokio wakes
/// a parked time driver whenever a timer is set to fire before the moment the driver is
/// parked toward, and under load the driver often parks with only the far upstream timeouts
/// (or nothing) pending, so a new 10 s head timeout is earlier. On a worker's own thread that
/// wake is a wasted `write` to the eventfd and an extra trip through `epoll_wait`, measured at
/// about one in five requests. A timer that never lies more than `HEARTBEAT` ahead keeps the
/// driver's next wake sooner than any request timer, at the cost of two wake-ups a second.
async fn heartbeat() {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

async fn serve_worker(listener: TcpListener, state: Arc<EdgeState>, shutdown: CancellationToken) {
    // Ends with the worker's runtime, when this function returns.
    tokio::spawn(heartbeat());
    let upstream = UpstreamPool::new(state.upstream_addr.clone(), state.cfg.upstream_timeout);
    let slots = Arc::new(Semaphore::new(state.cfg.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.cfg.header_timeout)
        .max_header_size(state.cfg.max_header_bytes)
        .max_buf_size(state.cfg.max_header_bytes.max(8192) * 2)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (st, up) = (state.clone(), upstream.clone());
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| handle(st.clone(), up.clone(), peer.ip(), req)),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    info!("edge worker stopping: finishing open requests");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        warn!("open requests did not finish within 10s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Trace-Hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-trace-hop", "1"),
            ("x-request-id", "abc"),
            ("content-type", "text/plain"),
        ] {
            h.append(header::HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(header::HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-request-id"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("shop"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1, "nothing to strip");

        // What most upstreams send: only the Connection header itself goes.
        let mut usual = HeaderMap::new();
        usual.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        usual.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        usual.append(header::CONNECTION, HeaderValue::from_static(" close ,X-Other"));
        usual.insert(header::HeaderName::from_static("x-other"), HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut usual);
        let left: Vec<&str> = usual.keys().map(header::HeaderName::as_str).collect();
        assert_eq!(left, ["content-length"]);
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_every_header_received() {
        let xff = |values: &[&'static str], peer: &str| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
            }
            forwarded_for(h.get_all(X_FORWARDED_FOR), peer.parse().unwrap()).unwrap().to_str().unwrap().to_owned()
        };
        for ip in ["0.0.0.0", "10.20.255.7", "1.100.9.99", "255.255.255.255", "192.0.2.10"] {
            assert_eq!(xff(&[], ip), ip);
        }
        assert_eq!(xff(&[], "2001:db8::1"), "2001:db8::1");
        assert_eq!(xff(&["203.0.113.9"], "10.0.0.1"), "203.0.113.9, 10.0.0.1");
        assert_eq!(
            xff(&["198.51.100.1, 203.0.113.9", "192.0.2.1"], "10.0.0.1"),
            "198.51.100.1, 203.0.113.9, 192.0.2.1, 10.0.0.1"
        );
    }
}
