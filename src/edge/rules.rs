//! The mitigations an edge enforces, compiled for lookup per request: a `governor` limiter for
//! each rate-limited key, blocks, and traffic-class shedding. Expired rules are skipped at
//! lookup, so a rule lapses at its TTL even before the watch removes it.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock as _};
use ipnet::IpNet;

use super::source::{Country, Source, ip_key};
use crate::api::{
    Mode,
    common::unix_secs,
    mitigation::{AdmitRamp, MitigationAction, MitigationSpec},
};

/// One compiled mitigation.
pub struct Rule {
    /// `namespace/name`, for responses, logs, metrics and the per-rule counts of reports.
    /// Shared, so that an outcome names its rule without copying the name per request.
    pub name: Arc<str>,
    pub reason: Arc<str>,
    pub action: MitigationAction,
    pub shadow: bool,
    /// Unix seconds after which the rule no longer applies.
    pub expires_at: f64,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// (nanoseconds per token, burst) the limiter was built with, to reuse it across rebuilds.
    quota: Option<(u64, u32)>,
    /// Prefixes the rule leaves alone (`match.exceptPrefixes`), with the lengths present.
    except: HashSet<IpNet, Hasher>,
    except_lens: Vec<u8>,
    /// Of every 100 clients (by [`admission_bucket`]), how many an `Admit` rule lets in.
    admit_percent: u8,
    /// How an `Admit` rule's share rises between its renewals.
    admit_ramp: Option<AdmitRamp>,
}

impl Rule {
    /// Whether `ip` is in one of the rule's excepted prefixes.
    fn excepts(&self, ip: IpAddr) -> bool {
        networks_of(ip, &self.except_lens).any(|n| self.except.contains(&n))
    }
}

/// The networks of each length in `lens` that hold `ip`, in that order.
fn networks_of(ip: IpAddr, lens: &[u8]) -> impl Iterator<Item = IpNet> + '_ {
    lens.iter().filter_map(move |&len| IpNet::new(ip, len).ok().map(|n| n.trunc()))
}

/// What a request gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    /// Answer 429 with `Retry-After` (seconds).
    Limited {
        rule: Arc<str>,
        retry_after_secs: u64,
    },
    /// Answer 403.
    Blocked {
        rule: Arc<str>,
        reason: Arc<str>,
    },
    /// Answer 503 with `Retry-After` (seconds): an admission gate leaves this client out.
    Gated {
        rule: Arc<str>,
        retry_after_secs: u64,
    },
}

/// Seconds a client left out by an admission gate that is not ramping is told to wait: none
/// knows when the gate opens.
pub const GATED_RETRY_AFTER_SECS: u64 = 5;
/// The longest a ramping gate tells a client to wait, even if its turn is later: the gate may
/// be lifted early (its policy deleted, or the operator stopped and the gate lapsed).
pub const GATED_RETRY_AFTER_MAX_SECS: u64 = 60;

/// A client's place among 100 (from its address), the same on every edge: an `Admit` rule
/// of percent p lets in those below p, so a rising percent keeps those it let in.
pub fn admission_bucket(ip: IpAddr) -> u8 {
    (super::sketch::hash_key(ip_key(ip)) % 100) as u8
}

/// The result of a lookup: the outcome, and whether a shadow rule would have limited.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub outcome: Outcome,
    /// A shadow rule that would have limited or blocked the request.
    pub shadow_limited: Option<Arc<str>>,
}

impl Check {
    /// Nothing applies: the request goes through.
    const PASS: Check = Check { outcome: Outcome::Pass, shadow_limited: None };
}

/// A fast hash with a per-process random seed: every request looks up several of these maps,
/// and the keys a Mitigation names come from traffic, so a fixed seed could be collided with.
type Hasher = foldhash::fast::RandomState;

/// Rules by the key they match.
type Index<K> = HashMap<K, Vec<Arc<Rule>>, Hasher>;

