//! Scenarios: the simulated platform's shape and the traffic it faces, as YAML files.
//! Built-in scenarios live in `src/sim/scenarios/`; any file in the same format can be given.

use std::path::Path;

use serde::Deserialize;

use crate::api::{Duration, ScalingPolicySpec};

/// A complete scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// What the scenario reproduces, in a sentence or two.
    #[serde(default)]
    pub description: String,
    pub duration: Duration,
    /// Simulation step.
    #[serde(default = "one_second")]
    pub step: Duration,
    /// Seed for arrival noise; a run is a function of the scenario and the seed.
    #[serde(default)]
    pub seed: u64,
    /// Wall-clock label of t = 0 (e.g. `21:00`), used in timelines.
    #[serde(default)]
    pub clock_start: Option<String>,
    pub arrivals: Arrivals,
    pub api: ApiService,
    #[serde(default)]
    pub workers: Option<Workers>,
    #[serde(default)]
    pub database: Option<Database>,
    pub slo: Slo,
    /// The policies levee runs with.
    pub policies: Policies,
    /// Whether levee's BootstrapPolicy protections (staged boot from zero, death-spiral
    /// protection) apply in the levee run.
    #[serde(default)]
    pub bootstrap_policy: bool,
    /// A TrafficGuard in front of the API in levee's run: who sends the traffic and the
    /// guard's settings. Each surge becomes an attack from its own sources, and what the
    /// guard lets through (simulated client by client) is what reaches the platform.
    #[serde(default)]
    pub traffic_guard: Option<TrafficGuardSim>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// The arrival process.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arrivals {
    /// Baseline requests per second.
    #[serde(default)]
    pub base: f64,
    /// Amplitude of a daily cycle as a fraction of `base`.
    #[serde(default)]
    pub daily_amplitude: f64,
    /// A `timestamp,count` trace that replaces `base` and the daily cycle.
    #[serde(default)]
    pub trace: Option<String>,
    /// Multiplies the trace's rates (to put a small trace in front of a bigger service).
    #[serde(default = "one")]
    pub trace_scale: f64,
    /// Add Poisson noise.
    #[serde(default = "yes")]
    pub poisson: bool,
    /// Surges on top of the baseline.
    #[serde(default)]
    pub surges: Vec<Surge>,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// A surge: jumps to `onset` × baseline at `start`, ramps on to `multiplier` × baseline,
/// holds, and stops at `end`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Surge {
    pub start: Duration,
    pub ramp: Duration,
    pub multiplier: f64,
    pub end: Duration,
    /// The multiple of the baseline reached at once (1: the ramp starts from the baseline).
    #[serde(default = "one")]
    pub onset: f64,
}

impl Surge {
    /// The extra rate at `t`, as a multiple of the baseline.
    pub fn extra(&self, t: f64) -> f64 {
        ramped(t, self.start, self.ramp, self.end, self.onset - 1.0, self.multiplier - 1.0)
    }
}

/// A quantity that is 0 before `start` and from `end`, jumps to `from` at `start` and rises
/// linearly to `to` over `ramp`.
pub fn ramped(t: f64, start: Duration, ramp: Duration, end: Duration, from: f64, to: f64) -> f64 {
    let (start, ramp, end) = (start.as_secs_f64(), ramp.as_secs_f64(), end.as_secs_f64());
    if t < start || t >= end {
        return 0.0;
    }
    let done = if ramp > 0.0 { ((t - start) / ramp).min(1.0) } else { 1.0 };
    from + (to - from) * done
}

/// The clients behind a scenario's arrivals, and the TrafficGuard levee runs in front of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficGuardSim {
    /// Who sends the baseline traffic.
    pub legit: Population,
    /// Who sends each surge.
    pub surge: SurgeSources,
    pub guard: crate::sim::guard::scenario::GuardSettings,
    /// How long the guard has watched the baseline before the scenario starts: a guard in
    /// production has learnt its traffic long before a surge.
    #[serde(default = "an_hour")]
    pub history: Duration,
}

fn an_hour() -> Duration {
    Duration::from_secs(3600)
}

/// Legitimate clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Population {
    pub sources: usize,
    pub countries: usize,
    pub asns: usize,
    #[serde(default = "one_per_prefix")]
    pub sources_per_prefix: usize,
}

fn one_per_prefix() -> usize {
    1
}

