use proptest::prelude::*;

use super::*;

const BASE: &str = r#"
target: { deployment: { name: api } }
signals:
  - { name: rps, role: ArrivalRate, prometheus: { query: "x" } }
capacity: { unitsPerReplica: 10, targetUtilization: 1.0 }
bounds: { minReplicas: 1, maxReplicas: 50, scaleDownStabilization: 60s }
forecast: { leadTime: 120s, seasonality: None }
"#;

/// The base spec with the top-level keys of `overrides` (YAML) replaced.
fn spec(overrides: &str) -> ScalingPolicySpec {
    let mut base: serde_json::Value = serde_saphyr::from_str(BASE).unwrap();
    if !overrides.is_empty() {
        let over: serde_json::Map<String, serde_json::Value> = serde_saphyr::from_str(overrides).unwrap();
        base.as_object_mut().unwrap().extend(over);
    }
    serde_json::from_value(base).unwrap()
}

fn tick(now: f64, current: i64, rps: Option<f64>) -> Tick {
    Tick {
        now,
        current,
        ready: current,
        signals: vec![SignalReading { name: "rps".into(), role: SignalRole::ArrivalRate, value: rps, age_secs: 0.0 }],
    }
}

#[test]
fn scales_to_what_load_needs() {
    let mut p = Planner::new(&spec(""));
    let d = p.plan(&tick(0.0, 2, Some(95.0)));
    assert_eq!((d.to, d.reason), (10, Reason::ScaleUp));
    assert!(d.message.starts_with("scale 2 → 10: now 95.0/s needs 10"), "{}", d.message);
}

#[test]
fn exact_target_is_reachable() {
    // No dead band: 100/s at 10/replica is exactly 10, and 10 → 11/s needs... 11.
    let mut p = Planner::new(&spec(""));
    assert_eq!(p.plan(&tick(0.0, 9, Some(100.0))).to, 10);
    assert_eq!(p.plan(&tick(1.0, 10, Some(101.0))).to, 11);
}

#[test]
fn demand_above_the_upper_bound_is_capped_and_said() {
    let mut p = Planner::new(&spec(""));
    // 800/s at 10 per replica is 80; the bound is 50.
    let d = p.plan(&tick(0.0, 10, Some(800.0)));
    assert_eq!((d.to, d.needed, d.needed_above(50)), (50, Some(80), Some(80)));
    assert!(d.message.contains("needs 80, above maxReplicas 50"), "{}", d.message);
    let d = p.plan(&tick(1.0, 50, Some(500.0)));
    assert_eq!((d.to, d.needed_above(50)), (50, None), "exactly at the bound is keeping up");
    assert!(!d.message.contains("above maxReplicas"), "{}", d.message);
    // Lost signals say nothing of demand.
    assert_eq!(p.plan(&tick(2.0, 50, None)).needed, None);
}

#[test]
fn lost_signal_holds_and_says_so() {
    let mut p = Planner::new(&spec(""));
    let d = p.plan(&tick(0.0, 7, None));
    assert_eq!((d.to, d.reason), (7, Reason::SignalLossHold));
    assert!(d.message.contains("lost rps"), "{}", d.message);
    let mut stale = tick(1.0, 7, Some(0.0));
    stale.signals[0].age_secs = 3600.0;
    assert_eq!(p.plan(&stale).reason, Reason::SignalLossHold);
    let nan = tick(2.0, 7, Some(f64::NAN));
    assert_eq!(p.plan(&nan).to, 7);
}

#[test]
fn fallback_only_ever_adds() {
    let mut p = Planner::new(&spec("onSignalLoss: { action: Fallback, fallbackReplicas: 12 }"));
    assert_eq!(p.plan(&tick(0.0, 5, None)).to, 12);
    assert_eq!(p.plan(&tick(1.0, 20, None)).to, 20);
}

#[test]
fn scale_down_waits_out_the_stabilization_window() {
    let mut p = Planner::new(&spec(""));
    assert_eq!(p.plan(&tick(0.0, 1, Some(200.0))).to, 20);
    let d = p.plan(&tick(10.0, 20, Some(50.0)));
    assert_eq!((d.to, d.reason), (20, Reason::StabilizationHold));
    let d = p.plan(&tick(61.0, 20, Some(50.0)));
    assert_eq!((d.to, d.reason), (5, Reason::ScaleDown));
}

