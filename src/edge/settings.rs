//! The edge's view of its pool's TrafficGuard: which header carries API keys, how requests map
//! to traffic classes, the allowlist, the upstream's breaker settings and the dimensions to
//! count. Defaults apply until a TrafficGuard for the pool is seen (or always, standalone).

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::{breaker::BreakerConfig, report::Dimension};
use crate::api::TrafficGuardSpec;

/// How requests map to traffic classes: a header naming a known class wins, then the longest
/// matching path prefix.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    header: Option<HeaderName>,
    /// (class, priority)
    classes: Vec<(String, i32)>,
    /// (path prefix, index into `classes`), longest prefix first.
    prefixes: Vec<(String, usize)>,
}

impl Classifier {
    pub fn classify<'a>(&'a self, headers: &HeaderMap, path: &str) -> Option<&'a str> {
        if self.classes.is_empty() {
            return None;
        }
        if let Some(v) = self.header.as_ref().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok())
            && let Some((name, _)) = self.classes.iter().find(|(n, _)| n == v)
        {
            return Some(name);
        }
        self.prefixes.iter().find(|(p, _)| path.starts_with(p.as_str())).map(|(_, i)| self.classes[*i].0.as_str())
    }
}

/// Settings taken from the pool's TrafficGuard.
#[derive(Clone, Debug)]
pub struct GuardSettings {
    /// `namespace/name` of the TrafficGuard, when one is in force.
    pub source: Option<String>,
    pub api_key_header: Option<HeaderName>,
    pub classifier: Classifier,
    pub allowlist: Vec<IpNet>,
    pub breaker: BreakerConfig,
    pub dimensions: Vec<Dimension>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            source: None,
            api_key_header: None,
            classifier: Classifier::default(),
            allowlist: Vec::new(),
            breaker: BreakerConfig::default(),
            dimensions: vec![Dimension::Ip, Dimension::Prefix, Dimension::Asn, Dimension::Country],
        }
    }
}

impl GuardSettings {
    /// The settings of `spec` for the upstream `upstream`. Entries the edge cannot use (a
    /// header name or CIDR the operator would mark Invalid) are left out, never fatal.
    pub fn from_spec(source: String, spec: &TrafficGuardSpec, upstream: &str) -> Self {
        let mut s = GuardSettings { source: Some(source), ..GuardSettings::default() };
        s.api_key_header = spec.api_key_header.as_deref().and_then(|h| h.parse().ok());
        s.allowlist = spec.allowlist.iter().filter_map(|c| c.parse().ok()).collect();
        s.dimensions = spec.aggregation_keys.clone();
        if let Some(sh) = &spec.shedding {
            let mut c =
                Classifier { header: sh.class_header.as_deref().and_then(|h| h.parse().ok()), ..Classifier::default() };
            for (i, class) in sh.classes.iter().enumerate() {
                c.classes.push((class.name.clone(), class.priority));
                c.prefixes.extend(class.path_prefixes.iter().map(|p| (p.clone(), i)));
            }
            c.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
            s.classifier = c;
        }
        if let Some(cb) = spec.circuit_breakers.iter().find(|c| c.upstream == upstream) {
            s.breaker = BreakerConfig {
                consecutive_failures: cb.consecutive_failures.max(1) as u32,
                error_ratio: cb.error_ratio,
                slow_call_ratio: cb.slow_call_ratio,
                slow_call_secs: cb.slow_call_threshold.as_secs_f64(),
                window_secs: cb.window.as_secs_f64(),
                min_calls: cb.min_calls.max(1) as u32,
                open_for_secs: cb.open_for.as_secs_f64(),
                ..BreakerConfig::default()
            };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::traffic_guard::{Shedding, TrafficClass};

    fn guard() -> TrafficGuardSpec {
        serde_json::from_value(serde_json::json!({
            "edgePool": "public",
            "aggregationKeys": ["Ip", "ApiKey"],
            "apiKeyHeader": "x-api-key",
            "allowlist": ["10.0.0.0/8", "not a cidr"],
            "circuitBreakers": [{"upstream": "api", "consecutiveFailures": 3, "openFor": "2s"}],
        }))
        .unwrap()
    }

    #[test]
    fn settings_come_from_the_guard() {
        let s = GuardSettings::from_spec("ns/g".into(), &guard(), "api");
        assert_eq!(s.api_key_header.unwrap().as_str(), "x-api-key");
        assert_eq!(s.allowlist.len(), 1, "the bad CIDR is left out");
        assert_eq!(s.dimensions, vec![Dimension::Ip, Dimension::ApiKey]);
        assert_eq!(s.breaker.consecutive_failures, 3);
        assert_eq!(s.breaker.open_for_secs, 2.0);
        let other = GuardSettings::from_spec("ns/g".into(), &guard(), "other");
        assert_eq!(other.breaker.consecutive_failures, BreakerConfig::default().consecutive_failures);
    }

    #[test]
    fn classes_by_header_then_longest_prefix() {
        let mut spec = guard();
        spec.shedding = Some(Shedding {
            class_header: Some("x-priority".into()),
            classes: vec![
                TrafficClass { name: "critical".into(), priority: 100, path_prefixes: vec!["/checkout".into()] },
                TrafficClass { name: "batch".into(), priority: 0, path_prefixes: vec!["/".into(), "/export".into()] },
            ],
        });
        let c = GuardSettings::from_spec("ns/g".into(), &spec, "api").classifier;
        let mut h = HeaderMap::new();
        assert_eq!(c.classify(&h, "/checkout/pay"), Some("critical"));
        assert_eq!(c.classify(&h, "/search"), Some("batch"));
        h.insert("x-priority", "critical".parse().unwrap());
        assert_eq!(c.classify(&h, "/export"), Some("critical"));
        h.insert("x-priority", "unknown".parse().unwrap());
        assert_eq!(c.classify(&h, "/export"), Some("batch"), "an unknown class in the header is ignored");
    }
}
