//! Transition novelty: flags the point where a series moves in a way it never has before.
//!
//! Values are quantised into a few levels over the range seen in a warm-up; levels beyond
//! that range are allowed, and are new by definition. The detector remembers every step from
//! one level to the next that it has seen. A step never seen before is novel. The first novel
//! step after at least `rest` points without one is flagged: one change, one alert, and the
//! new regime is learnt while it settles instead of alerting on every point of it.
//!
//! It complements the robust baseline ([`super::RobustDetector`]): that one needs a value far
//! from the usual level in units of its usual noise, this one catches a shape the series never
//! had at any size the quantisation resolves, such as a level shift inside the usual range, a
//! jump between two usual levels, or a lost daily cycle.

use std::collections::HashSet;

/// Settings of a [`NoveltyDetector`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoveltyConfig {
    /// Quantisation levels across the warm-up range (at least 2).
    pub levels: u32,
    /// Points without a novel step before the next flag.
    pub rest: usize,
    /// Points that set the range before anything is judged (at least 1).
    pub warmup: usize,
}

impl Default for NoveltyConfig {
    fn default() -> Self {
        Self { levels: 6, rest: 120, warmup: 600 }
    }
}

/// Level index; far outside the range every level is equally new, so the clamp costs nothing.
type Level = i16;

/// The online transition-novelty detector. Memory is bounded by the square of the levels
/// reachable, which the clamp bounds; in practice a few dozen steps.
#[derive(Clone, Debug)]
pub struct NoveltyDetector {
    cfg: NoveltyConfig,
    warm: Vec<f64>,
    lo: f64,
    step: f64,
    last: Option<Level>,
    steps: HashSet<(Level, Level)>,
    seen: usize,
    /// Points since the last novel step.
    calm: usize,
}

impl NoveltyDetector {
    pub fn new(mut cfg: NoveltyConfig) -> Self {
        cfg.levels = cfg.levels.max(2);
        cfg.warmup = cfg.warmup.max(1);
        Self { cfg, warm: Vec::new(), lo: 0.0, step: 1.0, last: None, steps: HashSet::new(), seen: 0, calm: usize::MAX }
    }

    fn level(&self, x: f64) -> Level {
        ((x - self.lo) / self.step).floor().clamp(-f64::from(Level::MAX), f64::from(Level::MAX)) as Level
    }

    /// Records the step to `x`'s level; true when it was never seen before.
    fn learn(&mut self, x: f64) -> bool {
        let b = self.level(x);
        let novel = self.last.is_some_and(|a| self.steps.insert((a, b)));
        self.last = Some(b);
        novel
    }

    /// Fixes the range from the warm-up and learns the warm-up's steps.
    fn settle_range(&mut self) {
        let lo = self.warm.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.warm.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A flat warm-up still needs a level width: one in the value's own magnitude.
        let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
        self.lo = lo;
        self.step = span / f64::from(self.cfg.levels - 1);
        for x in std::mem::take(&mut self.warm) {
            self.learn(x);
        }
    }

    /// Judges `x`, then learns from it. True when `x` is flagged.
    pub fn observe(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        self.seen += 1;
        if self.seen <= self.cfg.warmup {
            self.warm.push(x);
            if self.seen == self.cfg.warmup {
                self.settle_range();
            }
            return false;
        }
        let novel = self.learn(x);
        let flagged = novel && self.calm >= self.cfg.rest;
        self.calm = if novel { 0 } else { self.calm.saturating_add(1) };
        flagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily(i: usize) -> f64 {
        // A smooth cycle of 100 points between 0 and 100.
        50.0 + 50.0 * (i as f64 * std::f64::consts::TAU / 100.0).sin()
    }

    fn flags(values: impl Iterator<Item = f64>, cfg: NoveltyConfig) -> Vec<usize> {
        let mut d = NoveltyDetector::new(cfg);
        values.enumerate().filter_map(|(i, x)| d.observe(x).then_some(i)).collect()
    }

    const CFG: NoveltyConfig = NoveltyConfig { levels: 6, rest: 50, warmup: 300 };

    #[test]
    fn a_repeating_cycle_is_never_flagged() {
        assert!(flags((0..5000).map(daily), CFG).is_empty());
    }

    #[test]
    fn a_jump_between_usual_levels_is_flagged_once() {
        // Halfway through the cycle the series jumps from its top straight to its bottom and
        // carries on from there: both values are usual, the step is not.
        let values = (0..3000).map(|i| if (2025..2050).contains(&i) { 0.0 } else { daily(i) });
        assert_eq!(flags(values, CFG), vec![2025]);
    }

    #[test]
    fn a_value_beyond_the_range_is_flagged_and_the_new_regime_then_learnt() {
        let values = (0..3000).map(|i| if i >= 2000 { 400.0 + daily(i) } else { daily(i) });
        let f = flags(values, CFG);
        assert_eq!(f.first(), Some(&2000));
        // The new regime is learnt within its first cycles: no flag after that.
        assert!(f.iter().all(|&i| i < 2300), "{f:?}");
    }

    #[test]
    fn rest_holds_back_a_second_flag() {
        let values = (0..3000).map(|i| match i {
            2000 => 1000.0,
            2010 => -1000.0,
            _ => daily(i),
        });
        assert_eq!(flags(values, CFG), vec![2000]);
    }

    #[test]
    fn garbage_and_a_flat_warmup_do_not_panic_or_flag() {
        let mut d = NoveltyDetector::new(NoveltyConfig { levels: 0, rest: 0, warmup: 3 });
        for x in [f64::NAN, 5.0, 5.0, f64::INFINITY, 5.0, 5.0, f64::NEG_INFINITY] {
            assert!(!d.observe(x), "{x}");
        }
        assert!(d.observe(1e300), "far beyond a flat range is new");
        assert!(d.observe(-1e300), "so is far below it, with no rest configured");
    }
}
