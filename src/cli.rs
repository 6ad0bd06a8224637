//! Command implementations that are more than a call into a module.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::core::v1::ConfigMap, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::{
    api::{self, Duration, scaling_policy::Seasonality},
    operator::{oncall, pause},
    replay::{backtest, nab, trace::Trace},
    sim::{self, controllers::Kind, report, scenario::Scenario},
};

/// `levee crd`: writes every CRD to `dir`, one file per kind.
pub fn write_crds(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        std::fs::write(&path, api::crd_yaml(&crd)?).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `levee crd --check`: fails, naming each file, when `dir` differs from what the code generates.
pub fn check_crds(dir: &Path) -> anyhow::Result<()> {
    let mut drifted = Vec::new();
    for crd in api::crds() {
        let path = dir.join(api::crd_file_name(&crd));
        let want = api::crd_yaml(&crd)?;
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => drifted.push(format!("{} differs from the code", path.display())),
            Err(e) => drifted.push(format!("{}: {e}", path.display())),
        }
    }
    if !drifted.is_empty() {
        bail!("CRDs are out of date (run `levee crd` and commit):\n  {}", drifted.join("\n  "));
    }
    println!("{} CRDs in {} match the code", api::crds().len(), dir.display());
    Ok(())
}

/// `levee status`: the operator's on-call status, as a table or as JSON.
pub async fn status(operator: &str, json: bool) -> anyhow::Result<()> {
    let url = format!("{}/status", operator.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let res = client.get(&url).send().await.with_context(|| {
        format!("cannot reach the operator at {url} (in a cluster: `kubectl -n levee port-forward deploy/levee 8080`)")
    })?;
    let code = res.status();
    let body = res.text().await.with_context(|| format!("cannot read the answer of {url}"))?;
    if !code.is_success() {
        bail!("{url} answered {code}: {}", body.trim());
    }
    let snapshot: oncall::Snapshot =
        serde_json::from_str(&body).with_context(|| format!("{url} did not answer a levee status document"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{}", snapshot.render());
    }
    Ok(())
}

/// `levee pause`: writes the pause ConfigMap (server-side apply, so pausing again replaces
/// the reason and the end).
pub async fn pause(namespace: &str, reason: String, for_: Option<Duration>) -> anyhow::Result<()> {
    let client = kube_client().await?;
    // Whole seconds: the ConfigMap is read by people too.
    let now = k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())?;
    let until = match for_ {
        Some(d) => Some(now.checked_add(d.0).context("--for is too long")?),
        None => None,
    };
    let paused = pause::Paused { reason, since: Some(now), until };
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let cm = paused.to_configmap(namespace);
    api.patch(pause::CONFIGMAP, &PatchParams::apply("levee-cli").force(), &Patch::Apply(&cm))
        .await
        .with_context(|| format!("cannot write ConfigMap {namespace}/{}", pause::CONFIGMAP))?;
    println!("{}", paused.sentence());
    println!("(ConfigMap {namespace}/{}; `levee resume` undoes it)", pause::CONFIGMAP);
    Ok(())
}

/// `levee resume`: deletes the pause ConfigMap.
pub async fn resume(namespace: &str) -> anyhow::Result<()> {
    let client = kube_client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    match api.delete(pause::CONFIGMAP, &Default::default()).await {
        Ok(_) => println!("resumed: deleted ConfigMap {namespace}/{}", pause::CONFIGMAP),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            println!("levee was not paused: no ConfigMap {namespace}/{}", pause::CONFIGMAP)
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot delete ConfigMap {namespace}/{}", pause::CONFIGMAP));
        }
    }
    Ok(())
}

/// The cluster in KUBECONFIG (or the in-cluster configuration).
async fn kube_client() -> anyhow::Result<Client> {
    Client::try_default().await.context("no Kubernetes configuration: set KUBECONFIG")
}

