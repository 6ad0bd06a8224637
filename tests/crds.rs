//! The CRDs against a real kube-apiserver: they install, the example policies are accepted,
//! and malformed policies are refused with a message naming the field.

mod common;

use std::path::Path;

use common::TestNs;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = common::client().await;
    common::install_crds(&client).await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in levee::api::crds() {
        let live = api.get(crd.metadata.name.as_deref().unwrap()).await.unwrap();
        let conds = live.status.unwrap().conditions.unwrap();
        assert!(conds.iter().any(|c| c.type_ == "Established" && c.status == "True"), "{conds:?}");
        assert!(conds.iter().any(|c| c.type_ == "NamesAccepted" && c.status == "True"), "{conds:?}");
    }
}

#[tokio::test]
async fn every_example_policy_passes_server_side_dry_run() {
    let ns = TestNs::new("examples").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut applied = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---\n") {
            ns.apply_yaml(doc, true).await.unwrap_or_else(|e| panic!("{} refused: {e}", path.display()));
            applied += 1;
        }
    }
    // Five policies and their Secrets.
    assert!(applied >= 5, "only {applied} documents found in policies/");
}

const SCALING: &str = r#"
apiVersion: levee.dev/v1alpha1
kind: ScalingPolicy
metadata: { name: bad }
spec:
  target: { deployment: { name: api } }
  signals:
    - { name: rps, role: ArrivalRate, prometheus: { query: "sum(rate(http_requests_total[1m]))" } }
  capacity: { unitsPerReplica: 50 }
  bounds: { minReplicas: 2, maxReplicas: 20 }
"#;

const GUARD: &str = r#"
apiVersion: levee.dev/v1alpha1
kind: TrafficGuard
metadata: { name: bad }
spec:
  edgePool: public
  aggregationKeys: [Ip]
"#;

const MITIGATION: &str = r#"
apiVersion: levee.dev/v1alpha1
kind: Mitigation
metadata: { name: bad }
spec:
  edgePool: public
  match: { ip: 192.0.2.1 }
  action: Block
  expiresAt: "2030-01-01T00:00:00Z"
  reason: test
"#;

const BOOTSTRAP: &str = r#"
apiVersion: levee.dev/v1alpha1
kind: BootstrapPolicy
metadata: { name: bad }
spec:
  stages:
    - { name: db, targets: [{ kind: StatefulSet, name: pg, replicas: 1 }] }
    - { name: api, dependsOn: [db], targets: [{ kind: Deployment, name: api, replicas: 2 }] }
"#;

