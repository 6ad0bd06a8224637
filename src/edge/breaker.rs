//! A circuit breaker for one upstream: it opens on consecutive failures, on an error ratio or
//! on a slow-call ratio over a sliding window (judged only once the window holds `min_calls`),
//! lets a few probes through once `open_for` has passed, and closes when they succeed.
//!
//! # Guarantees
//! It never sticks half-open: a probe that does not report back within `open_for` counts as a
//! failure, so the breaker re-opens and later probes again.

use std::collections::VecDeque;

/// The window is kept as this many buckets: constant work per call and constant memory,
/// whatever the call rate.
const BUCKETS: usize = 16;

/// Calls, failures and slow calls in one slice of the window.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    index: i64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// Settings (the `circuitBreakers[]` of a TrafficGuard).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub error_ratio: f64,
    pub slow_call_ratio: f64,
    pub slow_call_secs: f64,
    pub window_secs: f64,
    pub min_calls: u32,
    pub open_for_secs: f64,
    /// Probes allowed through at once while half-open.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_ratio: 0.5,
            slow_call_ratio: 0.8,
            slow_call_secs: 2.0,
            window_secs: 10.0,
            min_calls: 5,
            open_for_secs: 5.0,
            probes: 3,
        }
    }
}

/// Where the breaker is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    Closed,
    /// Refusing calls until the given time.
    Open {
        until: f64,
    },
    /// Letting a few probes through.
    HalfOpen,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    /// Buckets per second, so a call's bucket is a multiplication, not a division.
    buckets_per_sec: f64,
    state: State,
    buckets: [Bucket; BUCKETS],
    consecutive: u32,
    probes_in_flight: VecDeque<f64>,
    probe_successes: u32,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            buckets_per_sec: BUCKETS as f64 / cfg.window_secs.max(BUCKETS as f64 * 1e-3),
            state: State::Closed,
            buckets: [Bucket::default(); BUCKETS],
            consecutive: 0,
            probes_in_flight: VecDeque::new(),
            probe_successes: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn open(&mut self, now: f64) {
        self.state = State::Open { until: now + self.cfg.open_for_secs };
        self.buckets = [Bucket::default(); BUCKETS];
        self.consecutive = 0;
        self.probes_in_flight.clear();
        self.probe_successes = 0;
    }

    /// Whether a call may go to the upstream now. A `true` must be followed by
    /// [`Breaker::record`] for that call.
    pub fn allow(&mut self, now: f64) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now < until => false,
            State::Open { .. } => {
                self.state = State::HalfOpen;
                self.probes_in_flight.clear();
                self.probe_successes = 0;
                self.admit_probe(now)
            }
            State::HalfOpen => {
                // A probe that never reported back is a failure: re-open.
                if self.probes_in_flight.front().is_some_and(|&t| now - t > self.cfg.open_for_secs) {
                    self.open(now);
                    return false;
                }
                self.admit_probe(now)
            }
        }
    }

    fn admit_probe(&mut self, now: f64) -> bool {
        if (self.probes_in_flight.len() as u32) < self.cfg.probes {
            self.probes_in_flight.push_back(now);
            true
        } else {
            false
        }
    }

    /// Records the outcome of an allowed call that started at `started` and ended at `now`.
    pub fn record(&mut self, started: f64, now: f64, failed: bool) {
        let slow = now - started >= self.cfg.slow_call_secs;
        match self.state {
            State::HalfOpen => {
                self.probes_in_flight.pop_front();
                if failed || slow {
                    self.open(now);
                } else {
                    self.probe_successes += 1;
                    if self.probe_successes >= self.cfg.probes {
                        self.state = State::Closed;
                        self.buckets = [Bucket::default(); BUCKETS];
                        self.consecutive = 0;
                    }
                }
            }
            State::Open { .. } => {}
            State::Closed => {
                let index = floor(now * self.buckets_per_sec);
                let b = &mut self.buckets[index.rem_euclid(BUCKETS as i64) as usize];
                if b.index != index {
                    *b = Bucket { index, ..Bucket::default() };
                }
                b.calls += 1;
                b.failures += u32::from(failed);
                b.slow += u32::from(slow);
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                // A good call only lowers both ratios: the window is judged on bad ones.
                if !failed && !slow {
                    return;
                }
                let live = self.buckets.iter().filter(|b| b.index > index - BUCKETS as i64 && b.calls > 0);
                let (calls, failures, slows) =
                    live.fold((0u32, 0u32, 0u32), |(c, f, s), b| (c + b.calls, f + b.failures, s + b.slow));
                let n = f64::from(calls);
                let (failures, slows) = (f64::from(failures), f64::from(slows));
                let judged = calls >= self.cfg.min_calls;
                if self.consecutive >= self.cfg.consecutive_failures
                    || (judged && (failures / n >= self.cfg.error_ratio || slows / n >= self.cfg.slow_call_ratio))
                {
                    self.open(now);
                }
            }
        }
    }
}

/// `x.floor() as i64`, inline: without SSE4.1 in the target, `f64::floor` is a call into libm,
/// once per request here.
fn floor(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) > x { t - 1 } else { t }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn opens_on_consecutive_failures_then_probes_and_closes() {
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 0..5 {
            assert!(b.allow(i as f64 * 0.1));
            b.record(i as f64 * 0.1, i as f64 * 0.1, true);
        }
        assert!(matches!(b.state(), State::Open { .. }));
        assert!(!b.allow(1.0));
        // After open_for: three probes, no more until they report.
        let t = 6.0;
        assert!(b.allow(t) && b.allow(t) && b.allow(t));
        assert!(!b.allow(t));
        for _ in 0..3 {
            b.record(t, t + 0.01, false);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn error_ratio_needs_min_calls() {
        let mut b = Breaker::new(BreakerConfig { consecutive_failures: 100, ..BreakerConfig::default() });
        // 2 of 4 failed: 50%, but only 4 calls.
        for (i, failed) in [true, false, true, false].into_iter().enumerate() {
            b.record(i as f64, i as f64, failed);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(5.0, 5.0, true);
        assert!(matches!(b.state(), State::Open { .. }), "3 of 5 failed");
    }

    #[test]
    fn slow_calls_open_it() {
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 0..5 {
            b.record(i as f64, i as f64 + 3.0, false);
        }
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let mut b = Breaker::new(BreakerConfig { consecutive_failures: 1, ..BreakerConfig::default() });
        b.record(0.0, 0.0, true);
        assert!(b.allow(10.0));
        b.record(10.0, 10.1, true);
        assert!(matches!(b.state(), State::Open { until } if until > 10.0));
    }

    proptest! {
        #[test]
        fn floor_is_the_floor(x in -1e12f64..1e12) {
            prop_assert_eq!(floor(x), x.floor() as i64);
        }

        #[test]
        fn never_sticks_half_open(outcomes in prop::collection::vec(prop::option::of(any::<bool>()), 1..200)) {
            // Some probes report (success or failure), some never do (None).
            let mut b = Breaker::new(BreakerConfig { consecutive_failures: 1, ..BreakerConfig::default() });
            b.record(0.0, 0.0, true);
            let mut t = 0.0;
            for o in outcomes {
                t += 1.0;
                if b.allow(t) && let Some(failed) = o {
                    b.record(t, t, failed);
                }
            }
            // Long after the last call, the breaker lets traffic through or is waiting out an
            // open period that ends: it is never stuck refusing forever.
            let later = t + 100.0;
            let mut allowed = false;
            for k in 0..20 {
                allowed |= b.allow(later + k as f64 * 10.0);
            }
            prop_assert!(allowed, "{:?}", b.state());
        }
    }
}
