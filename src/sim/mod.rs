//! `levee simulate`: a simulated platform driven by the same engine as the operator, to compare
//! autoscalers on a scenario and to benchmark levee.

pub mod controllers;
pub mod guard;
pub mod metrics;
pub mod platform;
pub mod pool;
pub mod report;
pub mod scenario;

use controllers::{Controller, Kind, TimedDecision};
use metrics::{Recorder, Summary};
use platform::{Platform, Protections};
use scenario::Scenario;

use crate::{engine::forecast::Forecast, replay::trace::Trace};

/// One controller's run.
pub struct Run {
    pub summary: Summary,
    pub series: Vec<metrics::MinutePoint>,
    pub decisions: Vec<TimedDecision>,
    pub forecasts: Vec<(f64, Forecast)>,
    pub learned_lead_time: Option<f64>,
    /// The TrafficGuard's run, when the scenario puts one in front of levee's platform.
    pub guard: Option<guard::GuardSummary>,
}

/// Runs `scenario` once per controller. `progress` gets the fraction done.
pub fn run(scenario: &Scenario, trace: Option<&Trace>, kinds: &[Kind], mut progress: impl FnMut(f64)) -> Vec<Run> {
    let duration = scenario.duration.as_secs_f64();
    let dt = scenario.step.as_secs_f64();
    let steps = (duration / dt).ceil() as usize;
    let total = steps * kinds.len();
    let mut runs = Vec::new();
    for (k, &kind) in kinds.iter().enumerate() {
        let protections = if kind == Kind::Levee && scenario.bootstrap_policy {
            Protections { staged_cold_start: true, death_spiral_protection: true }
        } else {
            Protections::default()
        };
        let mut platform = Platform::new(scenario, trace.cloned(), protections);
        // levee's TrafficGuard, when the scenario has one and its own arrivals: simulated
        // client by client first, so the platform sees only what the edges let through.
        let guarded = (kind == Kind::Levee && trace.is_none())
            .then(|| scenario.guard_scenario())
            .flatten()
            .map(|(g, history)| (guard::run_guarded(&g, |_| {}), history));
        if let Some((g, history)) = &guarded {
            platform = platform.with_admission(g.admitted.iter().skip(*history).copied().collect());
        }
        let mut controller = Controller::new(kind, scenario);
        let mut recorder = Recorder::new(kind.name(), scenario.slo.clone(), scenario.api.initial_replicas);
        let mut last = None;
        for i in 0..steps {
            let t = i as f64 * dt;
            let step = platform.step(t);
            recorder.record(&step, scenario.workers.is_some());
            if let Some(want) = controller.observe(scenario, &step) {
                let now = t + dt;
                if let Some(n) = want.api {
                    platform.api.scale_to(n, now, scenario.api.startup.as_secs_f64());
                }
                if let (Some(n), Some(w), Some(ws)) = (want.workers, platform.workers.as_mut(), &scenario.workers) {
                    w.scale_to(n, now, ws.startup.as_secs_f64());
                }
                let provision = platform.replica_provision_secs();
                if let (Some(n), Some(r)) = (want.replicas, platform.replicas.as_mut()) {
                    r.scale_to(n, now, provision);
                }
            }
            if i % 4096 == 0 {
                progress((k * steps + i) as f64 / total as f64);
            }
            last = Some(step);
        }
        let (summary, series) = recorder.finish(&last.unwrap_or_default(), platform.spirals_prevented);
        let learned_lead_time = controller.learned_lead_time();
        runs.push(Run {
            summary,
            series,
            decisions: controller.decisions,
            forecasts: controller.forecasts,
            learned_lead_time,
            guard: guarded.map(|(g, _)| g.summary),
        });
    }
    progress(1.0);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_incident(kinds: &[Kind]) -> Vec<Run> {
        let mut sc = Scenario::load("incident").unwrap();
        // As `levee simulate` runs it by default: without the guard, which is tested below.
        sc.traffic_guard = None;
        run(&sc, None, kinds, |_| {})
    }

    #[test]
    fn incident_without_a_controller_reproduces_the_outage() {
        let s = &run_incident(&[Kind::None])[0].summary;
        assert!(s.zero_live_secs > 30.0 * 60.0, "a total outage of tens of minutes: {s:?}");
        assert!(s.success_rate < 0.9, "{s:?}");
        assert!(s.slo_violation_minutes > 60.0, "{s:?}");
        assert!(s.primary_over_capacity_secs > 0.0, "the primary saturates: {s:?}");
    }

    #[test]
    fn incident_with_levee_keeps_instances_live() {
        let s = &run_incident(&[Kind::Levee])[0].summary;
        assert_eq!(s.zero_live_secs, 0.0, "{s:?}");
        assert!(s.min_live_instances > 0);
        assert!(s.success_rate > 0.99, "{s:?}");
    }

    #[test]
    fn a_traffic_guard_in_front_meets_the_incidents_acceptance_bar() {
        // The incident as it is, with fewer clients and a shorter history to keep the test
        // quick: 5x at once, rising to 20x over 70 minutes, until blocked by hand.
        let mut sc = Scenario::load("incident").unwrap();
        let g = sc.traffic_guard.as_mut().unwrap();
        (g.legit.sources, g.surge.sources, g.history) = (400, 200, crate::api::Duration::from_secs(600));
        let guarded = &run(&sc, None, &[Kind::Levee], |_| {})[0];
        sc.traffic_guard = None;
        let bare = &run(&sc, None, &[Kind::Levee], |_| {})[0];

        let gs = guarded.guard.as_ref().expect("the guard ran");
        assert!(gs.attacks[0].detect_secs.is_some_and(|d| d <= 15.0), "detected within 15 s: {gs:?}");
        assert!(gs.attacks[0].enforce_secs.is_some_and(|d| d <= 30.0), "limited within 30 s: {gs:?}");
        assert!(gs.page_secs.is_some_and(|p| p <= 60.0), "paged within a minute: {gs:?}");
        assert!(gs.false_positive_ratio <= 0.001, "{gs:?}");
        assert!(bare.guard.is_none());
        let (g, b) = (&guarded.summary, &bare.summary);
        assert!(g.success_rate >= 0.99, "{g:?}");
        assert!(g.primary_over_capacity_longest_secs <= 60.0, "{g:?}");
        assert_eq!(g.zero_live_secs, 0.0, "{g:?}");
        // What the edges refused never loaded the primary, which the autoscaler alone cannot
        // keep from saturating: writes are the bottleneck.
        assert!(b.primary_over_capacity_secs > 600.0, "{b:?}");
        assert!(g.peak_backlog < b.peak_backlog, "{g:?}\n{b:?}");
    }

    #[test]
    fn runs_are_deterministic_for_a_seed() {
        let a = run_incident(&[Kind::Hpa, Kind::Levee]);
        let b = run_incident(&[Kind::Hpa, Kind::Levee]);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(format!("{:?}", x.summary), format!("{:?}", y.summary));
            assert_eq!(x.decisions.len(), y.decisions.len());
        }
        let mut sc = Scenario::load("incident").unwrap();
        sc.traffic_guard = None;
        sc.seed += 1;
        let c = run(&sc, None, &[Kind::Hpa], |_| {});
        assert_ne!(format!("{:?}", a[0].summary), format!("{:?}", c[0].summary), "the seed matters");
    }
}
