//! Traffic-shape detection for a TrafficGuard: one sample a second (the pool's merged edge
//! reports) in, findings out.
//!
//! - **Single source**: an IP or API key sending far more than its own baseline, or than a
//!   typical heavy source when it has none yet (a new flooder), for `confirm` samples in a row.
//! - **Distributed surge**: the total far above its robust baseline *and* a change in the
//!   source mix (more new sources than usual, or a prefix, ASN or country taking a larger
//!   share). The dominant aggregates are named: in the dimension whose hottest keys explain
//!   most of the excess with the least legitimate traffic caught alongside and the least let
//!   through. A rise from the usual mix of sources is demand, not an attack: it is reported,
//!   and left to the scaler.
//!
//! Baselines learn only from samples not judged anomalous, so a surge never becomes normal
//! while it lasts; once declared, it goes on while the total stays above its baseline from a
//! changed mix, so the part of it that its first limits leave is still looked for (for up to
//! an hour). Allowlisted addresses and prefixes are never named.
//!
//! With a daily shape ([`season`]: from Prometheus history of a day or more, or learnt over a
//! day of samples) every rate is judged and learnt in time-of-day-adjusted units: a sample's
//! seconds count as many as the time of day is busy, so the daily cycle is expected, and what
//! is reported is scaled back.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;

use super::detect::{DetectorConfig, RobustDetector};
use crate::api::traffic_guard::{AggregationKey as Dimension, Sensitivity};

mod keyed;
pub mod season;
mod seed;
#[cfg(test)]
mod tests;

use keyed::Keyed;
use season::{DailyShape, ShapeLearner};
pub use seed::History;

/// Tuning derived from a TrafficGuard's sensitivity and baseline window.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// A source is hot above this multiple of its baseline.
    pub multiple: f64,
    /// The total is surging at this many robust deviations above its baseline.
    pub surge_score: f64,
    /// Rates below this (requests/s) are never flagged, whatever their baseline.
    pub min_rate: f64,
    /// Weight of each sample in baselines.
    pub alpha: f64,
    /// Samples before anything is judged.
    pub warmup: u32,
    /// Hot samples in a row before a finding.
    pub confirm: u32,
    /// Most findings per sample.
    pub max_findings: usize,
}

impl Tuning {
    pub fn new(sensitivity: Sensitivity, baseline_window_secs: f64, step_secs: f64) -> Self {
        let (multiple, surge_score) = match sensitivity {
            Sensitivity::Low => (10.0, 8.0),
            Sensitivity::Medium => (5.0, 6.0),
            Sensitivity::High => (3.0, 4.0),
        };
        let points = (baseline_window_secs / step_secs.max(1e-3)).max(1.0);
        Self {
            multiple,
            surge_score,
            min_rate: 5.0,
            alpha: 2.0 / (points + 1.0),
            warmup: 10,
            confirm: 2,
            max_findings: 50,
        }
    }
}

/// One merged sample of a pool's traffic.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds the counts cover.
    pub secs: f64,
    pub requests: f64,
    pub new_source_requests: f64,
    /// Heaviest keys per dimension with their counts.
    pub top: BTreeMap<Dimension, Vec<(String, u64)>>,
    /// The ASN of prefixes in `top`, where the edges know it: what tells the prefixes an ISP's
    /// clients use from those a surge through the same ISP comes from.
    pub prefix_asns: HashMap<String, String>,
    /// When the sample ended, in seconds since the epoch: its time of day, for a guard with a
    /// daily shape. `None` judges it without one.
    pub at: Option<f64>,
}

/// What was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SingleSource,
    DistributedSurge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SingleSource => "single-source",
            Kind::DistributedSurge => "distributed-surge",
        }
    }
}

/// One key to mitigate, with the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    pub dimension: Dimension,
    pub key: String,
    /// Requests/s now.
    pub rate: f64,
    /// Requests/s it is judged against (its own baseline, or a typical source's); with
    /// `except`, its usual rate outside those prefixes.
    pub baseline: f64,
    /// How many times its usual rate it sends.
    pub ratio: f64,
    /// For an aggregate real clients used before the surge: its established prefixes, which a
    /// mitigation leaves alone.
    pub except: Vec<String>,
    /// An aggregate that came with the surge: its baseline is its share of what new sources
    /// usually send.
    pub born_with_surge: bool,
}

impl Finding {
    /// One clause: what, where, and how far above which baseline.
    pub fn describe(&self) -> String {
        let head = format!("{} {:?} {} at {:.1} req/s", self.kind.as_str(), self.dimension, self.key, self.rate);
        if !self.except.is_empty() {
            format!(
                "{head}, {:.0}x its baseline; outside its {} established prefixes it usually sends {:.1} req/s",
                self.ratio,
                self.except.len(),
                self.baseline
            )
        } else if self.born_with_surge {
            format!(
                "{head}, new with the surge (its share of what new sources usually send: {:.1} req/s)",
                self.baseline
            )
        } else {
            format!("{head}, {:.0}x its baseline of {:.1} req/s", self.ratio, self.baseline)
        }
    }
}

/// The rate a mitigation for `f` admits: `multiple` times the baseline it was judged against,
/// and never less than one request a second.
pub fn mitigation_limit(f: &Finding, multiple: f64) -> f64 {
    (multiple * f.baseline).max(1.0)
}

