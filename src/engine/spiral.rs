//! Telling a health-check death spiral from a fleet that is merely scaling: instances that
//! were ready failing their checks together, within a minute, point to a shared cause (a slow
//! database, a saturated pool) that recycling or shunning them cannot fix. Routing all traffic
//! to the few still passing only makes them fail next.
//!
//! Judged on ready replicas against those ready shortly before, never against replicas asked
//! for: a scale-up's new instances are not ready yet either, and that is no spiral. Where the
//! pods can be seen, only pods that turned not ready while they kept running count as lost
//! ([`failing`]): a drained node's pods are gone and their replacements are starting, which
//! no shared dependency explains and routing to every instance would not help.

use std::collections::VecDeque;

/// How far back "ready shortly before" looks.
pub const WINDOW_SECS: f64 = 60.0;

/// A pod turning not ready this long after it started had passed its checks before: a pod
/// that has not passed them since it started is starting, not failing. (The kubelet writes
/// its first not-ready condition within a second or two of the start.)
pub const STARTING_GRACE_SECS: f64 = 10.0;

/// What the watch needs of a pod (times in unix seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodView {
    /// Being deleted: it is leaving, whatever its checks say.
    pub deleting: bool,
    /// Its `Ready` condition, and when that last changed.
    pub ready: Option<(bool, f64)>,
    /// When the pod started (`status.startTime`; not the container's, which a restart resets).
    pub started_at: Option<f64>,
}

/// The pods failing their readiness checks after having passed them: not being deleted, not
/// ready, and not ready since well after they started.
pub fn failing(pods: &[PodView]) -> i64 {
    let lost = |p: &&PodView| match (p.deleting, p.ready, p.started_at) {
        (false, Some((false, since)), Some(start)) => since - start > STARTING_GRACE_SECS,
        _ => false,
    };
    pods.iter().filter(lost).count() as i64
}

/// The ready replicas a workload is judged on: `ready` as its status says, or, when its pods
/// can be seen, all it asks for (`desired`) but those [`failing`]. A pod gone or starting
/// is then no loss, and a count never goes below what status says is ready.
pub fn judged_ready(desired: i64, ready: i64, pods: Option<&[PodView]>) -> i64 {
    match pods {
        Some(pods) if !pods.is_empty() => (desired - failing(pods)).max(ready),
        _ => ready,
    }
}

/// What one look at a workload concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing unusual, or a suspected spiral goes on.
    Steady,
    /// More than the allowed fraction of the instances ready within the window failed.
    Suspected { before: i64, ready: i64 },
    /// A suspected spiral is over: enough instances are ready again.
    Cleared { before: i64, ready: i64 },
}

/// The watch on one workload's ready replicas.
#[derive(Clone, Debug, Default)]
pub struct SpiralWatch {
    /// (unix seconds, ready replicas) of the looks within the window.
    seen: VecDeque<(f64, i64)>,
    /// While a spiral is suspected: the ready replicas before it, which recovery is judged
    /// against (the window's own maximum falls as the spiral goes on).
    before: Option<i64>,
}

impl SpiralWatch {
    /// A watch that takes a spiral as already suspected (found in force after a restart),
    /// with `before` ready replicas to recover to.
    pub fn suspected(before: i64) -> Self {
        Self { seen: VecDeque::new(), before: Some(before) }
    }

    pub fn is_suspected(&self) -> bool {
        self.before.is_some()
    }

