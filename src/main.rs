use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The edge allocates and frees a few small buffers per request on every worker thread. With
/// mimalloc's thread-local heaps `levee edge` spent about 15% less CPU per proxied request
/// than with glibc's allocator (`hack/bench-edge.sh`'s set-up, CPU time over requests served).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// levee: scales ahead of demand, guards the edge, and brings services back from zero.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LEVEE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The detectors `levee nab` can score.
#[derive(Clone, Copy, clap::ValueEnum)]
enum NabDetector {
    /// Transition novelty (first-seen steps between quantised levels).
    Novelty,
    /// The robust EWMA/MAD baseline the traffic guard uses.
    Robust,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG (or in-cluster config).
    Run {
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:8080", env = "LEVEE_LISTEN")]
        listen: SocketAddr,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "LEVEE_NAMESPACE")]
        namespace: Option<String>,
        /// How often each ScalingPolicy is planned.
        #[arg(long, default_value = "5s", env = "LEVEE_TICK")]
        tick: levee::api::Duration,
        /// Prometheus for signals that do not name one.
        #[arg(long, env = "LEVEE_PROMETHEUS_URL")]
        prometheus_url: Option<String>,
        /// AWS endpoint override (for an emulator such as moto).
        #[arg(long, env = "LEVEE_AWS_ENDPOINT")]
        aws_endpoint: Option<String>,
        /// Where pages to a PagerDuty routing key are sent (a TrafficGuard's `page` route
        /// holding a URL is posted to directly).
        #[arg(long, default_value = levee::operator::pager::PAGERDUTY_EVENTS_URL, env = "LEVEE_PAGERDUTY_URL")]
        pagerduty_url: String,
        /// Namespace of the pause ConfigMap `levee-pause` (see `levee pause`).
        #[arg(long, default_value = "levee", env = "LEVEE_CONTROL_NAMESPACE")]
        control_namespace: String,
    },
    /// Run the edge: a reverse proxy that enforces the pool's Mitigations, protects its upstream
    /// with a circuit breaker and reports traffic to the operator.
    Edge(Box<EdgeArgs>),
    /// Replay a scenario in a simulated platform: autoscalers compared, or the traffic guard
    /// against attacks (no cluster needed).
    Simulate(levee::cli::SimulateArgs),
    /// Score the forecaster on a recorded `timestamp,count` CSV (rolling origin).
    Backtest {
        /// The trace, e.g. ../shared/data/traces/nasa_http_1995_07_1min.csv.
        #[arg(long)]
        trace: PathBuf,
        /// How far ahead to forecast.
        #[arg(long, default_value = "15m")]
        horizon: levee::api::Duration,
        /// Bucket width the series is averaged over.
        #[arg(long, default_value = "5m")]
        step: levee::api::Duration,
        /// Band quantile in (0, 1).
        #[arg(long, default_value_t = 0.9)]
        quantile: f64,
        /// History before scoring starts. Default: a day on a trace of two days or more (MASE
        /// is then against the same bucket a day earlier), else 30 minutes (MASE against the
        /// last bucket seen).
        #[arg(long)]
        warmup: Option<levee::api::Duration>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the anomaly detector over NAB-format CSVs and score it with NAB's method.
    Nab {
        /// Directory holding the data files named in --windows.
        #[arg(long, default_value = "../shared/data/nab")]
        data: PathBuf,
        /// NAB's windows.json (default: windows.json in --data).
        #[arg(long)]
        windows: Option<PathBuf>,
        /// Print the scores as JSON.
        #[arg(long)]
        json: bool,
        /// Write every flagged point as CSV `file,timestamp`.
        #[arg(long)]
        detections: Option<PathBuf>,
        /// Which detector to score: transition novelty, or the robust baseline.
        #[arg(long, value_enum, default_value_t = NabDetector::Novelty)]
        detector: NabDetector,
        /// Novelty: quantisation levels across the warm-up range.
        #[arg(long, default_value_t = 6)]
        levels: u32,
        /// Robust: flag at this many robust deviations from the baseline.
        #[arg(long, default_value_t = levee::engine::detect::DetectorConfig::default().threshold)]
        threshold: f64,
        /// Robust: weight of each new point in the baseline.
        #[arg(long, default_value_t = levee::engine::detect::DetectorConfig::default().alpha)]
        alpha: f64,
        /// Robust: points after a flag with no new flag.
        #[arg(long, default_value_t = levee::engine::detect::DetectorConfig::default().cooldown)]
        cooldown: usize,
    },
    /// Show what the operator is doing and what needs a human, from its on-call status API.
    Status {
        /// The operator's URL (reach one in a cluster with
        /// `kubectl -n levee port-forward deploy/levee 8080`).
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "LEVEE_OPERATOR_URL")]
        operator: String,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop levee from changing anything, cluster-wide, until `levee resume` (or `--for`):
    /// policies are planned and recorded as in Shadow mode.
    Pause {
        /// Why, for whoever looks at `levee status` next.
        #[arg(long)]
        reason: String,
        /// Resume by itself after this long (e.g. 2h); never when unset.
        #[arg(long = "for")]
        for_: Option<levee::api::Duration>,
        /// Namespace of the pause ConfigMap: the operator's `--control-namespace`.
        #[arg(long, default_value = "levee", env = "LEVEE_CONTROL_NAMESPACE")]
        control_namespace: String,
    },
    /// Undo `levee pause`: policies act as their mode says again.
    Resume {
        /// Namespace of the pause ConfigMap: the operator's `--control-namespace`.
        #[arg(long, default_value = "levee", env = "LEVEE_CONTROL_NAMESPACE")]
        control_namespace: String,
    },
    /// Write the CRDs generated from the code (or check or apply them).
    Crd {
        /// Directory the CRD files are written to.
        #[arg(long, default_value = "crds")]
        dir: PathBuf,
        /// Fail if the files in --dir differ from the code, instead of writing them.
        #[arg(long, conflicts_with = "apply")]
        check: bool,
        /// Install or update the CRDs in the cluster (server-side apply).
        #[arg(long)]
        apply: bool,
    },
}