/// How long before a mitigation lapses it may be renewed: time for a few reports to say
/// whether its target still sends more than it may, and for the edges to apply the renewal
/// before the old expiry.
pub const RENEW_AHEAD_SECS: f64 = 30.0;

/// Whether a mitigation `secs_left` from lapsing, of a term of `ttl_secs`, is renewed instead:
/// the edge that refuses most for it still refuses at least as much as it lets through
/// (`allowance`, per edge and second; for a block, what a limit would have let through). Its
/// target then still sends twice what it may there, and letting it lapse would let that in
/// at full strength until it is detected anew, seconds in which the upstream takes the surge
/// again. At least one refusal a second is needed.
///
/// The window is [`RENEW_AHEAD_SECS`], or half the term when that is shorter: a 10-second
/// mitigation is not renewed, and escalated, from the moment it starts.
pub fn renews(secs_left: f64, ttl_secs: f64, allowance: f64, refused: f64) -> bool {
    secs_left <= RENEW_AHEAD_SECS.min(ttl_secs / 2.0) && refused >= allowance.max(1.0)
}

/// The verdict on one sample.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub total_rate: f64,
    pub total_baseline: f64,
    /// Robust deviations of the total above its baseline.
    pub total_score: f64,
    /// How busy this time of day usually is against the day's mean, with a daily shape:
    /// `total_baseline` is the adjusted baseline scaled by it.
    pub time_of_day: Option<f64>,
    pub new_source_ratio: f64,
    pub new_source_baseline: f64,
    /// How far the mix of prefixes, ASNs or countries moved from the usual (0: same, 1: all
    /// traffic from elsewhere).
    pub mix_distance: f64,
    /// The total is surging and the source mix changed.
    pub surge: bool,
    /// The total is far above baseline from the usual mix, or from new sources in the usual
    /// networks (a crowd): demand, not an attack.
    pub demand_rise: bool,
    /// The rise comes from new sources in the networks the usual clients use.
    pub crowd: bool,
    pub findings: Vec<Finding>,
}

impl Observation {
    /// One sentence for status and Events.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "total {:.1} req/s against a baseline of {:.1} ({:+.1} deviations); new sources {:.0}% (usually {:.0}%); source mix moved {:.0}%",
            self.total_rate,
            self.total_baseline,
            self.total_score,
            self.new_source_ratio * 100.0,
            self.new_source_baseline * 100.0,
            self.mix_distance * 100.0
        );
        if let Some(f) = self.time_of_day {
            s.push_str(&format!("; this time of day is usually {f:.2}x the daily mean"));
        }
        if self.surge {
            s.push_str("; distributed surge");
        } else if self.crowd {
            s.push_str("; a crowd of new sources from the usual networks (demand, not mitigated)");
        } else if self.demand_rise {
            s.push_str("; a rise from the usual sources (demand, not mitigated)");
        }
        if let Some(f) = self.findings.first() {
            s.push_str(&format!("; {} findings, the heaviest {}", self.findings.len(), f.describe()));
            if self.findings.len() > 1 {
                s.push_str(" and others");
            }
        }
        s
    }
}

/// One key of one sample, judged (borrowing its name from the sample).
struct Judged<'a> {
    dim: Dimension,
    key: &'a str,
    rate: f64,
    baseline: f64,
    /// Its own learned baseline, when it has one.
    own: Option<f64>,
    /// The step it was first seen (this one, for a key never seen before).
    born: u64,
    hot: bool,
    /// Its share of the dimension's counted requests.
    share: f64,
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    rate: f64,
    samples: u32,
    hot: u32,
    last_step: u64,
    share: f64,
    /// The step it was first seen.
    born: u64,
    /// A prefix's ASN, as the edges last reported it.
    parent: Option<String>,
    /// It came with a surge: never an established prefix, and judged as a newcomer in later
    /// surges too, even after it has been seen (at its limit) between them.
    surge_born: bool,
}

/// Most prefixes a mitigation of a shared aggregate leaves alone (the CRD's limit); the
/// busiest are kept.
const MAX_EXCEPT: usize = 1024;

/// Samples after which a key's own baseline is trusted over the population's.
const KEY_WARMUP: u32 = 10;
/// Keys remembered per guard; the stalest go first.
const MAX_KEYS: usize = 50_000;
/// Shares of an aggregate dimension moving this far (total variation distance) from the usual
/// ones is a change in the source mix.
const MIX_SHIFT: f64 = 0.2;
/// The new-source ratio rising by this much is a change in the source mix.
const NEW_SOURCE_SHIFT: f64 = 0.1;

