//! Guard scenarios: a population of legitimate clients, attacks on top of it, crowds of
//! legitimate newcomers, and a database that cache misses land on. Built-in: `surge` (the
//! incident's distributed surge), `flood` (single-source floods) and `flash-crowd` (a surge of
//! real users, which must not be taken for an attack).

use serde::Deserialize;

use crate::api::{
    Duration,
    traffic_guard::{AggregationKey, Sensitivity},
};

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardScenario {
    /// Always `guard`: tells these files from autoscaling scenarios.
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub duration: Duration,
    #[serde(default)]
    pub seed: u64,
    pub legit: Legit,
    #[serde(default)]
    pub attacks: Vec<Attack>,
    #[serde(default)]
    pub crowds: Vec<Crowd>,
    pub database: Database,
    pub guard: GuardSettings,
}

/// The legitimate clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Legit {
    pub sources: usize,
    /// Total requests per second of all of them.
    pub rate: f64,
    pub countries: usize,
    pub asns: usize,
    /// Sources per /24 (clients behind the same ISP block).
    #[serde(default = "one")]
    pub sources_per_prefix: usize,
    /// Fraction of requests that miss the cache and reach the database.
    pub cache_miss_ratio: f64,
}

fn one() -> usize {
    1
}

/// One attack.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attack {
    pub name: String,
    pub start: Duration,
    pub end: Duration,
    /// Time from onset to full rate.
    #[serde(default)]
    pub ramp: Duration,
    pub sources: usize,
    /// Total requests per second at full rate.
    pub rate: f64,
    /// Requests per second reached at once at `start`; the ramp rises from there.
    #[serde(default)]
    pub onset_rate: f64,
    pub countries: usize,
    pub asns: usize,
    /// How many of the attack's ASNs legitimate clients also use (big ISPs, clouds).
    #[serde(default)]
    pub shared_asns: usize,
    /// Fraction of the attack's requests built to miss the cache.
    #[serde(default)]
    pub cache_busting: f64,
}

/// Legitimate newcomers arriving together (a launch, a news story, a mention on a busy site):
/// new addresses in new /24s of the ISPs and countries the usual clients use, in the same
/// proportions, each sending at a usual client's pace. Their refusals are false positives.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Crowd {
    pub name: String,
    pub start: Duration,
    pub end: Duration,
    /// Time from onset to full rate.
    #[serde(default)]
    pub ramp: Duration,
    pub sources: usize,
    /// Total requests per second at full rate.
    pub rate: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Database {
    /// Cache misses per second the database serves; beyond it, misses fail.
    pub capacity: f64,
}

/// The TrafficGuard the levee run uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardSettings {
    #[serde(default)]
    pub sensitivity: Sensitivity,
    pub aggregation_keys: Vec<AggregationKey>,
    #[serde(default = "two")]
    pub rate_limit_multiple: f64,
    pub ttl: Duration,
    /// Report interval of the edges.
    #[serde(default = "one_sec")]
    pub report_interval: Duration,
    /// From a Mitigation written to every edge enforcing it.
    #[serde(default = "one_sec")]
    pub propagation: Duration,
}

fn two() -> f64 {
    2.0
}

fn one_sec() -> Duration {
    Duration::from_secs(1)
}

pub const BUILTIN: &[(&str, &str)] = &[
    ("surge", include_str!("../scenarios/surge.yaml")),
    ("flood", include_str!("../scenarios/flood.yaml")),
    ("flash-crowd", include_str!("../scenarios/flash-crowd.yaml")),
];

impl GuardScenario {
    /// A built-in guard scenario, or a file whose `kind` is `guard`; `None` when `name` is
    /// neither (an autoscaling scenario).
    pub fn load(name: &str) -> Option<anyhow::Result<Self>> {
        let text = match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((_, y)) => (*y).to_owned(),
            None => std::fs::read_to_string(name).ok()?,
        };
        if !text.lines().any(|l| l.trim() == "kind: guard") {
            return None;
        }
        Some(Self::parse(name, &text))
    }

    pub fn parse(name: &str, yaml: &str) -> anyhow::Result<Self> {
        let s: Self = serde_saphyr::from_str(yaml).map_err(|e| anyhow::anyhow!("guard scenario {name}: {e}"))?;
        s.check().map_err(|m| anyhow::anyhow!("guard scenario {name}: {m}"))?;
        Ok(s)
    }

    /// Checks what the types cannot: positive sizes and rates, ordered times.
    ///
    /// # Errors
    /// The first problem found, in a sentence.
    pub fn check(&self) -> Result<(), String> {
        let s = self;
        let bad = |m: &str| Err(m.to_owned());
        if s.duration.as_secs_f64() < 1.0 {
            return bad("duration must be at least 1s");
        }
        if s.legit.sources == 0
            || s.legit.countries == 0
            || s.legit.asns == 0
            || s.legit.rate.is_nan()
            || s.legit.rate <= 0.0
        {
            return bad("legit needs sources, countries, asns and a positive rate");
        }
        if s.legit.sources_per_prefix == 0 {
            return bad("legit.sourcesPerPrefix must be at least 1");
        }
        for a in &s.attacks {
            if a.sources == 0
                || a.countries == 0
                || a.asns == 0
                || a.rate.is_nan()
                || a.rate <= 0.0
                || a.shared_asns > a.asns
            {
                return bad(&format!(
                    "attack {}: needs sources, countries, asns, a positive rate and sharedAsns <= asns",
                    a.name
                ));
            }
            if !(a.onset_rate >= 0.0 && a.onset_rate <= a.rate) {
                return bad(&format!("attack {}: onsetRate must be between 0 and rate", a.name));
            }
            if a.end.0 <= a.start.0 {
                return bad(&format!("attack {}: end must be after start", a.name));
            }
        }
        for c in &s.crowds {
            if c.sources == 0 || c.rate.is_nan() || c.rate <= 0.0 {
                return bad(&format!("crowd {}: needs sources and a positive rate", c.name));
            }
            if c.end.0 <= c.start.0 {
                return bad(&format!("crowd {}: end must be after start", c.name));
            }
        }
        if s.database.capacity.is_nan() || s.database.capacity <= 0.0 {
            return bad("database.capacity must be positive");
        }
        if s.guard.aggregation_keys.is_empty() {
            return bad("guard.aggregationKeys needs at least one key");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_autoscaling_scenarios_are_not_guard_scenarios() {
        for (name, _) in BUILTIN {
            GuardScenario::load(name).unwrap().unwrap();
        }
        assert!(GuardScenario::load("incident").is_none());
        let err = GuardScenario::parse("x", "kind: guard\nname: x\n").unwrap_err();
        assert!(err.to_string().contains("guard scenario x"), "{err}");
    }
}
