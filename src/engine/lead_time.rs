//! Lead time learned from observed scale-request-to-ready times.

use std::collections::VecDeque;

/// Observations kept; old ones age out so the estimate follows a changing platform.
const KEEP: usize = 20;

/// Learns the p90 of scale-request-to-ready times, starting from the policy's value.
#[derive(Clone, Debug)]
pub struct LeadTime {
    initial: f64,
    learn: bool,
    observed: VecDeque<f64>,
    /// Scale-ups waiting to become ready: (requested at, replicas that must be ready).
    pending: VecDeque<(f64, i64)>,
}

impl LeadTime {
    pub fn new(initial_secs: f64, learn: bool) -> Self {
        Self { initial: initial_secs, learn, observed: VecDeque::new(), pending: VecDeque::new() }
    }

    /// The lead time to plan with, in seconds: p90 of observations once there are three,
    /// else the policy's value.
    pub fn secs(&self) -> f64 {
        if !self.learn || self.observed.len() < 3 {
            return self.initial;
        }
        let mut v: Vec<f64> = self.observed.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * 0.9).round() as usize]
    }

    /// Learned value, if any.
    pub fn learned(&self) -> Option<f64> {
        (self.learn && self.observed.len() >= 3).then(|| self.secs())
    }

    /// Takes over what `earlier` observed (a planner for the same target under an older spec):
    /// the platform's start-up time did not change with the policy.
    pub fn carry_over(&mut self, earlier: &LeadTime) {
        self.observed.clone_from(&earlier.observed);
    }

    /// Starts from a value learned before a restart (status keeps the p90, not the
    /// observations): it counts as three observations, enough to plan with, until new ones
    /// outnumber it.
    pub fn resume(&mut self, learned_secs: f64) {
        if self.observed.is_empty() && learned_secs.is_finite() && learned_secs > 0.0 {
            self.observed.extend([learned_secs; 3]);
        }
    }

    /// Records a scale-up to `target` replicas requested at `now`.
    pub fn requested(&mut self, now: f64, target: i64) {
        self.pending.push_back((now, target));
    }

    /// Records how many replicas are ready at `now`; completes scale-ups that are now ready.
    pub fn ready(&mut self, now: f64, ready: i64) {
        while let Some(&(at, target)) = self.pending.front() {
            if ready < target {
                break;
            }
            self.pending.pop_front();
            if self.observed.len() == KEEP {
                self.observed.pop_front();
            }
            self.observed.push_back(now - at);
        }
    }

    /// Forgets scale-ups that can no longer complete (the target was lowered below them).
    pub fn cancel_above(&mut self, target: i64) {
        self.pending.retain(|&(_, t)| t <= target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_value_serves_until_new_observations_outnumber_it() {
        let mut l = LeadTime::new(120.0, true);
        l.resume(45.0);
        assert_eq!(l.learned(), Some(45.0));
        for i in 0..20 {
            let at = f64::from(i) * 1000.0;
            l.requested(at, i64::from(i) + 2);
            l.ready(at + 90.0, i64::from(i) + 2);
        }
        assert_eq!(l.learned(), Some(90.0), "twenty new observations push the resumed value out");
        let mut off = LeadTime::new(120.0, false);
        off.resume(45.0);
        assert_eq!((off.learned(), off.secs()), (None, 120.0), "learning off: the policy's value");
        let mut next = LeadTime::new(60.0, true);
        next.carry_over(&l);
        assert_eq!(next.learned(), Some(90.0));
    }

    #[test]
    fn starts_from_the_policy_then_learns_p90() {
        let mut l = LeadTime::new(120.0, true);
        assert_eq!(l.secs(), 120.0);
        for (i, took) in [30.0, 40.0, 50.0, 60.0, 200.0].into_iter().enumerate() {
            let at = i as f64 * 1000.0;
            l.requested(at, (i + 2) as i64);
            l.ready(at + took - 1.0, (i + 1) as i64);
            l.ready(at + took, (i + 2) as i64);
        }
        assert_eq!(l.learned(), Some(200.0));
    }

    #[test]
    fn learning_off_keeps_the_policy_value() {
        let mut l = LeadTime::new(90.0, false);
        for i in 0..5 {
            l.requested(i as f64, 3);
            l.ready(i as f64 + 5.0, 3);
        }
        assert_eq!(l.secs(), 90.0);
        assert_eq!(l.learned(), None);
    }
}