/// Detection state of one TrafficGuard.
pub struct GuardDetector {
    tuning: Tuning,
    allowlist: Vec<IpNet>,
    total: RobustDetector,
    total_hot: u32,
    new_ratio: f64,
    keys: Keyed<KeyState>,
    /// Per dimension, a typical heavy key's rate: the baseline of a key seen for the first time.
    reference: HashMap<Dimension, f64>,
    step: u64,
    /// Keys named recently, until the step given: a surge's remaining excess is looked for
    /// among other keys, since an edge counts what it receives, limited or not.
    recent: Keyed<u64>,
    /// The step the current surge episode began, if one is under way: when the total began
    /// to rise, which for a surge that ramps up is well before it is declared.
    episode: Option<u64>,
    /// A one-sided CUSUM of the total's score: how far it has risen, cumulatively, beyond the
    /// slack; and the step it last stood at zero (the onset of a rise, when one follows).
    rise: f64,
    rising_since: u64,
    /// Samples in a row since the total was last hot.
    calm: u32,
    /// Aggregates named in a surge before: candidates again in the next one, however old.
    offenders: Keyed<()>,
    /// Aggregates born with the current surge named so far: they share its allowance with
    /// those named later, even once their mitigations keep them out of the samples.
    named_newborn: Keyed<()>,
    /// The current episode has been taken for an attack.
    attack_seen: bool,
    /// The pool's daily shape, when history gave one or a day of watching taught one.
    season: Option<DailyShape>,
    /// The shape came from Prometheus history: what is watched does not replace it.
    season_from_history: bool,
    /// Learns the shape from every sample but an attack's, for a guard without that history.
    learner: ShapeLearner,
}

/// A surge episode ends after this many samples in a row with the total not hot.
const EPISODE_ENDS_AFTER: u32 = 60;

/// Robust deviations above its baseline at which the total keeps a surge going once declared.
const CONTINUE_SCORE: f64 = 2.0;

/// Samples after its onset within which a surge goes on at [`CONTINUE_SCORE`].
const CONTINUE_FOR: u64 = 3600;

/// Robust deviations per sample the total's CUSUM forgives: noise around the baseline keeps
/// returning it to zero, a sustained rise does not.
const RISE_SLACK: f64 = 1.0;

/// Samples a surge's onset is looked for before it is declared, at most.
const MAX_ONSET_LOOKBACK: u64 = 900;

/// An aggregate is named only when its count is this many Poisson deviations above its
/// baseline: with hundreds of small aggregates, chance alone puts some at twice their rate.
const POISSON_Z: f64 = 6.0;

/// An aggregate first seen at most this many samples before a surge began counts as part of
/// it; older ones carry real clients and are never limited as a whole.
const NEW_BEFORE_SURGE: u64 = 30;

/// The smallest baseline a surge finding is given (requests/s): the mitigation's limit is a
/// multiple of it, and never below one request a second.
const MIN_BASELINE: f64 = 0.1;

/// The new-source ratio assumed at least, for the budget of aggregates born with a surge.
const MIN_NEW_RATIO: f64 = 0.01;

/// Requests/s below which an aggregate born with a surge is not named, however far its
/// fellow newcomers are above what new sources usually send.
const NEWCOMER_FLOOR: f64 = 2.0;

/// Samples a named key is left out of further surge findings.
const NAMED_FOR: u64 = 30;

/// A surge's new addresses are a crowd of real users while fewer of them than this fraction,
/// over what new users of the usual population would bring, come through ISPs new to the site.
const CROWD_NEW_NETWORKS: f64 = 0.25;
/// However little of its users' ISPs a site has seen, a surge with at least this share of its
/// new addresses through new ISPs is no crowd: the incident's surge came 87% through its own.
/// Below it, the ISPs cannot tell the two apart.
const CROWD_MAX_NEW_NETWORKS: f64 = 0.75;
/// With fewer new addresses than this a fraction says little: they are a crowd only if none
/// comes through a new ISP (as late in a crowd, when most of it has been learnt).
const CROWD_MIN_SOURCES: u32 = 10;
/// A site with fewer known prefixes than this says nothing of how its users spread over ISPs
/// (one prefix is one ISP, a "singleton"): its crowds must come through the ISPs it knows.
const UNSEEN_MIN_PREFIXES: u32 = 20;

impl GuardDetector {
    pub fn new(tuning: Tuning, allowlist: Vec<IpNet>) -> Self {
        let total = RobustDetector::new(DetectorConfig {
            alpha: tuning.alpha,
            threshold: tuning.surge_score,
            warmup: tuning.warmup as usize,
            cooldown: 0,
            two_sided: false,
        });
        Self {
            tuning,
            allowlist,
            total,
            total_hot: 0,
            new_ratio: 0.0,
            keys: Keyed::default(),
            reference: HashMap::new(),
            step: 0,
            recent: Keyed::default(),
            episode: None,
            rise: 0.0,
            rising_since: 0,
            calm: 0,
            offenders: Keyed::default(),
            named_newborn: Keyed::default(),
            attack_seen: false,
            season: None,
            season_from_history: false,
            learner: ShapeLearner::default(),
        }
    }

    /// The daily shape rates are adjusted by, if any.
    pub fn season(&self) -> Option<&DailyShape> {
        self.season.as_ref()
    }

    /// Starts a new detector with a shape learnt before (by an operator that restarted since);
    /// there are no baselines yet to carry into it. Learning goes on, and a day later replaces it.
    pub fn resume_season(&mut self, shape: DailyShape) {
        self.season = Some(shape);
    }

    /// Puts a daily shape read from history in force at `now` (seconds since the epoch).
    pub fn set_season(&mut self, shape: DailyShape, now: f64) {
        self.season_from_history = true;
        self.adopt(shape, now);
    }

