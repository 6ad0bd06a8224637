//! Additive Holt-Winters with a damped trend, updated one bucket at a time.
//!
//! With `period == 0` it is Holt's damped linear trend (the short-horizon model). With a
//! period it adds one additive seasonal cycle, which needs one full period of history to
//! initialise.

/// Smoothing parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Level smoothing.
    pub alpha: f64,
    /// Trend smoothing.
    pub beta: f64,
    /// Seasonal smoothing.
    pub gamma: f64,
    /// Trend damping in (0, 1]; below 1 the trend fades over the horizon.
    pub phi: f64,
}

/// One Holt-Winters model.
#[derive(Clone, Debug)]
pub struct HoltWinters {
    params: Params,
    period: usize,
    level: f64,
    trend: f64,
    /// Seasonal offsets, indexed by bucket number modulo the period.
    season: Vec<f64>,
    /// Buckets seen; before one period the seasonal model collects its first cycle.
    seen: usize,
    warmup: Vec<f64>,
}

impl HoltWinters {
    pub fn new(params: Params, period: usize) -> Self {
        Self { params, period, level: 0.0, trend: 0.0, season: vec![0.0; period], seen: 0, warmup: Vec::new() }
    }

    /// The seasonal period in buckets (0 for trend only).
    pub fn period(&self) -> usize {
        self.period
    }

    /// Whether the model has enough history to forecast.
    pub fn ready(&self) -> bool {
        if self.period == 0 { self.seen >= 2 } else { self.seen > self.period }
    }

    /// Feeds the value of the bucket just closed.
    pub fn update(&mut self, y: f64) {
        let Params { alpha, beta, gamma, phi } = self.params;
        let idx = self.seen;
        self.seen += 1;
        if self.period > 0 && idx < self.period {
            // First cycle: seasonal offsets are deviations from the cycle's mean.
            self.warmup.push(y);
            if idx + 1 == self.period {
                let mean = self.warmup.iter().sum::<f64>() / self.period as f64;
                for (s, v) in self.season.iter_mut().zip(&self.warmup) {
                    *s = v - mean;
                }
                self.level = self.warmup[self.period - 1] - self.season[self.period - 1];
                self.trend = 0.0;
                self.warmup = Vec::new();
            }
            return;
        }
        if self.period == 0 && idx == 0 {
            self.level = y;
            return;
        }
        let s_prev = if self.period > 0 { self.season[idx % self.period] } else { 0.0 };
        let prev_level = self.level;
        self.level = alpha * (y - s_prev) + (1.0 - alpha) * (prev_level + phi * self.trend);
        self.trend = beta * (self.level - prev_level) + (1.0 - beta) * phi * self.trend;
        if self.period > 0 {
            self.season[idx % self.period] = gamma * (y - self.level) + (1.0 - gamma) * s_prev;
        }
    }

    /// Forecast for the bucket `h` buckets after the last one fed (h ≥ 1).
    pub fn forecast(&self, h: usize) -> f64 {
        let phi = self.params.phi;
        // Σ_{i=1..h} φ^i: the damped trend's total contribution over the horizon.
        let damp: f64 =
            if (phi - 1.0).abs() < f64::EPSILON { h as f64 } else { phi * (1.0 - phi.powi(h as i32)) / (1.0 - phi) };
        let seasonal = if self.period > 0 { self.season[(self.seen - 1 + h) % self.period] } else { 0.0 };
        self.level + damp * self.trend + seasonal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params { alpha: 0.3, beta: 0.05, gamma: 0.2, phi: 0.98 };

    #[test]
    fn trend_model_follows_a_line() {
        let mut m = HoltWinters::new(Params { alpha: 0.8, beta: 0.5, gamma: 0.0, phi: 1.0 }, 0);
        for i in 0..50 {
            m.update(10.0 + 2.0 * i as f64);
        }
        let f = m.forecast(5);
        assert!((f - (10.0 + 2.0 * 54.0)).abs() < 0.5, "{f}");
    }

    #[test]
    fn seasonal_model_learns_a_cycle() {
        let period = 24;
        let wave = |i: usize| 100.0 + 30.0 * (i as f64 * std::f64::consts::TAU / period as f64).sin();
        let mut m = HoltWinters::new(P, period);
        for i in 0..period * 10 {
            m.update(wave(i));
        }
        assert!(m.ready());
        for h in 1..=period {
            let want = wave(period * 10 - 1 + h);
            assert!((m.forecast(h) - want).abs() < 2.0, "h={h}: {} vs {want}", m.forecast(h));
        }
    }

    #[test]
    fn not_ready_before_one_cycle() {
        let mut m = HoltWinters::new(P, 10);
        for _ in 0..10 {
            m.update(1.0);
        }
        assert!(!m.ready());
        m.update(1.0);
        assert!(m.ready());
    }
}