#[derive(clap::Args)]
struct EdgeArgs {
    /// Address to serve traffic on.
    #[arg(long, default_value = "0.0.0.0:8000", env = "LEVEE_EDGE_LISTEN")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9100", env = "LEVEE_EDGE_ADMIN_LISTEN")]
    admin_listen: SocketAddr,
    /// The upstream, as http://host:port.
    #[arg(long, env = "LEVEE_EDGE_UPSTREAM")]
    upstream: http::Uri,
    /// The upstream's name in a TrafficGuard's circuitBreakers[].upstream.
    #[arg(long, default_value = "default", env = "LEVEE_EDGE_UPSTREAM_NAME")]
    upstream_name: String,
    /// Edge pool (TrafficGuard and Mitigation spec.edgePool).
    #[arg(long, default_value = "default", env = "LEVEE_EDGE_POOL")]
    pool: String,
    /// Namespace of the pool's TrafficGuard and Mitigations.
    #[arg(long, default_value = "default", env = "LEVEE_NAMESPACE")]
    namespace: String,
    /// Run without a cluster: no Mitigations, default breaker settings.
    #[arg(long)]
    standalone: bool,
    /// The operator's URL for traffic reports (for example http://levee:8080).
    #[arg(long, env = "LEVEE_OPERATOR_URL")]
    operator_url: Option<String>,
    /// How often traffic is reported.
    #[arg(long, default_value = "1s", env = "LEVEE_EDGE_REPORT_INTERVAL")]
    report_interval: levee::api::Duration,
    /// Proxies in front of the edge that append to X-Forwarded-For (0: use the socket).
    #[arg(long, default_value_t = 0, env = "LEVEE_EDGE_TRUSTED_HOPS")]
    trusted_hops: usize,
    /// A CIDR,ASN,COUNTRY file mapping addresses to ASNs and countries.
    #[arg(long, env = "LEVEE_EDGE_PREFIX_TABLE")]
    prefix_table: Option<PathBuf>,
    /// Largest request head (request line and headers) accepted; more gets 431.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1024..=1048576))]
    max_header_bytes: u32,
    /// A client must send its request head within this time, or is disconnected.
    #[arg(long, default_value = "10s")]
    header_timeout: levee::api::Duration,
    /// An upstream response whose head is slower than this gets 504; one whose body then
    /// sends nothing for this long is cut off (the client's connection ends early).
    #[arg(long, default_value = "30s")]
    upstream_timeout: levee::api::Duration,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 10000)]
    max_connections: usize,
    /// Worker threads serving traffic, each with its own listening socket (0: one per core
    /// this process may use, cgroup CPU limits included).
    #[arg(long, default_value_t = 0, env = "LEVEE_EDGE_WORKERS")]
    workers: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                listen,
                namespace,
                tick,
                prometheus_url,
                aws_endpoint,
                pagerduty_url,
                control_namespace,
            } => {
                let scaler = levee::operator::scaling::ScalerConfig { tick: tick.0, prometheus_url, aws_endpoint };
                let config = levee::operator::RunConfig { listen, namespace, scaler, pagerduty_url, control_namespace };
                levee::operator::run(config).await
            }
            Command::Edge(args) => {
                let EdgeArgs {
                    listen,
                    admin_listen,
                    upstream,
                    upstream_name,
                    pool,
                    namespace,
                    standalone,
                    operator_url,
                    report_interval,
                    trusted_hops,
                    prefix_table,
                    max_header_bytes,
                    header_timeout,
                    upstream_timeout,
                    max_connections,
                    workers,
                } = *args;
                let proxy = levee::edge::proxy::ProxyConfig {
                    upstream,
                    upstream_name,
                    trusted_hops,
                    max_header_bytes: max_header_bytes as usize,
                    header_timeout: header_timeout.0,
                    upstream_timeout: upstream_timeout.0,
                    max_connections,
                    counter: levee::edge::counter::CounterConfig::default(),
                };
                levee::edge::run::run(levee::edge::run::EdgeConfig {
                    listen,
                    admin_listen,
                    proxy,
                    pool,
                    namespace,
                    standalone,
                    operator_url,
                    report_interval: report_interval.0,
                    prefix_table,
                    workers,
                })
                .await
            }
            Command::Simulate(args) => levee::cli::simulate(args),
            Command::Backtest { trace, horizon, step, quantile, warmup, json } => {
                levee::cli::backtest(&trace, horizon, step, quantile, warmup, json)
            }
            Command::Nab { data, windows, json, detections, detector, levels, threshold, alpha, cooldown } => {
                let windows = windows.unwrap_or_else(|| data.join("windows.json"));
                let detector = match detector {
                    NabDetector::Novelty => levee::replay::nab::Detector::Novelty { levels },
                    NabDetector::Robust => {
                        levee::replay::nab::Detector::Robust(levee::engine::detect::DetectorConfig {
                            threshold,
                            alpha,
                            cooldown,
                            ..levee::engine::detect::DetectorConfig::default()
                        })
                    }
                };
                levee::cli::nab(&data, &windows, detector, json, detections.as_deref())
            }
            Command::Status { operator, json } => levee::cli::status(&operator, json).await,
            Command::Pause { reason, for_, control_namespace } => {
                levee::cli::pause(&control_namespace, reason, for_).await
            }
            Command::Resume { control_namespace } => levee::cli::resume(&control_namespace).await,
            Command::Crd { dir, check: true, .. } => levee::cli::check_crds(&dir),
            Command::Crd { apply: true, .. } => levee::cli::apply_crds().await,
            Command::Crd { dir, .. } => levee::cli::write_crds(&dir),
        }
    });
    // Tasks still running (a report in flight, a DNS lookup on the blocking pool) must not
    // hold the exit the signal asked for: dropping the runtime would wait for blocking ones.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