    /// Puts `shape` in force at `at`, carrying what was learnt under the shape before (or
    /// none) into the new shape's units: a baseline learnt of the traffic at `at` stays the
    /// same number of requests/s at `at`.
    fn adopt(&mut self, shape: DailyShape, at: f64) {
        let before = self.season.as_ref().map_or(1.0, |s| s.factor(at));
        let k = before / shape.factor(at);
        self.total.rescale(k);
        for st in self.keys.values_mut() {
            st.rate *= k;
        }
        for r in self.reference.values_mut() {
            *r *= k;
        }
        self.season = Some(shape);
    }

    /// How busy the time of day `at` usually is against the day's mean: `None` without a
    /// shape or a time.
    fn time_of_day(&self, at: Option<f64>) -> Option<f64> {
        Some(self.season.as_ref()?.factor(at?))
    }

    fn allowlisted(&self, dim: Dimension, key: &str) -> bool {
        match dim {
            Dimension::Ip => {
                key.parse::<std::net::IpAddr>().is_ok_and(|ip| self.allowlist.iter().any(|n| n.contains(&ip)))
            }
            Dimension::Prefix => {
                key.parse::<IpNet>().is_ok_and(|p| self.allowlist.iter().any(|n| n.contains(&p) || p.contains(n)))
            }
            _ => false,
        }
    }

