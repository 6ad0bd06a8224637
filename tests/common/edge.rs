//! Helpers for edge tests: a real upstream on loopback, `levee edge` as a child process, and a
//! bounded load generator that speaks for many sources through `X-Forwarded-For`.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, routing::any};
use tokio::process::{Child, Command};

use super::{env, free_port};

/// An HTTP upstream that answers 200 (or 500 while `failing`) and counts what it served.
#[derive(Clone)]
pub struct Upstream {
    pub port: u16,
    pub failing: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Self { port, failing: Arc::default(), served: Arc::default() };
        let app = Router::new().fallback(any(|State(u): State<Upstream>| async move {
            u.served.fetch_add(1, Ordering::Relaxed);
            if u.failing.load(Ordering::Relaxed) {
                (StatusCode::INTERNAL_SERVER_ERROR, "failing\n")
            } else {
                (StatusCode::OK, "ok\n")
            }
        }));
        tokio::spawn(axum::serve(listener, app.with_state(up.clone())).into_future());
        up
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A pager webhook on loopback: records each page's JSON body with the time it arrived.
#[derive(Clone, Default)]
pub struct PageReceiver {
    pub pages: Arc<std::sync::Mutex<Vec<(Instant, serde_json::Value)>>>,
    pub port: u16,
}

impl PageReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = Self { port: listener.local_addr().unwrap().port(), ..Self::default() };
        let pages = me.pages.clone();
        let app = Router::new().fallback(any(move |body: axum::Json<serde_json::Value>| async move {
            pages.lock().unwrap().push((Instant::now(), body.0));
            StatusCode::ACCEPTED
        }));
        tokio::spawn(axum::serve(listener, app).into_future());
        me
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/page", self.port)
    }

    /// The bodies received so far, in order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.pages.lock().unwrap().iter().map(|(_, b)| b.clone()).collect()
    }
}

/// `levee edge` as a child process.
pub struct Edge {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
}

impl Edge {
    /// Starts an edge in front of `upstream` with extra arguments, and waits until ready.
    pub async fn start(upstream: &str, extra: &[&str]) -> Self {
        Self::start_as(upstream, None, extra).await
    }

    /// Like [`Edge::start`], authenticating with `kubeconfig` instead of the stack's admin.
    pub async fn start_as(upstream: &str, kubeconfig: Option<&std::path::Path>, extra: &[&str]) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_levee"));
        cmd.args(["edge", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}"), "--upstream", upstream])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        match (kubeconfig, std::env::var("KUBECONFIG")) {
            (Some(kc), _) => {
                cmd.env("KUBECONFIG", kc);
            }
            (None, Ok(kc)) => {
                cmd.env("KUBECONFIG", kc);
            }
            (None, Err(_)) => {}
        }
        let child = cmd.spawn().expect("spawn levee edge");
        let edge = Self { child, port, admin_port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(edge.admin("/readyz")).await
                && r.status().is_success()
            {
                return edge;
            }
            assert!(Instant::now() < deadline, "edge not ready within 20s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The value of one unlabelled metric on the admin port.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = reqwest::get(self.admin("/metrics")).await.unwrap().text().await.unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// What one source saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub limited: u64,
    pub other: u64,
    /// Seconds from the start of its load to its first 429.
    pub first_limited_after: Option<f64>,
}

/// Sends `rate` requests/s as `source` (in `X-Forwarded-For`) for `secs`, to `url`.
pub async fn load(url: String, source: String, rate: f64, secs: f64) -> Tally {
    let client = reqwest::Client::builder().pool_max_idle_per_host(8).build().unwrap();
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * secs) as u64;
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for _ in 0..total {
        tick.tick().await;
        if start.elapsed().as_secs_f64() > secs + 5.0 {
            break;
        }
        match client.get(&url).header("x-forwarded-for", &source).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => tally.ok += 1,
            Ok(429) => {
                tally.limited += 1;
                tally.first_limited_after.get_or_insert(start.elapsed().as_secs_f64());
            }
            _ => tally.other += 1,
        }
    }
    tally
}

/// Runs `kubectl` from the test stack; returns its stdout, panicking with stderr on failure.
pub async fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(env("LEVEE_KUBECTL"))
        .args(args)
        .env("KUBECONFIG", env("KUBECONFIG"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