    /// One look at the workload at `now`: `desired` replicas asked for, `ready` of them ready.
    /// A spiral is suspected when more than `max_unhealthy` (a fraction) of the instances
    /// ready within the window (at most `desired` of them: a scale-down is no failure) have
    /// failed, and at least two were ready; it is over when the ready replicas are back to
    /// all but half that fraction, so that one instance flapping at the line does not turn
    /// it on and off.
    pub fn observe(&mut self, now: f64, desired: i64, ready: i64, max_unhealthy: f64) -> Judgement {
        while self.seen.front().is_some_and(|(t, _)| now - t > WINDOW_SECS) {
            self.seen.pop_front();
        }
        self.seen.push_back((now, ready));
        if let Some(before) = self.before {
            let before = before.min(desired.max(1));
            if ready as f64 >= before as f64 * (1.0 - max_unhealthy / 2.0) {
                self.before = None;
                // What came before the spiral is not "shortly before" what follows it.
                self.seen.clear();
                self.seen.push_back((now, ready));
                return Judgement::Cleared { before, ready };
            }
            return Judgement::Steady;
        }
        let before = self.seen.iter().map(|&(_, r)| r).max().unwrap_or(0).min(desired);
        if before >= 2 && (before - ready) as f64 > max_unhealthy * before as f64 {
            self.before = Some(before);
            return Judgement::Suspected { before, ready };
        }
        Judgement::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_instances_failing_together_are_a_spiral_and_its_end_is_seen() {
        let mut w = SpiralWatch::default();
        assert_eq!(w.observe(0.0, 8, 8, 0.5), Judgement::Steady);
        assert_eq!(w.observe(5.0, 8, 5, 0.5), Judgement::Steady, "three of eight is not more than half");
        assert_eq!(w.observe(10.0, 8, 3, 0.5), Judgement::Suspected { before: 8, ready: 3 });
        assert!(w.is_suspected());
        // Long after the window, still judged against the eight that were ready.
        assert_eq!(w.observe(200.0, 8, 5, 0.5), Judgement::Steady);
        assert_eq!(w.observe(205.0, 8, 6, 0.5), Judgement::Cleared { before: 8, ready: 6 });
        assert!(!w.is_suspected());
        assert_eq!(w.observe(210.0, 8, 8, 0.5), Judgement::Steady);
    }

    #[test]
    fn only_pods_that_fail_after_passing_count_as_lost() {
        let pod = |deleting, ready: Option<(bool, f64)>| PodView { deleting, ready, started_at: Some(1000.0) };
        let serving = pod(false, Some((true, 1020.0)));
        let failed = pod(false, Some((false, 1500.0)));
        // Not ready since its start: still starting (its readiness probe may wait a while).
        let starting = pod(false, Some((false, 1001.0)));
        let leaving = pod(true, Some((false, 1500.0)));
        let unknown = PodView { deleting: false, ready: Some((false, 1500.0)), started_at: None };
        assert_eq!(failing(&[serving, failed, starting, leaving, unknown, failed]), 2);
        // Four asked for, status says one ready. Three failing: judged one, a spiral's shape.
        assert_eq!(judged_ready(4, 1, Some(&[serving, failed, failed, failed])), 1);
        // Three pods drained away and their replacements starting: judged four, no loss.
        assert_eq!(judged_ready(4, 1, Some(&[serving, starting, starting, starting])), 4);
        assert_eq!(judged_ready(4, 1, Some(&[serving])), 4);
        // No pods seen (none listed, or they cannot be): status alone.
        assert_eq!(judged_ready(4, 1, Some(&[])), 1);
        assert_eq!(judged_ready(4, 1, None), 1);
        // Never below what status says.
        assert_eq!(judged_ready(4, 3, Some(&[failed, failed, failed, serving])), 3);
    }

    #[test]
    fn scaling_is_no_spiral() {
        let mut w = SpiralWatch::default();
        // A scale-up: new instances are not ready yet.
        assert_eq!(w.observe(0.0, 10, 2, 0.5), Judgement::Steady);
        assert_eq!(w.observe(5.0, 10, 4, 0.5), Judgement::Steady);
        // A scale-down from 10 to 2.
        assert_eq!(w.observe(10.0, 10, 10, 0.5), Judgement::Steady);
        assert_eq!(w.observe(15.0, 2, 2, 0.5), Judgement::Steady);
        // One instance of one failing is not a shared cause.
        let mut one = SpiralWatch::default();
        one.observe(0.0, 1, 1, 0.5);
        assert_eq!(one.observe(5.0, 1, 0, 0.5), Judgement::Steady);
    }

    #[test]
    fn a_slow_decline_outside_the_window_is_not_a_spiral() {
        let mut w = SpiralWatch::default();
        // One instance lost every 50 s: never more than half within a minute.
        for (i, ready) in (2..=8).rev().enumerate() {
            assert_eq!(w.observe(i as f64 * 50.0, 8, ready, 0.5), Judgement::Steady, "at {ready}");
        }
    }

    #[test]
    fn a_spiral_found_in_force_ends_when_its_instances_are_back() {
        let mut w = SpiralWatch::suspected(8);
        assert_eq!(w.observe(0.0, 8, 2, 0.5), Judgement::Steady);
        assert_eq!(w.observe(5.0, 8, 7, 0.5), Judgement::Cleared { before: 8, ready: 7 });
    }
}