    /// Judges one sample, then learns from what was normal in it.
    pub fn observe(&mut self, s: &Sample) -> Observation {
        // Before the pool's first request there is nothing to learn a baseline from: samples
        // of nothing would make every baseline zero, and the first clients a surge against
        // it. The warm-up starts with the first traffic.
        if self.step == 0 && s.requests <= 0.0 {
            return Observation::default();
        }
        self.step += 1;
        // A busy time of day stretches the sample: every rate below is in adjusted units.
        let time_of_day = self.time_of_day(s.at);
        let stretch = time_of_day.unwrap_or(1.0);
        let secs = s.secs.max(1e-3) * stretch;
        let total_rate = s.requests / secs;
        // Within a surge episode nothing is learnt, not even by the total's baseline: a long
        // surge must not become normal while it lasts.
        let verdict = match self.episode {
            Some(_) => self.total.clone().observe(total_rate),
            None => self.total.observe(total_rate),
        };
        let warm = self.step > u64::from(self.tuning.warmup);
        let new_ratio = if s.requests > 0.0 { s.new_source_requests / s.requests } else { 0.0 };
        let mut obs = Observation {
            total_rate,
            total_baseline: verdict.baseline,
            total_score: verdict.score,
            time_of_day,
            new_source_ratio: new_ratio,
            new_source_baseline: self.new_ratio,
            ..Observation::default()
        };
        if self.episode.is_none() {
            // Scores before the warm-up are against a baseline still being learnt.
            self.rise =
                if warm && verdict.score.is_finite() { (self.rise + verdict.score - RISE_SLACK).max(0.0) } else { 0.0 };
            if self.rise == 0.0 {
                self.rising_since = self.step;
            }
        }
        // Per key: rate, the baseline it is judged against, and whether it is hot.
        let mut judged: Vec<Judged> = Vec::new();
        let mut mix_distance = 0.0f64;
        for (&dim, keys) in &s.top {
            let dim_total: f64 = keys.iter().map(|(_, n)| *n as f64).sum::<f64>().max(1.0);
            let reference = self.reference.get(&dim).copied();
            let aggregate = dim != Dimension::Ip && dim != Dimension::ApiKey;
            let (mut moved, mut usual_present) = (0.0, 0.0);
            for (key, n) in keys {
                let rate = *n as f64 / secs;
                let st = self.keys.get(dim, key);
                let own = st.filter(|k| k.samples >= KEY_WARMUP).map(|k| k.rate);
                let baseline = own.or(reference).unwrap_or(0.0).max(self.tuning.min_rate);
                let hot = warm && rate > self.tuning.multiple * baseline;
                let share = *n as f64 / dim_total;
                if aggregate {
                    let usual = st.map_or(0.0, |k| k.share);
                    moved += (share - usual).abs();
                    usual_present += usual;
                }
                judged.push(Judged {
                    dim,
                    key,
                    rate,
                    baseline,
                    own,
                    born: st.map_or(self.step, |k| k.born),
                    hot,
                    share,
                });
            }
            if aggregate {
                // Total variation distance between this sample's shares and the usual ones;
                // the usual share of keys absent now counts as moved too.
                mix_distance = mix_distance.max(0.5 * (moved + (1.0 - usual_present).max(0.0)));
            }
        }
        obs.mix_distance = mix_distance;
        let mix_changed = new_ratio - self.new_ratio >= NEW_SOURCE_SHIFT || mix_distance >= MIX_SHIFT;

        // A surge is declared when the total is anomalous at half as much again as its
        // baseline. It goes on while the total stays CONTINUE_SCORE deviations above that
        // baseline with the source mix still changed: the edges report what they let through,
        // so a surge that is mostly contained looks small, and what of it is not named yet
        // (aggregates that ramp up later than the rest) must still be looked for. It goes on
        // so for CONTINUE_FOR samples at most, after which only a surge that stands out as at
        // first keeps the baseline from learning.
        let declared = warm && verdict.anomalous && total_rate > 1.5 * verdict.baseline;
        let continues = warm
            && mix_changed
            && verdict.score > CONTINUE_SCORE
            && self.episode.is_some_and(|began| self.step - began < CONTINUE_FOR);
        let total_hot = declared || continues;
        self.total_hot = if total_hot { self.total_hot + 1 } else { 0 };
        if total_hot {
            self.calm = 0;
            if self.episode.is_none() {
                // The surge began when the total began to rise, however long it took to stand
                // out: a surge that ramps up is declared minutes in, and what came with it
                // since its onset is part of it.
                // Never back into the first samples, whose clients are the baseline itself.
                let onset = self
                    .rising_since
                    .max(self.step.saturating_sub(MAX_ONSET_LOOKBACK))
                    .max(u64::from(self.tuning.warmup) + NEW_BEFORE_SURGE + 1)
                    .min(self.step);
                self.episode = Some(onset);
                self.named_newborn = Keyed::default();
                self.mark_came_with(onset, true);
                self.rise = 0.0;
            }
        } else {
            self.calm += 1;
            if self.calm >= EPISODE_ENDS_AFTER {
                self.episode = None;
                self.attack_seen = false;
            }
        }
        let surging = self.total_hot >= self.tuning.confirm && mix_changed;
        // New sources that come through the networks the usual clients use are a crowd (a
        // launch, a news story), not an attack: an attack brings its own networks. Judged by
        // the ISPs of the addresses that came with the episode, when the edges know them; once
        // an episode has been an attack, it stays one, so limits that hold its own networks
        // down do not make its remainder look like a crowd.
        let crowd = surging
            && !self.attack_seen
            && !s.prefix_asns.is_empty()
            && self.new_sources_look_like_users(self.episode.unwrap_or(self.step));
        if crowd {
            // A crowd is demand: learnt as it comes, like any other traffic, so that an attack
            // on top of it begins after it and is told from it. The episode its first hot
            // samples opened is closed, and the keys it took for surge-born are not.
            if let Some(onset) = self.episode.take() {
                self.mark_came_with(onset, false);
            }
            (self.rise, self.rising_since) = (0.0, self.step);
        }
        obs.surge = surging && !crowd;
        obs.crowd = crowd;
        obs.demand_rise = self.total_hot >= self.tuning.confirm && (!mix_changed || crowd);
        self.attack_seen |= obs.surge;

        // Single sources: hot for `confirm` samples in a row.
        for j in &judged {
            let st = self.key_state(j.dim, j.key);
            st.hot = if j.hot { st.hot + 1 } else { 0 };
            if j.dim == Dimension::Prefix
                && let Some(asn) = s.prefix_asns.get(j.key)
                && st.parent.as_ref() != Some(asn)
            {
                st.parent = Some(asn.clone());
            }
            let single = matches!(j.dim, Dimension::Ip | Dimension::ApiKey);
            if single && st.hot >= self.tuning.confirm && !self.allowlisted(j.dim, j.key) {
                obs.findings.push(Finding {
                    kind: Kind::SingleSource,
                    dimension: j.dim,
                    key: j.key.to_owned(),
                    rate: j.rate,
                    baseline: j.baseline,
                    ratio: j.rate / j.baseline,
                    except: Vec::new(),
                    born_with_surge: false,
                });
            }
        }
        if obs.surge {
            // Flooders already named may be the whole story: only what they do not explain
            // is a distributed surge.
            let excess = (total_rate - verdict.baseline).max(0.0);
            let explained: f64 = obs.findings.iter().map(|f| f.rate - f.baseline).sum();
            let rest = excess - explained;
            if rest > 0.5 * excess {
                let named: Vec<(Dimension, String)> =
                    obs.findings.iter().map(|f| (f.dimension, f.key.clone())).collect();
                let others: Vec<Judged> =
                    judged.into_iter().filter(|j| !named.iter().any(|(d, k)| *d == j.dim && *k == j.key)).collect();
                // What new sources usually send: the budget every aggregate born with the
                // surge shares.
                let allowance = verdict.baseline * self.new_ratio.max(MIN_NEW_RATIO);
                obs.findings.extend(self.dominant_aggregates(&others, rest, secs, allowance));
                judged = others;
                let until = self.step + NAMED_FOR;
                for f in &obs.findings {
                    self.recent.insert(f.dimension, &f.key, until);
                }
            } else {
                obs.surge = false;
            }
        }
        obs.findings.sort_by(|a, b| b.rate.total_cmp(&a.rate));
        obs.findings.truncate(self.tuning.max_findings);
        // What is reported, and what limits are made of, is in requests/s at this time of day.
        obs.total_rate *= stretch;
        obs.total_baseline *= stretch;
        for f in &mut obs.findings {
            f.rate *= stretch;
            f.baseline *= stretch;
        }

        for f in obs.findings.iter().filter(|f| f.kind == Kind::DistributedSurge) {
            self.offenders.insert(f.dimension, &f.key, ());
        }
        if self.episode.is_none() {
            self.learn(s, secs, &judged, new_ratio);
        }
        // The shape is learnt from all but attacks: a rise of demand, which stops baselines
        // learning, is what a daily shape is made of. A new one is put in force each quarter
        // hour, once a day has been watched.
        if let Some(at) = s.at
            && !obs.surge
            && !self.attack_seen
            && self.learner.add(at, s.requests / s.secs.max(1e-3))
            && !self.season_from_history
            && let Some(shape) = self.learner.shape()
        {
            self.adopt(shape, at);
        }
        obs
    }