/// (what, base, text to replace, replacement, text the apiserver's message must contain)
const MALFORMED: &[(&str, &str, &str, &str, &str)] = &[
    (
        "min above max",
        SCALING,
        "minReplicas: 2",
        "minReplicas: 30",
        "minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "two targets",
        SCALING,
        "{ deployment: { name: api } }",
        "{ deployment: { name: api }, statefulSet: { name: db } }",
        "spec.target: exactly one of",
    ),
    ("no target", SCALING, "{ deployment: { name: api } }", "{}", "spec.target: exactly one of"),
    (
        "page after 0s",
        SCALING,
        "capacity:",
        "page: { after: 0s, routeSecretRef: { name: pager, key: route } }\n  capacity:",
        "spec.page.after must be between 1s and 24h",
    ),
    (
        "quantile out of range",
        SCALING,
        "capacity:",
        "forecast: { quantile: 1.5 }\n  capacity:",
        "spec.forecast.quantile must be in (0, 1)",
    ),
    (
        "duration that does not parse",
        SCALING,
        "unitsPerReplica: 50",
        "unitsPerReplica: 50, drainWithin: 5 minutes",
        "spec.capacity.drainWithin",
    ),
    (
        "zero utilisation",
        SCALING,
        "unitsPerReplica: 50",
        "unitsPerReplica: 50, targetUtilization: 0",
        "spec.capacity.targetUtilization must be in (0, 1]",
    ),
    (
        "no signals",
        SCALING,
        "    - { name: rps, role: ArrivalRate, prometheus: { query: \"sum(rate(http_requests_total[1m]))\" } }",
        "    []",
        "spec.signals",
    ),
    (
        "two sources in one signal",
        SCALING,
        "prometheus: { query",
        "rabbitmq: { managementUrl: 'http://r', queue: q }, prometheus: { query",
        "exactly one of prometheus, rabbitmq, sqs, postgres",
    ),
    (
        "an sqs signal as an arrival rate",
        SCALING,
        "prometheus: { query: \"sum(rate(http_requests_total[1m]))\" }",
        "sqs: { queueUrl: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs' }",
        "an sqs signal measures a queue's depth and must have role Backlog",
    ),
    (
        "duplicate signal names",
        SCALING,
        "  capacity:",
        "    - { name: rps, role: Backlog, rabbitmq: { managementUrl: 'http://r', queue: q } }\n  capacity:",
        "signal names must be unique",
    ),
    ("negative min replicas", SCALING, "minReplicas: 2", "minReplicas: -1", "spec.bounds.minReplicas"),
    ("mode that does not exist", SCALING, "  bounds:", "  mode: Sometimes\n  bounds:", "spec.mode"),
    (
        "TTL above bound",
        GUARD,
        "[Ip]",
        "[Ip]\n  mitigation: { ttl: 48h }",
        "spec.mitigation.ttl must be between 10s and 24h",
    ),
    (
        "escalation TTL below bound",
        GUARD,
        "[Ip]",
        "[Ip]\n  mitigation: { escalation: [5s] }",
        "spec.mitigation.escalation",
    ),
    ("ApiKey without header", GUARD, "[Ip]", "[Ip, ApiKey]", "spec.apiKeyHeader is required"),
    (
        "error ratio above one",
        GUARD,
        "[Ip]",
        "[Ip]\n  circuitBreakers: [{ upstream: db, errorRatio: 2 }]",
        "errorRatio must be in (0, 1]",
    ),
    ("rate limit without limit", MITIGATION, "action: Block", "action: RateLimit", "spec.rateLimit is required"),
    (
        "prefix that is not a CIDR",
        MITIGATION,
        "{ ip: 192.0.2.1 }",
        "{ prefix: not-a-cidr }",
        "spec.match.prefix must be a CIDR",
    ),
    ("country that is not ISO", MITIGATION, "{ ip: 192.0.2.1 }", "{ country: usa }", "spec.match.country"),
    ("no expiry", MITIGATION, "  expiresAt: \"2030-01-01T00:00:00Z\"\n", "", "spec.expiresAt"),
    ("two matches", MITIGATION, "{ ip: 192.0.2.1 }", "{ ip: 192.0.2.1, asn: 64500 }", "spec.match: exactly one of"),
    (
        "unknown dependency",
        BOOTSTRAP,
        "dependsOn: [db]",
        "dependsOn: [cache]",
        "spec.stages[].dependsOn must name stages",
    ),
    (
        "wave of zero percent",
        BOOTSTRAP,
        "dependsOn: [db],",
        "dependsOn: [db], wavePercent: 0,",
        "wavePercent must be in 1..100",
    ),
    (
        "gate opening after no stage",
        BOOTSTRAP,
        "replicas: 2 }] }\n",
        "replicas: 2 }] }\n  admissionGate: { opensAfter: [api, frontend] }\n",
        "spec.admissionGate.opensAfter must name stages",
    ),
];

#[tokio::test]
async fn malformed_policies_are_refused_naming_the_field() {
    let ns = TestNs::new("malformed").await;
    let mut failures = Vec::new();
    for (what, base, from, to, expect) in MALFORMED {
        assert!(base.contains(from), "case {what:?}: base lacks {from:?}");
        let yaml = base.replacen(from, to, 1);
        match ns.create_yaml(&yaml).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(expect) => {}
            Err(e) => failures.push(format!("{what}: refused, but message lacks {expect:?}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), MALFORMED.len(), failures.join("\n"));
    // The unmodified bases are accepted, so each refusal is due to its one change.
    for base in [SCALING, GUARD, MITIGATION, BOOTSTRAP] {
        ns.create_yaml(base).await.expect("valid base accepted");
    }
}