#[test]
fn a_planner_warmed_with_history_scales_for_the_daily_peak_from_its_first_tick() {
    // Eight days of a daily cycle, 100/s at night and 500/s at the afternoon peak, at the
    // forecaster's minute; then the first tick, an hour before the peak, at 300/s and rising.
    let day = 86_400.0;
    let rate = |t: f64| 300.0 - 200.0 * (t * std::f64::consts::TAU / day).cos();
    let now = 1_700_000_000.0 - (1_700_000_000.0 % day) + day / 4.0;
    let start = now - 8.0 * day;
    let history: Vec<(f64, f64)> = (0..8 * 1440).map(|i| start + 60.0 * f64::from(i)).map(|t| (t, rate(t))).collect();
    let daily = spec("forecast: { leadTime: 1800s, seasonality: Daily }");
    let mut warm = Planner::new(&daily);
    assert_eq!(warm.warm(&history), 8.0 * day - 60.0);
    let d = warm.plan(&tick(now, 30, Some(rate(now))));
    let f = d.forecast.clone().expect("a forecast at the first tick");
    assert!(f.model != "trend", "a seasonal model serves: {f:?}");
    let due = rate(now + 1800.0);
    assert!((f.value - due).abs() / due < 0.05, "{f:?} vs {due}");
    assert!(d.to > d.reactive.unwrap(), "capacity for the rise ahead, not for now: {d:?}");

    let mut cold = Planner::new(&daily);
    let d = cold.plan(&tick(now, 30, Some(rate(now))));
    assert!(d.forecast.is_none(), "a cold planner has nothing to forecast from: {d:?}");
}

#[test]
fn a_planner_deciding_while_its_history_was_read_takes_the_warmed_forecast_and_keeps_the_rest() {
    // Minutes of live ticks while a slow Prometheus is read: the planner scaled up to 20 for
    // 200/s, then load fell to 50/s, and the scale-down waits out its stabilisation window.
    let day = 86_400.0;
    let now = 1_700_000_000.0 - (1_700_000_000.0 % day) + day / 4.0;
    let daily = spec("forecast: { leadTime: 1800s, seasonality: Daily }");
    let mut live = Planner::new(&daily);
    assert_eq!(live.plan(&tick(now, 1, Some(200.0))).to, 20);
    assert_eq!(live.plan(&tick(now + 10.0, 20, Some(50.0))).reason, Reason::StabilizationHold);
    // Its history arrives: a flat 30/s for eight days.
    let mut warmed = Planner::new(&daily);
    let start = now - 8.0 * day;
    warmed.warm(&(0..8 * 1440).map(|i| (start + 60.0 * f64::from(i), 30.0)).collect::<Vec<_>>());
    assert!(live.adopt_forecaster(&mut warmed));
    let d = live.plan(&tick(now + 20.0, 20, Some(50.0)));
    let f = d.forecast.as_ref().expect("the history's forecast: a cold planner has none for minutes");
    assert!((f.value - 30.0).abs() < 1.0, "{d:?}");
    // The scale-down it was holding off still waits out the window the live planner began:
    // taking the forecaster did not reset what the planner remembered of its own decisions.
    assert_eq!((d.to, d.reason), (20, Reason::StabilizationHold), "{d:?}");
    assert_eq!(live.plan(&tick(now + 61.0, 20, Some(50.0))).to, 5);
    // A forecast warmed for other inputs is not taken.
    let mut other = Planner::new(&spec("forecast: { leadTime: 600s, seasonality: Daily }"));
    assert!(!live.adopt_forecaster(&mut other));
}

#[test]
fn a_spec_change_keeps_what_the_planner_learned_that_still_holds() {
    let fed = || {
        let mut p = Planner::new(&spec(""));
        p.resume_lead_time(45.0);
        for i in 0..60 {
            p.plan(&tick(f64::from(i) * 60.0, 10, Some(100.0)));
        }
        p
    };
    let now = 3600.0;
    // A bounds edit: lead time and forecaster both carry over, so the first tick forecasts.
    let mut edited = Planner::new(&spec("bounds: { minReplicas: 2, maxReplicas: 80 }"));
    assert!(edited.carry_over(&mut fed()));
    assert_eq!(edited.learned_lead_time(), Some(45.0));
    assert!(edited.plan(&tick(now, 10, Some(100.0))).forecast.is_some());
    // Another target: its start-up time is not known; the forecast's inputs are the same.
    let mut retargeted = Planner::new(&spec("target: { deployment: { name: other } }"));
    assert!(retargeted.carry_over(&mut fed()));
    assert_eq!(retargeted.learned_lead_time(), None, "another target starts from the policy's value");
    // A new lead time, or another query: the forecaster starts again (from history, in the
    // operator).
    for changed in [
        "forecast: { leadTime: 300s, seasonality: None }",
        "signals: [{ name: rps, role: ArrivalRate, prometheus: { query: other_rate } }]",
    ] {
        let mut p = Planner::new(&spec(changed));
        assert!(!p.carry_over(&mut fed()), "{changed}");
        assert!(p.plan(&tick(now, 10, Some(100.0))).forecast.is_none(), "{changed}");
    }
}