/// Every active rule of one edge pool, indexed by what it matches.
#[derive(Default)]
pub struct RuleSet {
    /// Keyed by [`ip_key`]: one integer to hash, and a v4-mapped address is its IPv4 one.
    by_ip: Index<u128>,
    /// Keyed by (prefix length, network); `prefix_lens` lists the lengths present.
    by_prefix: Index<IpNet>,
    prefix_lens: Vec<u8>,
    by_asn: Index<u32>,
    /// Keyed by the two letters as a request's source holds them: no string to make or check.
    by_country: Index<Country>,
    by_api_key: Index<String>,
    by_class: Index<String>,
    /// Rules on every request (`match.all`): admission gates.
    on_all: Vec<Arc<Rule>>,
    /// Sources no rule applies to.
    allowlist: Allowlist,
    len: usize,
}

/// Networks as (network, mask) pairs: a test is an AND and a compare per network, where
/// `IpNet::contains` works the mask out again on every request.
#[derive(Clone, Debug, Default)]
struct Allowlist {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Allowlist {
    fn new(nets: &[IpNet]) -> Self {
        let mut list = Self::default();
        for net in nets {
            match net {
                IpNet::V4(n) => list.v4.push((u32::from(n.network()), u32::from(n.netmask()))),
                IpNet::V6(n) => list.v6.push((u128::from(n.network()), u128::from(n.netmask()))),
            }
        }
        list
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|&(net, mask)| u32::from(a) & mask == net),
            IpAddr::V6(a) => self.v6.iter().any(|&(net, mask)| u128::from(a) & mask == net),
        }
    }
}

/// A spec the edge cannot enforce; the rest of the set still applies.
#[derive(Debug, PartialEq)]
pub struct Skipped {
    pub name: String,
    pub why: String,
}

impl RuleSet {
    /// Compiles `mitigations` (`(namespace/name, spec)`), reusing the limiters of `previous`
    /// for rules whose limit did not change, so an unrelated edit does not refill every bucket.
    pub fn build<'a>(
        mitigations: impl IntoIterator<Item = (String, &'a MitigationSpec)>,
        allowlist: Vec<IpNet>,
        previous: &RuleSet,
    ) -> (Self, Vec<Skipped>) {
        let mut old: HashMap<&str, &Arc<Rule>> = HashMap::new();
        for r in previous.rules() {
            old.insert(&r.name, r);
        }
        let mut set = RuleSet { allowlist: Allowlist::new(&allowlist), ..RuleSet::default() };
        let mut skipped = Vec::new();
        for (name, spec) in mitigations {
            let rule = match compile(&name, spec, old.get(name.as_str()).copied()) {
                Ok(r) => Arc::new(r),
                Err(why) => {
                    skipped.push(Skipped { name, why });
                    continue;
                }
            };
            let m = &spec.match_;
            let slot = if let Some(ip) = &m.ip {
                ip.parse::<IpAddr>()
                    .map(|ip| set.by_ip.entry(ip_key(ip)).or_default())
                    .map_err(|e| format!("match.ip: {e}"))
            } else if let Some(p) = &m.prefix {
                p.parse::<IpNet>()
                    .map(|n| {
                        let n = n.trunc();
                        if !set.prefix_lens.contains(&n.prefix_len()) {
                            set.prefix_lens.push(n.prefix_len());
                        }
                        set.by_prefix.entry(n).or_default()
                    })
                    .map_err(|e| format!("match.prefix: {e}"))
            } else if let Some(asn) = m.asn {
                u32::try_from(asn).map(|a| set.by_asn.entry(a).or_default()).map_err(|e| format!("match.asn: {e}"))
            } else if let Some(c) = &m.country {
                Country::parse(c)
                    .map(|c| set.by_country.entry(c).or_default())
                    .ok_or_else(|| format!("match.country: {c:?} is not a two-letter country code"))
            } else if let Some(k) = &m.api_key {
                Ok(set.by_api_key.entry(k.clone()).or_default())
            } else if let Some(c) = &m.traffic_class {
                Ok(set.by_class.entry(c.clone()).or_default())
            } else if m.all == Some(true) {
                Ok(&mut set.on_all)
            } else {
                Err("match names nothing".to_owned())
            };
            match slot {
                Ok(v) => {
                    v.push(rule);
                    set.len += 1;
                }
                Err(why) => skipped.push(Skipped { name, why }),
            }
        }
        // Longest prefix first, so the most specific rule is met first.
        set.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        (set, skipped)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.by_ip
            .values()
            .chain(self.by_prefix.values())
            .chain(self.by_asn.values())
            .chain(self.by_country.values())
            .chain(self.by_api_key.values())
            .chain(self.by_class.values())
            .chain(std::iter::once(&self.on_all))
            .flatten()
    }