/// `levee crd --apply`: installs or updates every CRD by server-side apply.
pub async fn apply_crds() -> anyhow::Result<()> {
    let client = kube_client().await?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("levee").force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("cannot apply CRD {name}"))?;
        println!("applied {name}");
    }
    Ok(())
}

/// A progress line on stderr for long work, only when stderr is a terminal.
pub fn progress(label: &'static str) -> impl FnMut(f64) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut last = -1i64;
    move |fraction: f64| {
        let pct = (fraction * 100.0) as i64;
        if tty && pct != last {
            last = pct;
            eprint!("\r{label}: {pct:3}%");
            if pct >= 100 {
                eprintln!();
            }
        }
    }
}

/// `levee backtest`.
pub fn backtest(
    path: &Path,
    horizon: Duration,
    step: Duration,
    quantile: f64,
    warmup: Option<Duration>,
    json: bool,
) -> anyhow::Result<()> {
    if !(quantile > 0.0 && quantile < 1.0) {
        bail!("--quantile must be in (0, 1), got {quantile}");
    }
    if step.as_secs_f64() <= 0.0 || horizon.as_secs_f64() <= 0.0 {
        bail!("--step and --horizon must be positive");
    }
    let trace = Trace::load(path)?;
    let cfg = backtest::BacktestConfig {
        horizon_secs: horizon.as_secs_f64(),
        step_secs: step.as_secs_f64(),
        quantile,
        warmup_secs: warmup.map(|w| w.as_secs_f64()),
        seasonality: Seasonality::Auto,
    };
    let report = backtest::run(&trace, cfg, progress("backtest")).with_context(|| {
        let warmup = warmup.map_or_else(|| "the warm-up".to_owned(), |w| w.to_string());
        format!("{} is too short to score: it needs more than {warmup} plus {horizon} of data", path.display())
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "backtest of {} ({} points scored, buckets of {}s, horizon {}s)",
        path.display(),
        report.points,
        report.step_secs,
        report.horizon_secs
    );
    println!(
        "  MAPE      {:6.2} %   (over {} non-zero actuals; median APE {:.2} %)",
        report.mape,
        report.points - report.zero_actuals,
        report.mdape
    );
    println!(
        "            {:6.2} %   without the trace's {} holes (buckets below {} of the median of the day before them)",
        report.mape_without_holes,
        report.holes,
        backtest::HOLE_FRACTION
    );
    println!(
        "  noise     {:6.2} %   MAPE of an oracle averaging the buckets either side (it sees the future)",
        report.noise_floor_mape
    );
    println!("            {:6.2} %   the same without the holes", report.noise_floor_without_holes);
    println!("  MASE      {:6.3}     (vs. {}; < 1 beats it)", report.mase, report.baseline.describe());
    println!(
        "  coverage  {:6.1} %   inside the band (nominal {:.0} %); {:.1} % at or below its upper edge",
        report.coverage * 100.0,
        report.nominal_coverage * 100.0,
        report.upper_coverage * 100.0
    );
    let models: Vec<String> = report.models.iter().map(|(m, n)| format!("{m} {n}")).collect();
    println!("  models    {}", models.join(", "));
    println!("  worst     {} points add {:.2} points of MAPE:", report.worst.len(), report.worst_share);
    for w in &report.worst {
        let time = chrono::DateTime::from_timestamp_millis((w.time * 1000.0) as i64)
            .map_or_else(|| format!("{}s", w.time), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        println!("            {time}  actual {:.3}/s  forecast {:.3}/s  APE {:.0} %", w.actual, w.forecast, w.ape);
    }
    Ok(())
}

/// Arguments of `levee simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// A built-in scenario (incident, nasa, diurnal; surge, flood and flash-crowd for the traffic guard)
    /// or a scenario file. Default: incident, or nasa when --trace is given.
    #[arg(long)]
    pub scenario: Option<String>,
    /// A `timestamp,count` CSV replayed as the arrival process (replaces the scenario's).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Multiplies the --trace's rates. Default: fitted to the scenario's API, so that the
    /// trace's busiest minutes need 40% of its maxReplicas (rounded to 1, 2 or 5 × 10^k).
    #[arg(long, requires = "trace")]
    pub trace_scale: Option<f64>,
    /// Seed for arrival noise (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Simulation step (default: the scenario's).
    #[arg(long)]
    pub step: Option<Duration>,
    /// Controllers to compare.
    #[arg(long, value_delimiter = ',', default_value = "none,hpa,keda,levee")]
    pub controllers: Vec<Kind>,
    /// Print the summary as JSON instead of the table and timeline.
    #[arg(long)]
    pub json: bool,
    /// Where to write the HTML report (default: levee-simulate-<scenario>.html).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Decisions shown in the printed timeline.
    #[arg(long, default_value_t = 25)]
    pub timeline: usize,
    /// Require the scenario's TrafficGuard (its `trafficGuard`) in front of levee's
    /// platform. It is there by default when the scenario has one and no --trace is given:
    /// the traffic is simulated client by client first, which takes some seconds.
    #[arg(long, conflicts_with = "no_traffic_guard")]
    pub traffic_guard: bool,
    /// Leave the scenario's TrafficGuard out: levee's platform sees the whole surge.
    #[arg(long)]
    pub no_traffic_guard: bool,
}

/// `levee simulate`.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let name = args.scenario.as_deref().unwrap_or(if args.trace.is_some() { "nasa" } else { "incident" });
    if let Some(guard) = sim::guard::scenario::GuardScenario::load(name) {
        return simulate_guard(guard?, &args);
    }
    let mut scenario = Scenario::load(name)?;
    let guard = match (args.traffic_guard, args.no_traffic_guard) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    match guard {
        Some(true) if scenario.traffic_guard.is_none() => {
            bail!("scenario {name} has no trafficGuard section for --traffic-guard")
        }
        Some(true) if args.trace.is_some() => {
            bail!("--traffic-guard simulates the scenario's own clients; it cannot be combined with --trace")
        }
        Some(true) => {}
        // Left out, or a replayed trace replaces the clients the guard would simulate.
        Some(false) => scenario.traffic_guard = None,
        None if args.trace.is_some() => scenario.traffic_guard = None,
        None => {}
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(step) = args.step {
        if step.as_secs_f64() <= 0.0 {
            bail!("--step must be positive");
        }
        scenario.step = step;
    }
    let trace_path = args.trace.clone().or_else(|| scenario.arrivals.trace.as_ref().map(PathBuf::from));
    let trace = match &trace_path {
        Some(p) => {
            let t = Trace::load(p).with_context(|| {
                format!("scenario {name} replays {}; run from the project root or pass --trace", p.display())
            })?;
            if args.trace.is_some() {
                // A trace given on the command line sets the length of the run and, unless
                // told, its scale: a trace of any size is fitted to the scenario's fleet.
                scenario.duration = Duration(std::time::Duration::from_secs_f64(t.duration()));
                let (scale, how) = match args.trace_scale {
                    Some(s) if s.is_finite() && s > 0.0 => (s, "--trace-scale"),
                    Some(s) => bail!("--trace-scale must be a positive number, got {s}"),
                    None => (
                        scenario.fitted_trace_scale(&t),
                        "fitted: its busiest minutes need 40% of maxReplicas; --trace-scale to change",
                    ),
                };
                scenario.arrivals.trace = Some(p.display().to_string());
                scenario.arrivals.trace_scale = scale;
                scenario.description =
                    format!("{} (x{scale}, {how}) replayed against the platform of scenario {name}", p.display());
            }
            Some(t)
        }
        None => None,
    };
    if args.controllers.is_empty() {
        bail!("--controllers needs at least one of none, hpa, keda, levee");
    }
    let started = std::time::Instant::now();
    let runs = sim::run(&scenario, trace.as_ref(), &args.controllers, progress("simulate"));
    let elapsed = started.elapsed();
    let path = args.report.unwrap_or_else(|| PathBuf::from(format!("levee-simulate-{}.html", scenario.name)));
    std::fs::write(&path, report::html(&scenario, &runs))
        .with_context(|| format!("cannot write {}", path.display()))?;
    if args.json {
        println!("{}", report::json(&scenario, &runs)?);
        return Ok(());
    }
    println!("scenario {}: {}", scenario.name, scenario.description);
    if let Some(p) = &trace_path {
        println!("arrivals: {} x{}", p.display(), scenario.arrivals.trace_scale);
    }
    println!();
    print!("{}", report::table(&runs));
    if let Some(levee) = runs.iter().find(|r| r.summary.controller == "levee") {
        let guard = report::guard_lines(levee);
        if !guard.is_empty() {
            println!("\nlevee's TrafficGuard (only levee's platform has one in front):\n{guard}");
        }
        println!("\nlevee's decisions:");
        print!("{}", report::timeline(&scenario, levee, args.timeline));
        if let Some(l) = levee.learned_lead_time {
            println!("learned API lead time: {l:.0}s");
        }
    }
    println!("\nreport: {}   ({} controllers simulated in {:.1}s)", path.display(), runs.len(), elapsed.as_secs_f64());
    Ok(())
}

/// `levee simulate` of a guard scenario: no guard against levee's TrafficGuard.
fn simulate_guard(mut scenario: sim::guard::scenario::GuardScenario, args: &SimulateArgs) -> anyhow::Result<()> {
    if args.trace.is_some() {
        bail!(
            "--trace replays arrivals of an autoscaling scenario; guard scenario {} has its own clients",
            scenario.name
        );
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let started = std::time::Instant::now();
    let runs = sim::guard::run(&scenario, progress("simulate"));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    println!("scenario {}: {}", scenario.name, scenario.description);
    println!();
    print!("{}", sim::guard::table(&runs));
    println!(
        "
(simulated in {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `levee nab`.
pub fn nab(
    data: &Path,
    windows: &Path,
    detector: nab::Detector,
    json: bool,
    detections_out: Option<&Path>,
) -> anyhow::Result<()> {
    match detector {
        nab::Detector::Robust(cfg) if !(cfg.alpha > 0.0 && cfg.alpha <= 1.0 && cfg.threshold > 0.0) => {
            bail!("--alpha must be in (0, 1] and --threshold positive")
        }
        nab::Detector::Novelty { levels } if levels < 2 => bail!("--levels must be at least 2"),
        _ => {}
    }
    let nab::Corpus { series, missing } = nab::load(data, windows)?;
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
        eprintln!(
            "note: {} of the files {} names are not in {} and are left out of the score: {}{}",
            missing.len(),
            windows.display(),
            data.display(),
            shown.join(", "),
            if missing.len() > shown.len() { ", …" } else { "" }
        );
    }
    let detections: Vec<Vec<usize>> = series.iter().map(|s| nab::detect(&s.values, detector)).collect();
    if let Some(path) = detections_out {
        let mut csv = String::from("file,timestamp\n");
        for (s, d) in series.iter().zip(&detections) {
            for &i in d {
                csv.push_str(&format!("{},{}\n", s.name, s.timestamps[i]));
            }
        }
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let scores = nab::score(&series, &detections);
    if json {
        println!("{}", serde_json::to_string_pretty(&scores)?);
    } else {
        println!(
            "NAB scores over {} files, {} windows, {} detections (null detector 0, perfect 100):",
            scores.files, scores.windows, scores.detections
        );
        println!("  standard           {:6.1}", scores.standard);
        println!("  reward_low_FP_rate {:6.1}", scores.low_fp);
        println!("  reward_low_FN_rate {:6.1}", scores.low_fn);
    }
    Ok(())
}
