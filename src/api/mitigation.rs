//! `Mitigation`: one active edge rule, written by the operator or by a person.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Mode, impl_policy_status, unix_secs};

/// An admitted share rising evenly from `fromPercent` at `since` to every client after `over`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdmitRamp {
    /// Percent admitted when the ramp began.
    #[schemars(range(min = 0, max = 100))]
    pub from_percent: i32,
    /// When the ramp began.
    pub since: Time,
    /// How long until every client is admitted.
    pub over: Duration,
}

impl AdmitRamp {
    /// The percent admitted at `now` (unix seconds); `None` once the ramp admits everyone.
    pub fn percent_at(&self, now: f64) -> Option<i32> {
        let over = self.over.0.as_secs_f64();
        let done = if over > 0.0 { ((now - unix_secs(&self.since)) / over).clamp(0.0, 1.0) } else { 1.0 };
        let from = f64::from(self.from_percent.clamp(0, 100));
        let percent = (from + (100.0 - from) * done).floor() as i32;
        (percent < 100).then_some(percent.clamp(0, 99))
    }

    /// When (unix seconds) the ramp first admits a client of admission `bucket` (0–99): when
    /// its percent passes the bucket.
    pub fn admits_at(&self, bucket: u8) -> f64 {
        let from = f64::from(self.from_percent.clamp(0, 100));
        if f64::from(bucket) < from || from >= 100.0 {
            return unix_secs(&self.since);
        }
        let done = (f64::from(bucket) + 1.0 - from) / (100.0 - from);
        unix_secs(&self.since) + self.over.0.as_secs_f64() * done
    }
}

/// One edge rule: which traffic it matches, what it does, why, and when it lapses.
/// Every edge watches these and enforces them.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "levee.dev",
    version = "v1alpha1",
    kind = "Mitigation",
    namespaced,
    doc = "One edge rule (rate limit or block) with a match, an expiry and evidence.",
    status = "MitigationStatus",
    shortname = "lmit",
    category = "levee",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action != 'RateLimit' || has(self.rateLimit)").message("spec.rateLimit is required when action is RateLimit"))]
#[x_kube(validation = Rule::new("(self.action == 'Admit') == has(self.admitPercent)").message("spec.admitPercent is required when action is Admit, and only then"))]
pub struct MitigationSpec {
    /// Edge pool that enforces this rule.
    #[schemars(length(min = 1, max = 63))]
    pub edge_pool: String,
    /// TrafficGuard that created it; empty for rules written by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// Which traffic the rule applies to.
    #[serde(rename = "match")]
    pub match_: MatchSpec,
    /// `RateLimit`, `Block` or `Admit`.
    pub action: MitigationAction,
    /// The limit, when action is `RateLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Percent of the matched clients admitted, when action is `Admit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub admit_percent: Option<i32>,
    /// How the admitted share rises, for an `Admit` rule that is ramping up: edges admit what
    /// the ramp says at each request (at least `admitPercent`), and tell each client they
    /// leave out when its turn comes (`Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit_ramp: Option<AdmitRamp>,
    /// When the rule lapses. Every mitigation has one.
    pub expires_at: Time,
    /// Why, in one sentence.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// The numbers behind the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// How many times this source has been mitigated before (drives TTL escalation).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub offence: i32,
    /// `Enforce` limits or blocks; `Shadow` lets traffic through and counts what the rule
    /// would have limited (the edge's `levee_edge_shadow_limited_total`).
    #[serde(default)]
    pub mode: Mode,
}

/// What traffic a rule matches. Exactly one field is set (and `exceptPrefixes` with `asn` or
/// `country`).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.ip), has(self.prefix), has(self.asn), has(self.country), has(self.apiKey), has(self.trafficClass), has(self.all)].exists_one(x, x)").message("spec.match: exactly one of ip, prefix, asn, country, apiKey, trafficClass, all must be set"))]
#[x_kube(validation = Rule::new("!has(self.exceptPrefixes) || has(self.asn) || has(self.country)").message("spec.match.exceptPrefixes is only for a match on asn or country"))]
pub struct MatchSpec {
    /// Every request of the pool (`true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self").message("spec.match.all can only be true"))]
    pub all: Option<bool>,
    /// One client IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self)").message("spec.match.ip must be an IP address"))]
    pub ip: Option<String>,
    /// A CIDR prefix such as `203.0.113.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("spec.match.prefix must be a CIDR such as 203.0.113.0/24"))]
    pub prefix: Option<String>,
    /// An autonomous system number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u64))]
    pub asn: Option<i64>,
    /// An ISO 3166-1 alpha-2 country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Z]{2}$"))]
    pub country: Option<String>,
    /// An API key value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub api_key: Option<String>,
    /// A traffic class (priority shedding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub traffic_class: Option<String>,
    /// With `asn` or `country`: prefixes (CIDRs) of it the rule leaves alone. A surge that
    /// comes partly through an ISP real clients use is limited in the ISP's other prefixes,
    /// while the prefixes its clients came from before the surge are served as usual.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub except_prefixes: Vec<String>,
}

impl std::fmt::Display for MatchSpec {
    /// `ip 203.0.113.7`, `asn 64500 except 2 prefixes`. An API key shows only its first four
    /// characters: whoever reads the status has no need of the whole secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self { ip: Some(ip), .. } => write!(f, "ip {ip}")?,
            Self { prefix: Some(p), .. } => write!(f, "prefix {p}")?,
            Self { asn: Some(asn), .. } => write!(f, "asn {asn}")?,
            Self { country: Some(c), .. } => write!(f, "country {c}")?,
            Self { api_key: Some(k), .. } => write!(f, "apiKey {}…", crate::text::truncate(k, 4))?,
            Self { traffic_class: Some(c), .. } => write!(f, "trafficClass {c}")?,
            Self { all: Some(true), .. } => f.write_str("all traffic")?,
            _ => f.write_str("nothing")?,
        }
        match self.except_prefixes.len() {
            0 => Ok(()),
            1 => write!(f, " except 1 prefix"),
            n => write!(f, " except {n} prefixes"),
        }
    }
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MitigationAction {
    /// Admit at most `rateLimit` requests; answer the rest 429 with `Retry-After`.
    RateLimit,
    /// Answer every request 403.
    Block,
    /// Admit `admitPercent` of the matched clients, a subset chosen by address and the same
    /// on every edge (as the percent rises, those admitted stay admitted); answer the rest
    /// 503 with `Retry-After`. A BootstrapPolicy's admission gate while a fleet warms up.
    Admit,
}

/// A token-bucket limit.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.requestsPerSecond > 0.0").message("spec.rateLimit.requestsPerSecond must be greater than 0"))]
pub struct RateLimit {
    /// Sustained requests per second admitted.
    pub requests_per_second: f64,
    /// Requests admitted at once above the sustained rate.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: i32,
}

fn default_burst() -> i32 {
    10
}

/// The numbers behind a mitigation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// Detector that fired, e.g. `single-source` or `distributed-surge`.
    pub detector: String,
    /// Observed rate (requests/s).
    pub observed_rate: f64,
    /// Baseline rate (requests/s).
    pub baseline_rate: f64,
    /// Robust score (deviations from baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// A few example sources seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub sample_sources: Vec<String>,
}

/// What the edges report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MitigationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, `Invalid` (and `SignalsAvailable` on ScalingPolicy).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl_policy_status!(MitigationStatus);
