//! The Grafana dashboards: every query parses as PromQL and reads only metrics the operator
//! exports, so a renamed metric cannot leave a panel silently empty.

use std::collections::BTreeSet;

use levee::operator::metrics::{FailureLabels, ReconcileMetrics};
use prometheus_client::registry::Registry;

/// The metric families the operator registers, as `/metrics` names them.
fn exported() -> BTreeSet<String> {
    let mut registry = Registry::with_prefix("levee");
    let m = ReconcileMetrics::register(&mut registry);
    ReconcileMetrics::register_paused(&mut registry);
    // A family is written once it has a series.
    let kind = ReconcileMetrics::kind("ScalingPolicy");
    m.runs.get_or_create(&kind).inc();
    m.invalid.get_or_create(&kind).inc();
    m.duration.get_or_create(&kind).observe(0.01);
    let failure = FailureLabels { kind: "ScalingPolicy".into(), error: "kube".into() };
    m.failures.get_or_create(&failure).inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Every identifier in `expr` that names a levee metric.
fn levee_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("levee_")).collect()
}

#[test]
fn every_panel_queries_a_metric_the_operator_exports() {
    let exported = exported();
    assert!(exported.contains("levee_paused") && exported.contains("levee_reconcile_runs"), "{exported:?}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/levee-operator.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{}: {expr}: {e}", panel["title"]));
            for name in levee_names(expr) {
                // A counter's samples end in _total, a histogram's in _bucket, _sum or _count.
                let family =
                    ["_total", "_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(exported.contains(family), "{}: {name} is not exported ({exported:?})", panel["title"]);
            }
            queries += 1;
        }
    }
    assert_eq!(queries, panels.len(), "one query per panel");
}