/// The senders of a surge.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SurgeSources {
    pub sources: usize,
    pub countries: usize,
    pub asns: usize,
    /// How many of its ASNs legitimate clients use too.
    #[serde(default)]
    pub shared_asns: usize,
    /// Fraction built to miss the cache.
    #[serde(default)]
    pub cache_busting: f64,
}

/// The API frontends.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiService {
    /// Requests per second one instance serves.
    pub capacity_per_replica: f64,
    /// Time from scale request to ready.
    pub startup: Duration,
    pub initial_replicas: i64,
    /// A request waiting longer than this fails (504).
    pub request_timeout: Duration,
    /// Health checks: an instance whose requests take longer than `timeout` for `failures`
    /// checks in a row is killed and replaced.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Until this time, instances booting while none is live fail to boot (the incident's
    /// untested cold start).
    #[serde(default)]
    pub cold_start_broken_until: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

/// Background workers draining a queue of records each request creates.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workers {
    /// Records per second one worker writes (if the primary keeps up).
    pub capacity_per_replica: f64,
    pub startup: Duration,
    pub initial_replicas: i64,
    /// Records each served request creates.
    pub records_per_request: f64,
}

/// A primary and its read replicas.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Database {
    /// Writes per second the primary sustains.
    pub primary_write_capacity: f64,
    /// Reads per second one replica serves.
    pub replica_read_capacity: f64,
    pub initial_replicas: i64,
    /// Reads each uncached request makes.
    pub reads_per_request: f64,
    /// Time to create a replica while the primary is idle.
    pub replica_provision: Duration,
    /// Provisioning takes (1 + this × primary utilisation) times longer on a busy primary.
    #[serde(default = "default_hot_slowdown")]
    pub hot_primary_slowdown: f64,
}

fn default_hot_slowdown() -> f64 {
    4.0
}

/// What counts as a bad minute.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slo {
    /// Mean latency above this violates the SLO.
    pub latency: Duration,
    /// A failed fraction above this violates the SLO.
    pub error_ratio: f64,
}

/// levee's policies for the scaled targets.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policies {
    pub api: ScalingPolicySpec,
    #[serde(default)]
    pub workers: Option<ScalingPolicySpec>,
    #[serde(default)]
    pub replicas: Option<ScalingPolicySpec>,
}

/// Built-in scenarios: (name, YAML).
pub const BUILTIN: &[(&str, &str)] = &[
    ("incident", include_str!("scenarios/incident.yaml")),
    ("nasa", include_str!("scenarios/nasa.yaml")),
    ("diurnal", include_str!("scenarios/diurnal.yaml")),
];

/// Every built-in scenario's name, autoscaling and traffic guard, for errors.
fn builtin_names() -> String {
    let names: Vec<&str> = BUILTIN.iter().chain(crate::sim::guard::scenario::BUILTIN).map(|(n, _)| *n).collect();
    names.join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no built-in scenario {0:?} and no such file (built-in: {names})", names = builtin_names())]
    Unknown(String),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("scenario {name}: {message}")]
    Invalid { name: String, message: String },
}

/// A trace given on the command line is scaled so that its busiest minutes need this
/// fraction of the API's `maxReplicas`: enough load that the controllers differ, with room
/// for a forecast's band and a burst above the busiest minutes.
pub const FITTED_LOAD: f64 = 0.4;

/// The number of the form 1, 2 or 5 × 10^k nearest to `x` (> 0) on a log scale: a scale a
/// reader can repeat, and the same one for traces of a similar size.
fn round_to_1_2_5(x: f64) -> f64 {
    let decade = 10f64.powf(x.log10().floor());
    let m = x / decade;
    let nearest = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .min_by(|a: &f64, b: &f64| (m.ln() - a.ln()).abs().total_cmp(&(m.ln() - b.ln()).abs()))
        .unwrap_or(1.0);
    nearest * decade
}

impl Scenario {
    /// The scale that puts `trace` in front of this scenario's API: its busiest minutes
    /// ([`Trace::busy_rate`]) need [`FITTED_LOAD`] of `maxReplicas`. A trace recorded at any
    /// size then exercises the autoscalers instead of idling at `minReplicas` or saturating
    /// at `maxReplicas`, where every controller looks alike. 1 for a trace without traffic.
    pub fn fitted_trace_scale(&self, trace: &crate::replay::trace::Trace) -> f64 {
        let fleet = f64::from(self.policies.api.bounds.max_replicas) * self.api.capacity_per_replica;
        let busy = trace.busy_rate();
        if !(busy > 0.0 && fleet > 0.0) {
            return 1.0;
        }
        round_to_1_2_5(FITTED_LOAD * fleet / busy)
    }