    /// Decides a request from `src` in traffic class `class` at unix time `now`.
    pub fn check(&self, src: &Source, class: Option<&str>, now: f64) -> Check {
        if self.len == 0 {
            return Check::PASS;
        }
        let candidates: [Option<&Vec<Arc<Rule>>>; 6] = [
            self.by_ip.get(&ip_key(src.ip)),
            networks_of(src.ip, &self.prefix_lens).find_map(|n| self.by_prefix.get(&n)),
            src.asn.and_then(|a| self.by_asn.get(&a)),
            src.country.and_then(|c| self.by_country.get(&c)),
            src.api_key.as_deref().and_then(|k| self.by_api_key.get(k)),
            class.and_then(|c| self.by_class.get(c)),
        ];
        // Nearly every request matches no rule: that answer is the lookups alone, and the
        // allowlist only matters to a request some rule names.
        if (self.on_all.is_empty() && candidates.iter().all(Option::is_none)) || self.allowlist.contains(src.ip) {
            return Check::PASS;
        }
        decide(candidates.into_iter().flatten().flatten().chain(&self.on_all), src.ip, now)
    }
}

/// Whether an `Admit` rule lets `ip` in at `now`; if not, when to come back: when the ramp
/// reaches its bucket.
fn admit(rule: &Rule, ip: IpAddr, now: f64) -> Outcome {
    let bucket = admission_bucket(ip);
    let ramp = rule.admit_ramp.as_ref();
    let percent = ramp.map_or(0, |r| r.percent_at(now).unwrap_or(100)).max(i32::from(rule.admit_percent));
    if i32::from(bucket) < percent {
        return Outcome::Pass;
    }
    let retry_after_secs = match ramp {
        Some(r) => ((r.admits_at(bucket) - now).ceil().max(1.0) as u64).min(GATED_RETRY_AFTER_MAX_SECS),
        None => GATED_RETRY_AFTER_SECS,
    };
    Outcome::Gated { rule: rule.name.clone(), retry_after_secs }
}

/// The outcome of the rules that name a request: a block outranks a limit; shadow rules only
/// say what they would have done. Out of line, to keep [`RuleSet::check`]'s common path short.
#[inline(never)]
fn decide<'a>(rules: impl Iterator<Item = &'a Arc<Rule>>, ip: IpAddr, now: f64) -> Check {
    let mut check = Check::PASS;
    for rule in rules {
        if rule.expires_at <= now || rule.excepts(ip) {
            continue;
        }
        let verdict = match rule.action {
            MitigationAction::Block => Outcome::Blocked { rule: rule.name.clone(), reason: rule.reason.clone() },
            MitigationAction::RateLimit => match rule.limiter.as_ref().map(|l| (l, l.check())) {
                Some((l, Err(not_until))) => {
                    // At a token a second or faster, the next is less than a second away:
                    // no second clock reading. Otherwise the limiter's own clock (building
                    // a clock calibrates it, far too slow for a request path).
                    let retry_after_secs = if rule.quota.is_some_and(|(period_ns, _)| period_ns <= 1_000_000_000) {
                        1
                    } else {
                        not_until.wait_time_from(l.clock().now()).as_secs().max(1)
                    };
                    Outcome::Limited { rule: rule.name.clone(), retry_after_secs }
                }
                _ => Outcome::Pass,
            },
            MitigationAction::Admit => admit(rule, ip, now),
        };
        if verdict == Outcome::Pass {
            continue;
        }
        if rule.shadow {
            check.shadow_limited.get_or_insert_with(|| rule.name.clone());
        } else if matches!(verdict, Outcome::Blocked { .. }) || check.outcome == Outcome::Pass {
            // A block outranks a limit.
            check.outcome = verdict;
        }
    }
    check
}