#[test]
fn forecast_scales_ahead_of_a_ramp() {
    let mut p = Planner::with_step(&spec(""), 10.0);
    let mut current = 1;
    let mut forecast_ups = 0;
    for i in 0..120 {
        let now = i as f64 * 5.0;
        let rps = 20.0 + now * 0.5;
        let d = p.plan(&tick(now, current, Some(rps)));
        if d.reason == Reason::ForecastScaleUp {
            forecast_ups += 1;
            assert!(d.to > d.reactive.unwrap(), "{d:?}");
        }
        current = d.to;
    }
    assert!(forecast_ups > 0, "a steady ramp should be anticipated");
    // Ahead of demand: at the end, capacity covers load two minutes later.
    let later = 20.0 + (119.0 * 5.0 + 120.0) * 0.5;
    assert!(current as f64 * 10.0 >= later * 0.9, "{current} replicas for {later}/s");
}

#[test]
fn reversal_budget_holds_scale_downs_not_scale_ups() {
    let mut p = Planner::new(&spec(
        "bounds: { minReplicas: 1, maxReplicas: 50, scaleDownStabilization: 0s, maxReversals: 1, reversalWindow: 1h }",
    ));
    let mut current = 1;
    let mut reasons = Vec::new();
    for (i, rps) in [100.0, 10.0, 100.0, 10.0, 100.0].into_iter().enumerate() {
        let d = p.plan(&tick(i as f64, current, Some(rps)));
        reasons.push(d.reason);
        current = d.to;
    }
    assert_eq!(
        reasons,
        vec![Reason::ScaleUp, Reason::ScaleDown, Reason::ScaleUp, Reason::ReversalBudgetHold, Reason::Steady]
    );
}

#[test]
fn lag_adds_one_replica_at_a_time() {
    let mut s = spec("");
    s.signals[0].role = SignalRole::ReplicaLag;
    s.capacity.max_replica_lag = Some("30s".parse().unwrap());
    let mut p = Planner::new(&s);
    let lag = |now, current, ready, v| Tick {
        now,
        current,
        ready,
        signals: vec![SignalReading {
            name: "lag".into(),
            role: SignalRole::ReplicaLag,
            value: Some(v),
            age_secs: 0.0,
        }],
    };
    let d = p.plan(&lag(0.0, 2, 2, 45.0));
    assert_eq!((d.to, d.reason), (3, Reason::LagScaleUp));
    // The new replica is not ready yet: do not pile on.
    assert_eq!(p.plan(&lag(5.0, 3, 2, 50.0)).to, 3);
    assert_eq!(p.plan(&lag(10.0, 3, 3, 50.0)).to, 4);
}

fn arb_reading() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![8 => (0.0..2000.0f64).prop_map(Some), 1 => Just(None), 1 => Just(Some(f64::NAN))]
}

proptest! {
    #[test]
    fn never_scales_down_on_missing_data(readings in prop::collection::vec(arb_reading(), 1..60)) {
        let mut p = Planner::new(&spec(""));
        let mut current = 3;
        for (i, r) in readings.into_iter().enumerate() {
            let lost = !r.is_some_and(f64::is_finite);
            let d = p.plan(&tick(i as f64 * 5.0, current, r));
            if lost {
                prop_assert!(d.to >= current, "{d:?}");
            }
            current = d.to;
        }
    }

    #[test]
    fn respects_bounds_and_step_limits(
        readings in prop::collection::vec(0.0..5000.0f64, 1..60),
        min in 0..10i32, span in 0..30i32, up in 1..5i32, down in 1..5i32,
    ) {
        let max = min + span.max(1);
        let s = spec(&format!(
            "bounds: {{ minReplicas: {min}, maxReplicas: {max}, maxStepUp: {up}, maxStepDown: {down}, scaleDownStabilization: 0s }}"
        ));
        let mut p = Planner::new(&s);
        let mut current = i64::from(min);
        for (i, r) in readings.into_iter().enumerate() {
            let d = p.plan(&tick(i as f64 * 5.0, current, Some(r)));
            prop_assert!(d.to >= i64::from(min) && d.to <= i64::from(max), "{d:?}");
            prop_assert!(d.to - current <= i64::from(up) && current - d.to <= i64::from(down), "{d:?}");
            current = d.to;
        }
    }

    #[test]
    fn monotone_in_load(a in 0.0..5000.0f64, b in 0.0..5000.0f64, current in 1..50i64) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let d_lo = Planner::new(&spec("")).plan(&tick(0.0, current, Some(lo)));
        let d_hi = Planner::new(&spec("")).plan(&tick(0.0, current, Some(hi)));
        prop_assert!(d_hi.to >= d_lo.to);
    }
}