    /// A built-in scenario by name, or a scenario file by path.
    ///
    /// # Errors
    /// Unknown name, unreadable file, or YAML that does not describe a scenario (with the
    /// parser's line and column).
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((_, yaml)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(name_or_path, yaml);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ScenarioError::Unknown(name_or_path.to_owned()));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Io { path: name_or_path.to_owned(), source })?;
        Self::parse(name_or_path, &text)
    }

    pub fn parse(name: &str, yaml: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_saphyr::from_str(yaml)
            .map_err(|e| ScenarioError::Invalid { name: name.to_owned(), message: e.to_string() })?;
        s.check().map_err(|message| ScenarioError::Invalid { name: name.to_owned(), message })?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        use crate::api::validate::{Validate, summarize};
        if self.step.as_secs_f64() <= 0.0 || self.duration.as_secs_f64() <= 0.0 {
            return Err("step and duration must be positive".into());
        }
        if self.api.capacity_per_replica <= 0.0 {
            return Err("api.capacityPerReplica must be positive".into());
        }
        for (which, p) in [
            ("api", Some(&self.policies.api)),
            ("workers", self.policies.workers.as_ref()),
            ("replicas", self.policies.replicas.as_ref()),
        ] {
            if let Some(p) = p {
                let errors = p.validate();
                if !errors.is_empty() {
                    return Err(format!("policies.{which}: {}", summarize(&errors)));
                }
                if p.bounds.min_replicas > p.bounds.max_replicas {
                    return Err(format!("policies.{which}.bounds: minReplicas above maxReplicas"));
                }
            }
        }
        for (i, s) in self.arrivals.surges.iter().enumerate() {
            // NaN fails both comparisons.
            if !(s.onset >= 1.0 && s.onset <= s.multiplier) {
                return Err(format!("arrivals.surges[{i}]: onset must be between 1 and the multiplier"));
            }
        }
        if self.policies.workers.is_some() && self.workers.is_none() {
            return Err("policies.workers given but the scenario has no workers".into());
        }
        if self.policies.replicas.is_some() && self.database.is_none() {
            return Err("policies.replicas given but the scenario has no database".into());
        }
        if let Some((g, _)) = self.guard_scenario() {
            if self.arrivals.trace.is_some() || self.arrivals.daily_amplitude != 0.0 {
                return Err("trafficGuard needs constant baseline arrivals (no trace, no dailyAmplitude)".into());
            }
            if self.arrivals.surges.iter().any(|s| s.multiplier <= 1.0) {
                return Err("trafficGuard: every surge needs a multiplier above 1".into());
            }
            g.check().map_err(|m| format!("trafficGuard: {m}"))?;
        }
        Ok(())
    }

    /// The guard simulation of levee's run: the baseline from the legitimate population,
    /// each surge as an attack with the same onset, ramp and end, all `history` later; and
    /// `history` in whole seconds (the platform's second 0 is the guard's second `history`).
    pub fn guard_scenario(&self) -> Option<(crate::sim::guard::scenario::GuardScenario, usize)> {
        use crate::sim::guard::scenario::{Attack, Database, GuardScenario, Legit};
        let g = self.traffic_guard.as_ref()?;
        let base = self.arrivals.base;
        let history = g.history.as_secs_f64();
        let later = |d: &Duration| Duration(d.0 + std::time::Duration::from_secs_f64(history));
        let scenario = GuardScenario {
            kind: "guard".into(),
            name: format!("{} (traffic guard)", self.name),
            description: String::new(),
            duration: later(&self.duration),
            seed: self.seed,
            legit: Legit {
                sources: g.legit.sources,
                rate: base,
                countries: g.legit.countries,
                asns: g.legit.asns,
                sources_per_prefix: g.legit.sources_per_prefix,
                // The platform models caching and the database; the guard run only decides
                // what gets through.
                cache_miss_ratio: 0.0,
            },
            attacks: self
                .arrivals
                .surges
                .iter()
                .enumerate()
                .map(|(i, s)| Attack {
                    name: format!("surge {}", i + 1),
                    start: later(&s.start),
                    end: later(&s.end),
                    ramp: s.ramp,
                    sources: g.surge.sources,
                    rate: base * (s.multiplier - 1.0),
                    onset_rate: base * (s.onset - 1.0),
                    countries: g.surge.countries,
                    asns: g.surge.asns,
                    shared_asns: g.surge.shared_asns,
                    cache_busting: g.surge.cache_busting,
                })
                .collect(),
            crowds: Vec::new(),
            database: Database { capacity: f64::MAX },
            guard: g.guard.clone(),
        };
        Some((scenario, history as usize))
    }

    /// Formats `t` seconds after the start as a clock time, if the scenario has one.
    pub fn clock(&self, t: f64) -> String {
        let offset = self
            .clock_start
            .as_deref()
            .and_then(|c| c.split_once(':'))
            .and_then(|(h, m)| Some(h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60));
        let total = t as i64 + offset.unwrap_or(0);
        let (h, m, s) = ((total / 3600) % 24, (total / 60) % 60, total % 60);
        match offset {
            Some(_) => format!("{h:02}:{m:02}:{s:02}"),
            None => format!("+{}:{m:02}:{s:02}", total / 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        for (name, _) in BUILTIN {
            Scenario::load(name).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn unknown_and_bad_scenarios_are_clear_errors() {
        let e = Scenario::load("no-such-scenario").unwrap_err();
        assert!(e.to_string().contains("built-in: incident, nasa, diurnal, surge, flood, flash-crowd"), "{e}");
        let e = Scenario::parse("x", "name: x\nduration: forever\n").unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }

    #[test]
    fn a_bad_traffic_guard_section_is_a_clear_error() {
        let yaml = include_str!("scenarios/incident.yaml").replace("legit: { sources: 4000", "legit: { sources: 0");
        let e = Scenario::parse("x", &yaml).unwrap_err();
        assert!(e.to_string().contains("trafficGuard: legit needs sources"), "{e}");
        let yaml = include_str!("scenarios/incident.yaml")
            .replace("onset: 5, ramp: 70m, multiplier: 20", "ramp: 70m, multiplier: 1");
        let e = Scenario::parse("x", &yaml).unwrap_err();
        assert!(e.to_string().contains("multiplier above 1"), "{e}");
        let yaml = include_str!("scenarios/incident.yaml").replace("onset: 5", "onset: 30");
        let e = Scenario::parse("x", &yaml).unwrap_err();
        assert!(e.to_string().contains("arrivals.surges[0]: onset must be between 1 and the multiplier"), "{e}");
    }

    #[test]
    fn scales_round_to_1_2_or_5() {
        let cases = [(88.9, 100.0), (139.0, 100.0), (160.0, 200.0), (3.3, 5.0), (0.31, 0.2), (7.2, 10.0)];
        for (x, want) in cases {
            assert!((round_to_1_2_5(x) - want).abs() < 1e-9 * want, "{x} -> {} (want {want})", round_to_1_2_5(x));
        }
    }

    #[test]
    fn a_trace_is_fitted_to_the_fleet_whatever_its_size() {
        use crate::replay::trace::Trace;
        let s = Scenario::load("nasa").unwrap();
        // The NASA trace, at about 4 requests/s in its busiest minutes, gets the ×100 the
        // scenario gives it by hand.
        let nasa = Trace::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/traces/nasa_http_1995_07_1min.csv"
        )))
        .unwrap();
        assert_eq!(s.fitted_trace_scale(&nasa), s.arrivals.trace_scale);
        // The same shape recorded 1,000 times larger is scaled 1,000 times less, and its
        // busiest minutes then need FITTED_LOAD of maxReplicas to within the rounding.
        let big = Trace { rates: nasa.rates.iter().map(|r| r * 1000.0).collect(), ..nasa.clone() };
        let scale = s.fitted_trace_scale(&big);
        assert!((scale - s.arrivals.trace_scale / 1000.0).abs() < 1e-12, "{scale}");
        let fleet = f64::from(s.policies.api.bounds.max_replicas) * s.api.capacity_per_replica;
        let load = big.busy_rate() * scale / fleet;
        assert!(load > FITTED_LOAD / 2.0 && load < FITTED_LOAD * 2.0, "{load}");
        let idle = Trace { rates: vec![0.0; 100], ..nasa };
        assert_eq!(s.fitted_trace_scale(&idle), 1.0);
    }

    #[test]
    fn clock_labels() {
        let mut s = Scenario::load("incident").unwrap();
        s.clock_start = Some("21:00".into());
        assert_eq!(s.clock(62.0 * 60.0), "22:02:00");
        s.clock_start = None;
        assert_eq!(s.clock(3725.0), "+1:02:05");
    }
}