fn compile(name: &str, spec: &MitigationSpec, previous: Option<&Arc<Rule>>) -> Result<Rule, String> {
    let expires_at = unix_secs(&spec.expires_at);
    let (limiter, quota) = match (spec.action, &spec.rate_limit) {
        (MitigationAction::RateLimit, Some(rl)) => {
            if !(rl.requests_per_second.is_finite() && rl.requests_per_second > 0.0) {
                return Err(format!("rateLimit.requestsPerSecond {} is not a positive rate", rl.requests_per_second));
            }
            let burst = NonZeroU32::new(u32::try_from(rl.burst.max(1)).unwrap_or(1)).unwrap_or(NonZeroU32::MIN);
            // One token every 1/rate seconds; governor counts in nanoseconds.
            let period_ns = (1e9 / rl.requests_per_second).clamp(1.0, 3600e9) as u64;
            let key = (period_ns, burst.get());
            let reused = previous.filter(|p| p.quota == Some(key)).and_then(|p| p.limiter.clone());
            let limiter = match reused {
                Some(l) => l,
                None => {
                    let quota = Quota::with_period(Duration::from_nanos(period_ns))
                        .ok_or("rate limit period is zero")?
                        .allow_burst(burst);
                    Arc::new(RateLimiter::direct(quota))
                }
            };
            (Some(limiter), Some(key))
        }
        (MitigationAction::RateLimit, None) => return Err("action RateLimit without rateLimit".to_owned()),
        (MitigationAction::Block | MitigationAction::Admit, _) => (None, None),
    };
    let admit_percent = match (spec.action, spec.admit_percent) {
        (MitigationAction::Admit, Some(p)) => u8::try_from(p.clamp(0, 100)).unwrap_or(100),
        (MitigationAction::Admit, None) => return Err("action Admit without admitPercent".to_owned()),
        _ => 100,
    };
    let mut except = HashSet::default();
    let mut except_lens = Vec::new();
    for p in &spec.match_.except_prefixes {
        let n = p.parse::<IpNet>().map_err(|e| format!("match.exceptPrefixes: {p:?}: {e}"))?.trunc();
        if !except_lens.contains(&n.prefix_len()) {
            except_lens.push(n.prefix_len());
        }
        except.insert(n);
    }
    Ok(Rule {
        name: name.into(),
        reason: spec.reason.as_str().into(),
        action: spec.action,
        shadow: spec.mode == Mode::Shadow,
        expires_at,
        limiter,
        quota,
        except,
        except_lens,
        admit_percent,
        admit_ramp: spec.admit_ramp.clone().filter(|_| spec.action == MitigationAction::Admit),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;
    use crate::{
        api::mitigation::{MatchSpec, RateLimit},
        edge::source::{Country, prefix_of},
    };

    fn src(ip: &str) -> Source {
        let ip = ip.parse().unwrap();
        Source { ip, prefix: prefix_of(ip), asn: Some(64500), country: Country::parse("DE"), api_key: None }
    }

    fn spec(m: MatchSpec, action: MitigationAction, rps: f64, burst: i32, expires: f64) -> MitigationSpec {
        MitigationSpec {
            edge_pool: "public".into(),
            guard: None,
            match_: m,
            action,
            rate_limit: (action == MitigationAction::RateLimit)
                .then_some(RateLimit { requests_per_second: rps, burst }),
            admit_percent: None,
            admit_ramp: None,
            expires_at: Time(Timestamp::from_millisecond((expires * 1000.0) as i64).unwrap()),
            reason: "test".into(),
            evidence: None,
            offence: 0,
            mode: Mode::Enforce,
        }
    }

    fn none() -> MatchSpec {
        MatchSpec::default()
    }

    /// An admission gate letting in `percent` of clients.
    fn gate(percent: i32) -> MitigationSpec {
        let all = MatchSpec { all: Some(true), ..none() };
        MitigationSpec { admit_percent: Some(percent), ..spec(all, MitigationAction::Admit, 0.0, 1, NOW + 60.0) }
    }

    /// Of `n` clients, those `set` lets through.
    fn admitted(set: &RuleSet, n: u32) -> Vec<u32> {
        (0..n)
            .filter(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i * 7).to_string();
                set.check(&src(&ip), None, NOW).outcome == Outcome::Pass
            })
            .collect()
    }

    #[test]
    fn a_ramping_gate_follows_its_ramp_and_tells_each_client_left_out_when_its_turn_comes() {
        // Renewed 20 s into a 100 s ramp from 10%, at the 28% it then admitted.
        let ramp = AdmitRamp {
            from_percent: 10,
            since: crate::api::common::time_at(NOW - 20.0),
            over: crate::api::Duration(std::time::Duration::from_secs(100)),
        };
        let ramping = MitigationSpec { admit_ramp: Some(ramp.clone()), ..gate(28) };
        let (set, _) = RuleSet::build([("ns/gate".to_owned(), &ramping)], vec![], &RuleSet::default());
        let clients: Vec<Source> =
            (0..2000u32).map(|i| src(&std::net::Ipv4Addr::from(0x0a00_0000 + i * 7).to_string())).collect();
        let (mut waits, mut latest) = (Vec::new(), 0);
        for c in &clients {
            match set.check(c, None, NOW).outcome {
                Outcome::Pass => assert!(admission_bucket(c.ip) < 28),
                Outcome::Gated { retry_after_secs, .. } => {
                    let bucket = admission_bucket(c.ip);
                    assert!(bucket >= 28, "bucket {bucket} refused at 28%");
                    assert!((1..=GATED_RETRY_AFTER_MAX_SECS).contains(&retry_after_secs));
                    // Told to come back when its turn comes (or at the cap, if that is later):
                    // then it is let in, and not a second before.
                    let back = NOW + retry_after_secs as f64;
                    if retry_after_secs < GATED_RETRY_AFTER_MAX_SECS {
                        assert_eq!(set.check(c, None, back).outcome, Outcome::Pass, "bucket {bucket}");
                    }
                    assert!(ramp.admits_at(bucket) > back - 1.0, "bucket {bucket} told to wait too long");
                    waits.push(retry_after_secs);
                    latest = latest.max(retry_after_secs);
                }
                other => panic!("{other:?}"),
            }
        }
        // Clients are spread over the ramp, not all sent back at once.
        waits.sort_unstable();
        waits.dedup();
        assert!(waits.len() > 30, "{waits:?}");
        assert_eq!(latest, GATED_RETRY_AFTER_MAX_SECS, "the last buckets are due after the cap");
        // Between renewals the edge follows the ramp: 50 s later, 73% are in.
        let later = clients.iter().filter(|c| set.check(c, None, NOW + 50.0).outcome == Outcome::Pass).count();
        assert!((1350..1570).contains(&later), "{later} of 2000");
    }

    #[test]
    fn an_admission_gate_lets_in_a_share_of_clients_that_only_grows() {
        let build = |p| RuleSet::build([("ns/gate".to_owned(), &gate(p))], vec![], &RuleSet::default()).0;
        let closed = build(0);
        assert!(admitted(&closed, 2000).is_empty());
        let out = closed.check(&src("192.0.2.1"), None, NOW).outcome;
        assert_eq!(out, Outcome::Gated { rule: "ns/gate".into(), retry_after_secs: GATED_RETRY_AFTER_SECS });
        let (ten, half) = (admitted(&build(10), 2000), admitted(&build(50), 2000));
        assert!((150..250).contains(&ten.len()) && (900..1100).contains(&half.len()), "{} {}", ten.len(), half.len());
        assert!(ten.iter().all(|c| half.contains(c)), "a client let in stays let in as the gate opens");
        // The same client, the same answer, every time.
        assert_eq!(admitted(&build(50), 2000), half);
        // An allowlisted source passes a closed gate; a block still blocks behind an open one.
        let (allowed, _) = RuleSet::build(
            [("ns/gate".to_owned(), &gate(0))],
            vec!["192.0.2.0/24".parse().unwrap()],
            &RuleSet::default(),
        );
        assert_eq!(allowed.check(&src("192.0.2.1"), None, NOW).outcome, Outcome::Pass);
        let block =
            spec(MatchSpec { ip: Some("10.0.0.7".into()), ..none() }, MitigationAction::Block, 0.0, 1, NOW + 60.0);
        let (both, _) = RuleSet::build(
            [("ns/gate".to_owned(), &gate(100)), ("ns/b".to_owned(), &block)],
            vec![],
            &RuleSet::default(),
        );
        assert!(matches!(both.check(&src("10.0.0.7"), None, NOW).outcome, Outcome::Blocked { .. }));
        assert_eq!(both.check(&src("10.0.0.8"), None, NOW).outcome, Outcome::Pass);
        // Without its percent it is skipped and named.
        let bad = MitigationSpec { admit_percent: None, ..gate(0) };
        let (set, skipped) = RuleSet::build([("ns/bad".to_owned(), &bad)], vec![], &RuleSet::default());
        assert!(set.is_empty() && skipped[0].why.contains("without admitPercent"), "{skipped:?}");
    }

    const NOW: f64 = 1_800_000_000.0;

    #[test]
    fn an_ipv4_rule_matches_the_address_as_a_dual_stack_socket_reports_it() {
        let s =
            spec(MatchSpec { ip: Some("203.0.113.9".into()), ..none() }, MitigationAction::Block, 0.0, 0, NOW + 60.0);
        let (set, _) = RuleSet::build([("ns/block".to_owned(), &s)], vec![], &RuleSet::default());
        for seen_as in ["203.0.113.9", "::ffff:203.0.113.9"] {
            assert!(matches!(set.check(&src(seen_as), None, NOW).outcome, Outcome::Blocked { .. }), "{seen_as}");
        }
        assert_eq!(set.check(&src("::ffff:203.0.113.10"), None, NOW).outcome, Outcome::Pass);
    }

    #[test]
    fn limits_only_the_matched_source_and_lapses_at_expiry() {
        let s = spec(
            MatchSpec { ip: Some("203.0.113.9".into()), ..none() },
            MitigationAction::RateLimit,
            1.0,
            3,
            NOW + 60.0,
        );
        let (set, skipped) = RuleSet::build([("ns/flood".to_owned(), &s)], vec![], &RuleSet::default());
        assert!(skipped.is_empty());
        let flooder = src("203.0.113.9");
        let passed = (0..10).filter(|_| set.check(&flooder, None, NOW).outcome == Outcome::Pass).count();
        assert_eq!(passed, 3, "the burst, then 429s");
        match set.check(&flooder, None, NOW).outcome {
            Outcome::Limited { rule, retry_after_secs } => {
                assert_eq!(&*rule, "ns/flood");
                assert!(retry_after_secs >= 1);
            }
            other => panic!("{other:?}"),
        }
        assert!((0..100).all(|_| set.check(&src("203.0.113.10"), None, NOW).outcome == Outcome::Pass));
        assert_eq!(set.check(&flooder, None, NOW + 61.0).outcome, Outcome::Pass, "expired");
    }

    #[test]
    fn retry_after_says_when_the_next_token_comes() {
        let retry = |rps: f64| {
            let s = spec(
                MatchSpec { ip: Some("203.0.113.9".into()), ..none() },
                MitigationAction::RateLimit,
                rps,
                1,
                NOW + 60.0,
            );
            let (set, _) = RuleSet::build([("ns/slow".to_owned(), &s)], vec![], &RuleSet::default());
            assert_eq!(set.check(&src("203.0.113.9"), None, NOW).outcome, Outcome::Pass, "the burst");
            match set.check(&src("203.0.113.9"), None, NOW).outcome {
                Outcome::Limited { retry_after_secs, .. } => retry_after_secs,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(retry(50.0), 1, "under a second away: the least Retry-After");
        assert_eq!(retry(1.0), 1);
        assert!((9..=10).contains(&retry(0.1)), "a token every ten seconds: {}", retry(0.1));
    }

    #[test]
    fn prefixes_asns_countries_and_classes_match() {
        let specs = [
            spec(
                MatchSpec { prefix: Some("198.51.100.0/22".into()), ..none() },
                MitigationAction::Block,
                0.0,
                1,
                NOW + 60.0,
            ),
            spec(MatchSpec { asn: Some(64501), ..none() }, MitigationAction::Block, 0.0, 1, NOW + 60.0),
            spec(MatchSpec { country: Some("FR".into()), ..none() }, MitigationAction::Block, 0.0, 1, NOW + 60.0),
            spec(
                MatchSpec { traffic_class: Some("batch".into()), ..none() },
                MitigationAction::Block,
                0.0,
                1,
                NOW + 60.0,
            ),
        ];
        let names = ["p", "a", "c", "k"];
        let (set, _) =
            RuleSet::build(names.iter().map(|n| n.to_string()).zip(specs.iter()), vec![], &RuleSet::default());
        let blocked =
            |s: &Source, class: Option<&str>| matches!(set.check(s, class, NOW).outcome, Outcome::Blocked { .. });
        assert!(blocked(&src("198.51.103.4"), None), "inside the /22");
        assert!(!blocked(&src("198.51.104.4"), None));
        assert!(blocked(&Source { asn: Some(64501), ..src("192.0.2.1") }, None));
        assert!(blocked(&Source { country: Country::parse("FR"), ..src("192.0.2.1") }, None));
        assert!(blocked(&src("192.0.2.1"), Some("batch")));
        assert!(!blocked(&src("192.0.2.1"), Some("checkout")));
    }

    #[test]
    fn excepted_prefixes_of_a_matched_asn_are_left_alone() {
        let m = MatchSpec {
            asn: Some(64500),
            except_prefixes: vec!["198.51.100.0/24".into(), "2001:db8:1::/48".into()],
            ..none()
        };
        let s = spec(m, MitigationAction::Block, 0.0, 1, NOW + 60.0);
        let (set, skipped) = RuleSet::build([("ns/isp".to_owned(), &s)], vec![], &RuleSet::default());
        assert!(skipped.is_empty(), "{skipped:?}");
        let blocked = |ip: &str| matches!(set.check(&src(ip), None, NOW).outcome, Outcome::Blocked { .. });
        assert!(!blocked("198.51.100.77"), "an established prefix of the ASN");
        assert!(!blocked("2001:db8:1:2::5"));
        assert!(blocked("198.51.101.77"), "another prefix of the same ASN");
        assert!(blocked("2001:db8:2::5"));

        let bad = MatchSpec { asn: Some(64500), except_prefixes: vec!["nonsense".into()], ..none() };
        let s = spec(bad, MitigationAction::Block, 0.0, 1, NOW + 60.0);
        let (_, skipped) = RuleSet::build([("ns/bad".to_owned(), &s)], vec![], &RuleSet::default());
        assert!(skipped[0].why.contains("exceptPrefixes") && skipped[0].why.contains("nonsense"), "{skipped:?}");
    }

    #[test]
    fn allowlisted_sources_are_never_limited() {
        let s = spec(MatchSpec { country: Some("DE".into()), ..none() }, MitigationAction::Block, 0.0, 1, NOW + 60.0);
        let allow = vec!["10.0.0.0/8".parse().unwrap()];
        let (set, _) = RuleSet::build([("ns/de".to_owned(), &s)], allow, &RuleSet::default());
        assert_eq!(set.check(&src("10.1.2.3"), None, NOW).outcome, Outcome::Pass);
        assert!(matches!(set.check(&src("192.0.2.1"), None, NOW).outcome, Outcome::Blocked { .. }));
    }

    #[test]
    fn the_allowlist_agrees_with_ipnet() {
        let nets: Vec<IpNet> =
            ["10.9.9.9/8", "192.0.2.7/32", "2001:db8::/48"].iter().map(|n| n.parse().unwrap()).collect();
        let list = Allowlist::new(&nets);
        for ip in
            ["10.0.0.1", "11.0.0.1", "192.0.2.7", "192.0.2.8", "2001:db8:0:1::9", "2001:db8:1::9", "::ffff:10.0.0.1"]
        {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(list.contains(ip), nets.iter().any(|n| n.contains(&ip)), "{ip}");
        }
        assert!(Allowlist::new(&["0.0.0.0/0".parse().unwrap()]).contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn shadow_rules_count_but_pass() {
        let mut s =
            spec(MatchSpec { ip: Some("192.0.2.1".into()), ..none() }, MitigationAction::Block, 0.0, 1, NOW + 60.0);
        s.mode = Mode::Shadow;
        let (set, _) = RuleSet::build([("ns/s".to_owned(), &s)], vec![], &RuleSet::default());
        let c = set.check(&src("192.0.2.1"), None, NOW);
        assert_eq!(c, Check { outcome: Outcome::Pass, shadow_limited: Some("ns/s".into()) });
    }

    #[test]
    fn rebuilds_keep_buckets_of_unchanged_limits() {
        let s = spec(
            MatchSpec { ip: Some("192.0.2.1".into()), ..none() },
            MitigationAction::RateLimit,
            0.01,
            2,
            NOW + 60.0,
        );
        let (first, _) = RuleSet::build([("ns/r".to_owned(), &s)], vec![], &RuleSet::default());
        assert_eq!(first.check(&src("192.0.2.1"), None, NOW).outcome, Outcome::Pass);
        assert_eq!(first.check(&src("192.0.2.1"), None, NOW).outcome, Outcome::Pass);
        let (second, _) = RuleSet::build([("ns/r".to_owned(), &s)], vec![], &first);
        assert!(matches!(second.check(&src("192.0.2.1"), None, NOW).outcome, Outcome::Limited { .. }));
    }

    #[test]
    fn an_unenforceable_rule_is_skipped_and_named() {
        let mut bad =
            spec(MatchSpec { ip: Some("not-an-ip".into()), ..none() }, MitigationAction::Block, 0.0, 1, NOW + 60.0);
        let (set, skipped) = RuleSet::build([("ns/bad".to_owned(), &bad)], vec![], &RuleSet::default());
        assert!(set.is_empty());
        assert_eq!(skipped[0].name, "ns/bad");
        assert!(skipped[0].why.contains("match.ip"), "{:?}", skipped[0]);
        bad.match_ = MatchSpec { ip: Some("192.0.2.1".into()), ..none() };
        bad.action = MitigationAction::RateLimit;
        bad.rate_limit = Some(RateLimit { requests_per_second: f64::NAN, burst: 1 });
        let (_, skipped) = RuleSet::build([("ns/nan".to_owned(), &bad)], vec![], &RuleSet::default());
        assert!(skipped[0].why.contains("not a positive rate"), "{:?}", skipped[0]);
        // The CRD's pattern keeps such a country out of the cluster; an edge reading one from
        // elsewhere still names it rather than holding a rule that can never match.
        bad.match_ = MatchSpec { country: Some("DEU".into()), ..none() };
        bad.action = MitigationAction::Block;
        let (set, skipped) = RuleSet::build([("ns/deu".to_owned(), &bad)], vec![], &RuleSet::default());
        assert!(set.is_empty());
        assert!(skipped[0].why.contains("\"DEU\" is not a two-letter country code"), "{:?}", skipped[0]);
    }
}
