//! Checks the schema cannot make: PromQL that parses, CIDRs and header names that are valid,
//! stage dependencies without cycles, references to Secrets.
//!
//! Pure functions of a spec. The operator turns a non-empty result into an `Invalid`
//! condition whose message names each offending field; Secret existence needs the cluster,
//! so specs only list the references ([`Validate::secret_refs`]) for the operator to check.

use std::{collections::HashMap, fmt};

use super::{
    BootstrapPolicySpec, MitigationSpec, ScalingPolicySpec, SecretKeyRef, TrafficGuardSpec,
    scaling_policy::{SignalLossAction, SignalRole},
};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.signals[0].prometheus.query`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins errors into one condition message.
pub fn summarize(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Semantic validation of a policy spec.
pub trait Validate {
    /// Every problem found; empty when the spec is valid.
    fn validate(&self) -> Vec<FieldError>;
    /// Secret references, with the path of the field holding each.
    fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)> {
        Vec::new()
    }
}

fn check_promql(field: String, query: &str, errors: &mut Vec<FieldError>) {
    if let Err(e) = promql_parser::parser::parse(query) {
        errors.push(FieldError::new(field, format!("PromQL does not parse: {}", e.trim())));
    }
}

fn check_url(field: String, url: &str, errors: &mut Vec<FieldError>) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => errors.push(FieldError::new(field, format!("URL scheme must be http or https, not {:?}", u.scheme()))),
        Err(e) => errors.push(FieldError::new(field, format!("not a URL: {e}"))),
    }
}

fn check_header(field: String, name: &str, errors: &mut Vec<FieldError>) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        errors.push(FieldError::new(field, format!("{name:?} is not a valid HTTP header name")));
    }
}

impl Validate for ScalingPolicySpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, s) in self.signals.iter().enumerate() {
            if let Some(p) = &s.prometheus {
                check_promql(format!("spec.signals[{i}].prometheus.query"), &p.query, &mut errors);
                if let Some(url) = &p.url {
                    check_url(format!("spec.signals[{i}].prometheus.url"), url, &mut errors);
                }
            }
            if let Some(r) = &s.rabbitmq {
                check_url(format!("spec.signals[{i}].rabbitmq.managementUrl"), &r.management_url, &mut errors);
            }
        }
        let has_role = |role| self.signals.iter().any(|s| s.role == role);
        if has_role(SignalRole::ReplicaLag) && self.capacity.max_replica_lag.is_none() {
            errors.push(FieldError::new("spec.capacity.maxReplicaLag", "required when a signal has role ReplicaLag"));
        }
        if !has_role(SignalRole::ArrivalRate) && !has_role(SignalRole::Backlog) && !has_role(SignalRole::ReplicaLag) {
            errors.push(FieldError::new("spec.signals", "at least one signal is required"));
        }
        let b = &self.bounds;
        if self.on_signal_loss.action == SignalLossAction::Fallback
            && let Some(f) = self.on_signal_loss.fallback_replicas
            && !(b.min_replicas..=b.max_replicas).contains(&f)
        {
            errors.push(FieldError::new(
                "spec.onSignalLoss.fallbackReplicas",
                format!("{f} is outside bounds [{}, {}]", b.min_replicas, b.max_replicas),
            ));
        }
        errors
    }

    fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)> {
        let mut refs = Vec::new();
        for (i, s) in self.signals.iter().enumerate() {
            if let Some(r) = s.rabbitmq.as_ref().and_then(|r| r.credentials_secret_ref.as_ref()) {
                refs.push((format!("spec.signals[{i}].rabbitmq.credentialsSecretRef"), r));
            }
            if let Some(p) = &s.postgres {
                refs.push((format!("spec.signals[{i}].postgres.connectionSecretRef"), &p.connection_secret_ref));
            }
        }
        if let Some(p) = &self.page {
            refs.push(("spec.page.routeSecretRef".to_owned(), &p.route_secret_ref));
        }
        refs
    }
}

impl Validate for TrafficGuardSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, cidr) in self.allowlist.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                errors.push(FieldError::new(format!("spec.allowlist[{i}]"), format!("{cidr:?} is not a CIDR or IP")));
            }
        }
        if let Some(q) = &self.baseline.prometheus_query {
            check_promql("spec.baseline.prometheusQuery".into(), q, &mut errors);
        }
        if let Some(h) = &self.api_key_header {
            check_header("spec.apiKeyHeader".into(), h, &mut errors);
        }
        if let Some(h) = self.shedding.as_ref().and_then(|s| s.class_header.as_ref()) {
            check_header("spec.shedding.classHeader".into(), h, &mut errors);
        }
        let ttls: Vec<_> = std::iter::once(&self.mitigation.ttl).chain(&self.mitigation.escalation).collect();
        if ttls.windows(2).any(|w| w[1] < w[0]) {
            errors.push(FieldError::new(
                "spec.mitigation.escalation",
                "TTLs must not decrease: ttl, then each escalation step, each at least the one before",
            ));
        }
        let mut upstreams = HashMap::new();
        for (i, cb) in self.circuit_breakers.iter().enumerate() {
            if let Some(j) = upstreams.insert(cb.upstream.as_str(), i) {
                errors.push(FieldError::new(
                    format!("spec.circuitBreakers[{i}].upstream"),
                    format!("{:?} already has a breaker at circuitBreakers[{j}]", cb.upstream),
                ));
            }
        }
        errors
    }

    fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)> {
        self.page.iter().map(|p| ("spec.page.routeSecretRef".to_owned(), &p.route_secret_ref)).collect()
    }
}

impl Validate for MitigationSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(ip) = &self.match_.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            errors.push(FieldError::new("spec.match.ip", format!("{ip:?} is not an IP address")));
        }
        if let Some(p) = &self.match_.prefix
            && p.parse::<ipnet::IpNet>().is_err()
        {
            errors.push(FieldError::new("spec.match.prefix", format!("{p:?} is not a CIDR")));
        }
        for (i, p) in self.match_.except_prefixes.iter().enumerate() {
            if p.parse::<ipnet::IpNet>().is_err() {
                errors.push(FieldError::new(format!("spec.match.exceptPrefixes[{i}]"), format!("{p:?} is not a CIDR")));
            }
        }
        errors
    }
}

impl Validate for BootstrapPolicySpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let index: HashMap<&str, usize> = self.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        for (i, s) in self.stages.iter().enumerate() {
            for (j, d) in s.depends_on.iter().enumerate() {
                if !index.contains_key(d.as_str()) {
                    errors.push(FieldError::new(
                        format!("spec.stages[{i}].dependsOn[{j}]"),
                        format!("no stage named {d:?}"),
                    ));
                }
            }
        }
        for (j, n) in self.admission_gate.opens_after.iter().enumerate() {
            if !index.contains_key(n.as_str()) {
                errors.push(FieldError::new(
                    format!("spec.admissionGate.opensAfter[{j}]"),
                    format!("no stage named {n:?}"),
                ));
            }
        }
        if let Some(cycle) =
            find_cycle(&self.stages.iter().map(|s| (s.name.as_str(), &s.depends_on)).collect::<Vec<_>>())
        {
            errors.push(FieldError::new("spec.stages", format!("dependency cycle: {}", cycle.join(" -> "))));
        }
        let mut seen: HashMap<(String, &str), &str> = HashMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            for (j, t) in s.targets.iter().enumerate() {
                if let Some(other) = seen.insert((format!("{:?}", t.kind), t.name.as_str()), s.name.as_str()) {
                    errors.push(FieldError::new(
                        format!("spec.stages[{i}].targets[{j}]"),
                        format!("{:?} {} is already started by stage {other:?}", t.kind, t.name),
                    ));
                }
            }
        }
        errors
    }

    fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)> {
        self.page.iter().map(|p| ("spec.page.routeSecretRef".to_owned(), &p.route_secret_ref)).collect()
    }
}

/// A dependency cycle among named nodes, as the path that closes it, if there is one.
fn find_cycle(nodes: &[(&str, &Vec<String>)]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, (n, _))| (*n, i)).collect();
    let mut marks = vec![Mark::New; nodes.len()];
    fn visit(
        i: usize,
        nodes: &[(&str, &Vec<String>)],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[i] = Mark::Open;
        path.push(i);
        for d in nodes[i].1 {
            let Some(&j) = index.get(d.as_str()) else { continue };
            match marks[j] {
                Mark::Open => {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..].iter().map(|&p| nodes[p].0.to_owned()).collect();
                    cycle.push(nodes[j].0.to_owned());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(j, nodes, index, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    (0..nodes.len())
        .find_map(|i| if marks[i] == Mark::New { visit(i, nodes, &index, &mut marks, &mut Vec::new()) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(yaml: &str) -> ScalingPolicySpec {
        serde_saphyr::from_str(yaml).expect("test spec parses")
    }

    const BASE: &str = r#"
target: { deployment: { name: api } }
signals:
  - name: rps
    role: ArrivalRate
    prometheus: { query: 'sum(rate(http_requests_total{job="api"}[1m]))' }
capacity: { unitsPerReplica: 50 }
bounds: { minReplicas: 2, maxReplicas: 20 }
"#;

    #[test]
    fn valid_scaling_policy_has_no_errors() {
        let spec = scaling(BASE);
        assert_eq!(spec.validate(), vec![]);
        assert_eq!(spec.capacity.target_utilization, 0.7, "defaults apply");
    }

    #[test]
    fn bad_promql_names_the_query_field() {
        let spec = scaling(&BASE.replace("sum(rate(http_requests_total{job=\"api\"}[1m]))", "sum(rate(x[1m]"));
        let errors = spec.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.signals[0].prometheus.query");
        assert!(errors[0].message.contains("PromQL"), "{}", errors[0]);
    }

    #[test]
    fn replica_lag_needs_a_max_lag() {
        let spec = scaling(&BASE.replace("role: ArrivalRate", "role: ReplicaLag"));
        assert!(spec.validate().iter().any(|e| e.field == "spec.capacity.maxReplicaLag"));
    }

    #[test]
    fn fallback_outside_bounds_is_refused() {
        let spec = scaling(&format!("{BASE}onSignalLoss: {{ action: Fallback, fallbackReplicas: 50 }}\n"));
        let errors = spec.validate();
        assert_eq!(errors[0].field, "spec.onSignalLoss.fallbackReplicas", "{errors:?}");
    }

    #[test]
    fn bad_management_url_is_refused() {
        let spec = scaling(
            r#"
target: { deployment: { name: worker } }
signals:
  - { name: q, role: Backlog, rabbitmq: { managementUrl: "ftp://x", queue: celery, credentialsSecretRef: { name: rmq, key: auth } } }
capacity: { unitsPerReplica: 5 }
bounds: { minReplicas: 1, maxReplicas: 5 }
"#,
        );
        let errors = spec.validate();
        assert_eq!(errors[0].field, "spec.signals[0].rabbitmq.managementUrl", "{errors:?}");
        let refs = spec.secret_refs();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].0, "spec.signals[0].rabbitmq.credentialsSecretRef");
    }

    fn guard(extra: &str) -> TrafficGuardSpec {
        serde_saphyr::from_str(&format!("edgePool: public\naggregationKeys: [Ip, Prefix]\n{extra}")).unwrap()
    }

    #[test]
    fn guard_checks_cidrs_headers_and_ttl_order() {
        assert_eq!(guard("allowlist: ['10.0.0.0/8', '192.0.2.1', '2001:db8::/32']").validate(), vec![]);
        let e = guard("allowlist: ['10.0.0.0/33']").validate();
        assert_eq!(e[0].field, "spec.allowlist[0]");
        let e = guard("apiKeyHeader: 'bad header'").validate();
        assert_eq!(e[0].field, "spec.apiKeyHeader");
        let e = guard("mitigation: { ttl: 1h, escalation: [5m] }").validate();
        assert_eq!(e[0].field, "spec.mitigation.escalation");
        let e = guard("circuitBreakers: [{ upstream: db }, { upstream: db }]").validate();
        assert_eq!(e[0].field, "spec.circuitBreakers[1].upstream");
    }

    #[test]
    fn bootstrap_cycles_and_unknown_stages_are_named() {
        let spec: BootstrapPolicySpec = serde_saphyr::from_str(
            r#"
stages:
  - { name: db, targets: [{ kind: StatefulSet, name: pg, replicas: 1 }], dependsOn: [workers] }
  - { name: api, targets: [{ kind: Deployment, name: api, replicas: 3 }], dependsOn: [db, cache] }
  - { name: workers, targets: [{ kind: Deployment, name: worker, replicas: 2 }], dependsOn: [api] }
admissionGate: { opensAfter: [api, frontend] }
"#,
        )
        .unwrap();
        let errors = spec.validate();
        assert!(errors.iter().any(|e| e.field == "spec.stages[1].dependsOn[1]"), "{errors:?}");
        let gate = errors.iter().filter(|e| e.field.starts_with("spec.admissionGate")).collect::<Vec<_>>();
        assert_eq!(gate.len(), 1, "{errors:?}");
        assert_eq!(
            (gate[0].field.as_str(), gate[0].message.as_str()),
            ("spec.admissionGate.opensAfter[1]", "no stage named \"frontend\"")
        );
        let cycle = errors.iter().find(|e| e.field == "spec.stages").expect("cycle reported");
        assert!(cycle.message.contains("db -> workers -> api -> db"), "{cycle}");
    }

    #[test]
    fn mitigation_match_is_checked() {
        let spec: MitigationSpec = serde_saphyr::from_str(
            "edgePool: public\nmatch: { prefix: '203.0.113.0/24' }\naction: Block\nexpiresAt: '2030-01-01T00:00:00Z'\nreason: test\n",
        )
        .unwrap();
        assert_eq!(spec.validate(), vec![]);
        let mut bad = spec.clone();
        bad.match_.prefix = Some("203.0.113.0/40".into());
        assert_eq!(bad.validate()[0].field, "spec.match.prefix");
    }

    #[test]
    fn summary_joins_every_error() {
        let s = summarize(&[FieldError::new("a", "x"), FieldError::new("b", "y")]);
        assert_eq!(s, "a: x; b: y");
    }
}