    /// The keys of one aggregate dimension that explain the surge's excess: per dimension,
    /// keys with no usual traffic of their own that stand out (alone, or as newcomers together
    /// far above what new sources usually send), heaviest excess first, until half the excess
    /// is covered; the dimension that covers it at the least cost (usual traffic caught, and
    /// what the limits still let through) wins.
    ///
    /// Aggregates born with the surge share `allowance` (requests/s) between them as their
    /// baseline, so the limits add up to what new sources usually send, however many
    /// aggregates an attack spreads over and however many batches they are named in; an ISP
    /// real clients use is judged, and limited, by what it sends outside its established
    /// prefixes.
    fn dominant_aggregates(&mut self, judged: &[Judged<'_>], excess: f64, secs: f64, allowance: f64) -> Vec<Finding> {
        let step = self.step;
        self.recent.retain(|until| *until > step);
        let surge_began = self.episode.unwrap_or(step);
        // An aggregate that came with the surge had no traffic before it: its baseline is the
        // floor, not a typical aggregate's rate, so its limit holds it near nothing.
        let min_rate = self.tuning.min_rate;
        let base = |j: &Judged| j.own.unwrap_or(min_rate).max(min_rate);
        let shared = self.established_prefixes(surge_began);
        let mut best: Option<(f64, f64, Vec<Finding>)> = None; // (covered, cost, findings)
        let best_len = |b: &Option<(f64, f64, Vec<Finding>)>| b.as_ref().map_or(0, |b| b.2.len());
        let dims = [Dimension::Prefix, Dimension::Asn, Dimension::Country, Dimension::Ip];
        let is_recent = |j: &Judged| self.recent.contains(j.dim, j.key);
        // What keys named in the last samples already account for, in the dimension where
        // they account for most: the same requests are in every dimension, and once an ASN's
        // limit is in force its prefixes need none of their own.
        let already = dims
            .iter()
            .map(|&dim| {
                judged.iter().filter(|j| j.dim == dim && is_recent(j)).map(|j| (j.rate - base(j)).max(0.0)).sum()
            })
            .fold(0.0, f64::max);
        let excess = (excess - already).max(0.0);
        let prefix_rates: HashMap<&str, f64> =
            judged.iter().filter(|j| j.dim == Dimension::Prefix).map(|j| (j.key, j.rate)).collect();
        // ISPs real clients used before the surge whose established prefixes are known: those
        // prefixes, and what the ISP usually sends from outside them. Limiting the whole of an
        // ISP or a country real clients use would refuse them with the attack.
        let shared_isp = |j: &Judged| -> Option<(&Vec<String>, f64)> {
            let (prefixes, usual) = (j.dim == Dimension::Asn).then(|| shared.get(j.key)).flatten()?;
            let outside = (j.own.unwrap_or(0.0) - usual).max(MIN_BASELINE);
            (j.born + NEW_BEFORE_SURGE < surge_began).then_some((prefixes, outside))
        };
        let born_with = |j: &Judged| j.born + NEW_BEFORE_SURGE >= surge_began && self.is_newcomer(j.dim, j.key);
        for dim in dims {
            // Aggregates with no traffic before the surge are judged together first: each of a
            // surge spread thin over many of them (or one that ramps up) stays under the floor
            // for minutes, while together they send far more than new sources usually do. Then
            // each that sends twice its share of that, and at least NEWCOMER_FLOOR, is a
            // candidate. (Addresses are not aggregates: each is judged alone.)
            let (n_new, together) = judged
                .iter()
                .filter(|j| j.dim == dim && born_with(j))
                .fold((0usize, 0.0), |(n, r), j| (n + 1, r + j.rate));
            let usual = allowance.max(MIN_BASELINE);
            let as_group = dim != Dimension::Ip && (together - usual) * (secs / usual).sqrt() > POISSON_Z;
            let group_share = (allowance / n_new.max(1) as f64).max(MIN_BASELINE);
            // The candidates that stand out, each with its surplus: what it sends beyond what it
            // is expected to. An ISP real clients use is judged on its traffic from outside
            // their established prefixes, against what it usually sends from there: the surge
            // stands out there long before it doubles the ISP's whole rate.
            let mut cands: Vec<(&Judged, f64)> = judged
                .iter()
                .filter(|j| {
                    j.dim == dim
                        && (j.born + NEW_BEFORE_SURGE >= surge_began
                            || self.offenders.contains(j.dim, j.key)
                            || shared_isp(j).is_some())
                        && !self.allowlisted(dim, j.key)
                        && !is_recent(j)
                })
                .filter_map(|j| {
                    if as_group && born_with(j) {
                        return (j.rate >= (2.0 * group_share).max(NEWCOMER_FLOOR))
                            .then_some((j, j.rate - group_share));
                    }
                    let (rate, expected) = match shared_isp(j) {
                        Some((prefixes, outside)) => {
                            let inside: f64 = prefixes.iter().filter_map(|p| prefix_rates.get(p.as_str())).sum();
                            ((j.rate - inside).max(0.0), outside)
                        }
                        None => (j.rate, base(j)),
                    };
                    // Judged against at least a request a second (the floor, for a key's whole
                    // rate): a tiny usual rate outside an ISP's prefixes must not make a few
                    // stray requests a surge.
                    let scale = if expected < min_rate { expected.max(1.0) } else { expected };
                    let stands_out = rate > 2.0 * scale && (rate - expected) * (secs / scale).sqrt() > POISSON_Z;
                    stands_out.then_some((j, rate - expected))
                })
                .collect();
            if cands.is_empty() {
                continue;
            }
            cands.sort_by(|a, b| b.1.total_cmp(&a.1));
            let (mut covered, mut collateral, mut picked) = (0.0, 0.0, Vec::new());
            for (j, surplus) in cands {
                // Not capped at the most findings a sample may name: dimensions are compared on
                // what it takes each to cover the excess, and the winner is named from its
                // heaviest keys, the rest in the next samples.
                if covered >= 0.5 * excess {
                    break;
                }
                covered += surplus;
                let (baseline, except) = match shared_isp(j) {
                    // What it usually sends from elsewhere than its established prefixes is
                    // what the limit is measured against, and all the traffic caught with it.
                    Some((prefixes, outside)) => (outside, prefixes.clone()),
                    None => (base(j), Vec::new()),
                };
                collateral += if except.is_empty() { j.own.unwrap_or(0.0) } else { baseline };
                picked.push(Finding {
                    kind: Kind::DistributedSurge,
                    dimension: j.dim,
                    key: j.key.to_owned(),
                    rate: j.rate,
                    baseline,
                    ratio: j.rate / base(j),
                    except,
                    born_with_surge: false,
                });
            }
            for f in &mut picked {
                f.born_with_surge = f.except.is_empty() && self.is_newcomer(f.dimension, &f.key);
            }
            // The allowance is shared by every newcomer of the dimension, named now, before or
            // not yet: a surge that ramps up is named a few aggregates at a time, and sharing
            // it among each batch alone would give every batch the whole of it.
            let named_before = self.named_newborn.iter().filter(|(d, ..)| *d == dim).count();
            let unnamed = judged
                .iter()
                .filter(|j| j.dim == dim && self.is_newcomer(dim, j.key) && !self.named_newborn.contains(dim, j.key))
                .count();
            // (Those picked now are among them: present, and named before or not.)
            let share = (allowance / (named_before + unnamed).max(1) as f64).max(MIN_BASELINE);
            for f in picked.iter_mut().filter(|f| f.born_with_surge) {
                f.baseline = share;
            }
            let enough = covered >= 0.5 * excess;
            // The cost of naming them: the usual traffic caught, and what their limits still
            // let through, at least a request a second each (a surge spread over a thousand
            // prefixes is better named by its hundred ASNs).
            let cost = collateral + picked.iter().map(|f| f.baseline.max(1.0)).sum::<f64>();
            let bn = best_len(&best);
            let better = match &best {
                None => true,
                Some((bc, bcost, _)) => {
                    let best_enough = *bc >= 0.5 * excess;
                    match (enough, best_enough) {
                        (true, false) => true,
                        (false, true) => false,
                        (true, true) => (cost, picked.len()) < (*bcost, bn),
                        (false, false) => covered > *bc,
                    }
                }
            };
            if better {
                best = Some((covered, cost, picked));
            }
        }
        let mut findings = best.map(|b| b.2).unwrap_or_default();
        findings.truncate(self.tuning.max_findings);
        for f in findings.iter().filter(|f| f.born_with_surge) {
            self.named_newborn.insert(f.dimension, &f.key, ());
        }
        findings
    }

    /// The state of a key, created when first seen (as surge-born during a surge episode).
    fn key_state(&mut self, dim: Dimension, key: &str) -> &mut KeyState {
        let (born, surge_born) = (self.step, self.episode.is_some());
        self.keys.get_or_insert_with(dim, key, || KeyState { born, surge_born, ..KeyState::default() })
    }

    /// Marks the keys that came with a surge beginning at `onset` as surge-born (or, for a
    /// crowd, no longer): those that came shortly before it began came with it; those seen in
    /// the warm-up are the baseline itself, however soon after it the surge comes.
    fn mark_came_with(&mut self, onset: u64, surge_born: bool) {
        let warmup = u64::from(self.tuning.warmup);
        for k in self.keys.values_mut().filter(|k| k.born + NEW_BEFORE_SURGE >= onset && k.born > warmup) {
            k.surge_born = surge_born;
        }
    }

    /// A key with no baseline of its own, or one that came with a surge (what it learnt since
    /// is what its mitigation let through).
    fn is_newcomer(&self, dim: Dimension, key: &str) -> bool {
        self.keys.get(dim, key).is_none_or(|k| k.samples < KEY_WARMUP || k.surge_born)
    }

    /// Whether the addresses that came with the episode beginning at `onset` come through ISPs
    /// new to the site no more often than new users of the usual population would.
    ///
    /// Of the users a site has not seen yet, a share comes through ISPs none of its users has
    /// used; the Good–Turing estimate of that share is the fraction of its prefixes whose ISP
    /// has no other prefix ([`Self::unseen_network_share`]). A crowd's new addresses come
    /// through new ISPs about that often; an attack's, far more often (the incident's surge:
    /// 130 of its 150 ASNs). Addresses are counted, not requests: the count does not depend on
    /// how well the total's baseline is known in the episode's first seconds.
    fn new_sources_look_like_users(&self, onset: u64) -> bool {
        let (mut born, mut via_new) = (0u32, 0u32);
        for (dim, key, st) in self.keys.iter() {
            if dim != Dimension::Ip || !st.surge_born {
                continue;
            }
            let Ok(ip) = key.parse::<std::net::IpAddr>() else { continue };
            let prefix = crate::edge::source::prefix_of(ip).to_string();
            if let Some(asn) = self.keys.get(Dimension::Prefix, &prefix).and_then(|p| p.parent.as_deref()) {
                born += 1;
                via_new += u32::from(self.is_new_network(asn));
            }
        }
        if born < CROWD_MIN_SOURCES {
            return via_new == 0;
        }
        let allowed = (CROWD_NEW_NETWORKS + self.unseen_network_share(onset)).min(CROWD_MAX_NEW_NETWORKS);
        f64::from(via_new) < allowed * f64::from(born)
    }

    /// How often a new user of the usual population comes through an ISP no usual user has
    /// used: the fraction of the prefixes seen before `onset` whose ASN no other such prefix
    /// has (the Good–Turing estimate of the unseen share). A site with few users spread over
    /// many ISPs has not seen them all, and its crowds bring ISPs new to it.
    fn unseen_network_share(&self, onset: u64) -> f64 {
        let mut prefixes_per_asn: HashMap<&str, u32> = HashMap::new();
        let mut prefixes = 0u32;
        for (dim, _, st) in self.keys.iter() {
            if dim == Dimension::Prefix
                && !st.surge_born
                && st.born + NEW_BEFORE_SURGE < onset
                && let Some(asn) = &st.parent
            {
                *prefixes_per_asn.entry(asn).or_default() += 1;
                prefixes += 1;
            }
        }
        if prefixes < UNSEEN_MIN_PREFIXES {
            return 0.0;
        }
        let singletons = prefixes_per_asn.values().filter(|&&n| n == 1).count();
        singletons as f64 / f64::from(prefixes)
    }

    /// An ASN no client came through before this episode: unknown, or first seen with it.
    fn is_new_network(&self, asn: &str) -> bool {
        self.keys.get(Dimension::Asn, asn).is_none_or(|k| k.surge_born)
    }

    /// Per ASN, the prefixes its clients came from before the surge (learnt, and seen before
    /// it began), busiest first, with their usual rate in all.
    fn established_prefixes(&self, surge_began: u64) -> HashMap<String, (Vec<String>, f64)> {
        let mut by_asn: HashMap<&str, Vec<(&str, f64)>> = HashMap::new();
        for (dim, key, st) in self.keys.iter() {
            if dim == Dimension::Prefix
                && st.samples > 0
                && !st.surge_born
                && st.born + NEW_BEFORE_SURGE < surge_began
                && let Some(asn) = &st.parent
            {
                by_asn.entry(asn).or_default().push((key, st.rate));
            }
        }
        by_asn
            .into_iter()
            .map(|(asn, mut prefixes)| {
                prefixes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
                prefixes.truncate(MAX_EXCEPT);
                let usual = prefixes.iter().map(|p| p.1).sum();
                (asn.to_owned(), (prefixes.into_iter().map(|p| p.0.to_owned()).collect(), usual))
            })
            .collect()
    }

    /// Learns from a sample judged normal; `secs` is its adjusted length.
    fn learn(&mut self, s: &Sample, secs: f64, judged: &[Judged<'_>], new_ratio: f64) {
        let a = self.tuning.alpha;
        let w_step = a.max(1.0 / self.step as f64);
        {
            self.new_ratio = (1.0 - w_step) * self.new_ratio + w_step * new_ratio;
            for (&dim, keys) in &s.top {
                // A typical heavy key: the tenth heaviest, or the lightest of fewer; a flooder
                // at the top does not move it.
                if let Some((_, n)) = keys.get(keys.len().min(10).saturating_sub(1)) {
                    let rate = *n as f64 / secs;
                    let r = self.reference.entry(dim).or_insert(rate);
                    *r = (1.0 - w_step) * *r + w_step * rate;
                }
            }
            let step = self.step;
            for j in judged.iter().filter(|j| !j.hot) {
                let st = self.key_state(j.dim, j.key);
                st.samples += 1;
                let w = a.max(1.0 / f64::from(st.samples));
                st.rate = (1.0 - w) * st.rate + w * j.rate;
                st.share = (1.0 - w) * st.share + w * j.share;
                st.last_step = step;
            }
        }
        if self.keys.len() > MAX_KEYS {
            let mut ages: Vec<u64> = self.keys.values().map(|k| k.last_step).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() - MAX_KEYS * 9 / 10];
            self.keys.retain(|k| k.last_step >= cutoff || k.hot > 0);
        }
    }
}
