//! The engine's speed: one tick of 1,000 ScalingPolicies with a day of history each.
//!
//! Run with `cargo bench --bench engine`.

use criterion::{Criterion, criterion_group, criterion_main};
use levee::{
    api::{ScalingPolicySpec, scaling_policy::SignalRole},
    engine::scaling::{Planner, SignalReading, Tick},
};

const POLICY: &str = r#"
target: { deployment: { name: api } }
signals:
  - { name: rps, role: ArrivalRate, prometheus: { query: "x" } }
capacity: { unitsPerReplica: 50 }
bounds: { minReplicas: 2, maxReplicas: 200 }
forecast: { leadTime: 2m, seasonality: Auto }
"#;

fn tick(now: f64, current: i64, rps: f64) -> Tick {
    Tick {
        now,
        current,
        ready: current,
        signals: vec![SignalReading {
            name: "rps".into(),
            role: SignalRole::ArrivalRate,
            value: Some(rps),
            age_secs: 0.0,
        }],
    }
}

fn load(i: usize, t: f64) -> f64 {
    500.0 + 300.0 * (t * std::f64::consts::TAU / 86_400.0 + i as f64).sin()
}

fn plan_thousand_policies(c: &mut Criterion) {
    let spec: ScalingPolicySpec = serde_saphyr::from_str(POLICY).unwrap();
    // A day and a half of 5 s ticks each, so every forecasting model is warm.
    let warm = 1.5 * 86_400.0;
    let mut planners: Vec<(Planner, i64)> = (0..1000).map(|_| (Planner::new(&spec), 10)).collect();
    for (i, (p, current)) in planners.iter_mut().enumerate() {
        let mut t = 0.0;
        while t < warm {
            *current = p.plan(&tick(t, *current, load(i, t))).to;
            t += 60.0;
        }
    }
    let mut t = warm;
    c.bench_function("plan 1000 policies (one tick each)", |b| {
        b.iter(|| {
            t += 5.0;
            for (i, (p, current)) in planners.iter_mut().enumerate() {
                *current = p.plan(&tick(t, *current, load(i, t))).to;
            }
        })
    });
}

criterion_group!(benches, plan_thousand_policies);
criterion_main!(benches);
