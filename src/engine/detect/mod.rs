//! Anomaly detection on one series: a robust online baseline (EWMA of the level and of the
//! absolute deviation, a running stand-in for the MAD) and a score in robust deviations.
//!
//! Pure and online: one value in, one verdict out, in constant memory, so the same detector
//! serves per-aggregate traffic baselines and offline scoring (`levee nab`).

pub mod novelty;

/// Settings of a [`RobustDetector`].
#[derive(Clone, Copy, Debug)]
pub struct DetectorConfig {
    /// Weight of each new value in the level (≈ 2 / (memory in points + 1)).
    pub alpha: f64,
    /// Flag at this many robust deviations from the level.
    pub threshold: f64,
    /// Points before the first verdict.
    pub warmup: usize,
    /// Points after a flag during which no new flag is raised (one anomaly, one alert).
    pub cooldown: usize,
    /// Flag drops as well as rises (traffic guards only care about rises).
    pub two_sided: bool,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { alpha: 0.005, threshold: 6.0, warmup: 50, cooldown: 200, two_sided: true }
    }
}

/// The verdict on one value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// Deviations from the baseline, signed.
    pub score: f64,
    pub anomalous: bool,
    /// The baseline the value was judged against.
    pub baseline: f64,
}

/// Median absolute deviation scaled to a normal's standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;

/// An online robust detector.
#[derive(Clone, Debug)]
pub struct RobustDetector {
    cfg: DetectorConfig,
    level: f64,
    deviation: f64,
    seen: usize,
    quiet_until: usize,
    /// Smallest deviation worth dividing by: a flat series should not make every wiggle an
    /// anomaly.
    floor: f64,
}

impl RobustDetector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Self { cfg, level: 0.0, deviation: 0.0, seen: 0, quiet_until: 0, floor: 0.0 }
    }

    /// Multiplies what it has learnt by `k`: the series it watches is now measured in units
    /// `k` times as large.
    pub fn rescale(&mut self, k: f64) {
        if k.is_finite() && k > 0.0 {
            self.level *= k;
            self.deviation *= k;
            self.floor *= k;
        }
    }

    /// Judges `x`, then learns from it. Outliers are learnt from at a reduced weight, so a
    /// surge does not become the baseline within minutes.
    pub fn observe(&mut self, x: f64) -> Verdict {
        if !x.is_finite() {
            return Verdict { score: 0.0, anomalous: false, baseline: self.level };
        }
        if self.seen == 0 {
            self.level = x;
            self.floor = (x.abs() * 1e-3).max(1e-9);
        }
        let scale = (MAD_TO_SIGMA * self.deviation).max(self.floor);
        let score = (x - self.level) / scale;
        let judged = self.seen >= self.cfg.warmup && self.seen >= self.quiet_until;
        let exceeds = if self.cfg.two_sided { score.abs() >= self.cfg.threshold } else { score >= self.cfg.threshold };
        let anomalous = judged && exceeds;
        if anomalous {
            self.quiet_until = self.seen + self.cfg.cooldown;
        }
        let verdict = Verdict { score, anomalous, baseline: self.level };
        // Huber-style update: a value far out moves the baseline as if it were at the edge.
        let clipped = self.level + (x - self.level).clamp(-3.0 * scale, 3.0 * scale);
        // A plain running mean until there are 1/alpha points, so early estimates are not
        // dragged toward the zero they start from.
        let a = self.cfg.alpha.max(1.0 / (self.seen as f64 + 1.0));
        let dev = (x - self.level).abs().min(3.0 * scale.max(self.deviation));
        self.deviation = if self.seen == 0 { 0.0 } else { (1.0 - a) * self.deviation + a * dev };
        if self.seen < self.cfg.warmup {
            // Nothing is judged yet, so nothing is an outlier to clip.
            self.level = (1.0 - a) * self.level + a * x;
            self.seen += 1;
            return verdict;
        }
        self.level = (1.0 - a) * self.level + a * clipped;
        self.seen += 1;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(i: usize) -> f64 {
        // Deterministic noise in [-5, 5].
        100.0 + ((i * 7919) % 11) as f64 - 5.0
    }

    #[test]
    fn a_spike_is_flagged_and_noise_is_not() {
        let mut d = RobustDetector::new(DetectorConfig::default());
        let flags: Vec<usize> =
            (0..1000).filter(|&i| d.observe(if i == 600 { 400.0 } else { noisy(i) }).anomalous).collect();
        assert_eq!(flags, vec![600]);
    }

    #[test]
    fn one_sided_ignores_drops() {
        let mut d = RobustDetector::new(DetectorConfig { two_sided: false, ..DetectorConfig::default() });
        let flagged = (0..1000).any(|i| d.observe(if i == 600 { 0.0 } else { noisy(i) }).anomalous);
        assert!(!flagged);
    }

    #[test]
    fn a_sustained_surge_does_not_become_normal_at_once() {
        let mut d = RobustDetector::new(DetectorConfig { cooldown: 0, ..DetectorConfig::default() });
        for i in 0..500 {
            d.observe(noisy(i));
        }
        // Ten times the level for 20 points: every one of them still stands out.
        let flagged = (500..520).filter(|&i| d.observe(10.0 * noisy(i)).anomalous).count();
        assert_eq!(flagged, 20);
    }

    #[test]
    fn garbage_is_ignored() {
        let mut d = RobustDetector::new(DetectorConfig::default());
        assert!(!d.observe(f64::NAN).anomalous);
        assert!(!d.observe(f64::INFINITY).anomalous);
    }
}
