//! Request-count traces as CSV: `timestamp,count`, one row per fixed interval.
//!
//! Timestamps may be RFC 3339 (with or without an offset; without one they are read as UTC)
//! or seconds since the epoch. The interval is the median spacing of the rows. A first row
//! whose count is not a number is a header; fields may be quoted.

use std::path::Path;

use chrono::{DateTime, NaiveDateTime};

/// A loaded trace: start time, interval, and the arrival rate (per second) of each interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Seconds since the epoch of the first row.
    pub start: f64,
    /// Seconds between rows.
    pub interval: f64,
    /// Arrivals per second in each interval.
    pub rates: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse { path: String, line: usize, message: String },
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
}

/// The most intervals a trace may span: three years of seconds. A file of one row per event
/// (a median spacing of milliseconds) would otherwise become billions of empty intervals.
pub const MAX_INTERVALS: usize = 100_000_000;

fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(f)
}

fn parse_time(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis() as f64 / 1000.0);
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis() as f64 / 1000.0);
        }
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Trace {
    /// Loads a `timestamp,count` CSV.
    ///
    /// # Errors
    /// Unreadable file, a row that does not parse (named by line), fewer than two rows, or
    /// timestamps that do not increase.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io { path: name.clone(), source })?;
        Self::parse(&name, &text)
    }

    /// Parses CSV text; `name` is used in errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, TraceError> {
        let mut times = Vec::new();
        let mut counts = Vec::new();
        let mut header_possible = true;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| TraceError::Parse { path: name.to_owned(), line: i + 1, message };
            let (t, c) =
                line.split_once(',').ok_or_else(|| err(format!("expected `timestamp,count`, got {line:?}")))?;
            // Spreadsheets quote fields; `"1995-07-01 00:00:00","42"` is the same row.
            let (t, c) = (unquote(t), unquote(c));
            // A first row whose count is not a number is a header, whatever it calls the
            // columns (`timestamp,count`, `time,requests`, …).
            if std::mem::take(&mut header_possible) && c.parse::<f64>().is_err() {
                continue;
            }
            let t = parse_time(t).ok_or_else(|| err(format!("timestamp {t:?} is not RFC 3339 or epoch seconds")))?;
            let c: f64 = c.trim().parse().map_err(|_| err(format!("count {c:?} is not a number")))?;
            if !c.is_finite() || c < 0.0 {
                return Err(err(format!("count {c} must be a finite number ≥ 0")));
            }
            if times.last().is_some_and(|&last| t <= last) {
                return Err(err("timestamps must increase".into()));
            }
            times.push(t);
            counts.push(c);
        }
        if times.len() < 2 {
            return Err(TraceError::Shape { path: name.to_owned(), message: "needs at least two rows".into() });
        }
        let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_by(f64::total_cmp);
        let interval = gaps[gaps.len() / 2];
        // Rows are placed on the interval grid; missing rows (gaps in the recording) are
        // zero arrivals, as a request log with no lines for a minute means no requests.
        let span = times[times.len() - 1] - times[0];
        let grid = span / interval + 1.0;
        if grid > MAX_INTERVALS as f64 {
            return Err(TraceError::Shape {
                path: name.to_owned(),
                message: format!(
                    "rows are {interval:.3} s apart (the median spacing) but span {span:.0} s: {grid:.0} intervals, \
                     more than the {MAX_INTERVALS} this reads; sum the counts into coarser rows (one per second \
                     or per minute)"
                ),
            });
        }
        let n = (span / interval).round() as usize + 1;
        let mut rates = vec![0.0; n];
        for (t, c) in times.iter().zip(&counts) {
            let idx = ((t - times[0]) / interval).round() as usize;
            rates[idx.min(n - 1)] += c / interval;
        }
        Ok(Self { start: times[0], interval, rates })
    }

    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        self.rates.len() as f64 * self.interval
    }

    /// Arrival rate at `t` seconds after the start (0 outside the trace).
    pub fn rate_at(&self, t: f64) -> f64 {
        if t < 0.0 {
            return 0.0;
        }
        self.rates.get((t / self.interval) as usize).copied().unwrap_or(0.0)
    }

    /// The rate of the trace's busiest minutes: the 99.9th percentile of its per-minute rates
    /// (of its rows, when they are coarser than a minute). A percentile rather than the
    /// maximum, so that one odd minute does not decide it.
    pub fn busy_rate(&self) -> f64 {
        let mut minutes = self.buckets(60.0);
        minutes.sort_by(f64::total_cmp);
        let rank = ((minutes.len() as f64 * 0.999).ceil() as usize).clamp(1, minutes.len());
        minutes[rank - 1]
    }

    /// Mean rate per bucket of `step` seconds.
    pub fn buckets(&self, step: f64) -> Vec<f64> {
        let per = (step / self.interval).round().max(1.0) as usize;
        self.rates.chunks(per).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_naive_and_epoch() {
        let t = Trace::parse("t", "timestamp,count\n1995-07-01T00:00:00-04:00,60\n1995-07-01T00:01:00-04:00,120\n")
            .unwrap();
        assert_eq!(t.interval, 60.0);
        assert_eq!(t.rates, vec![1.0, 2.0]);
        let t = Trace::parse("t", "2023-11-16T18:17:03,1\n2023-11-16T18:17:04,7\n").unwrap();
        assert_eq!((t.interval, t.rates.clone()), (1.0, vec![1.0, 7.0]));
        let t = Trace::parse("t", "100,5\n110,10\n").unwrap();
        assert_eq!(t.rates, vec![0.5, 1.0]);
        // Any header; quoted fields; Windows line ends.
        let t = Trace::parse("t", "time,requests\r\n\"100\",\"5\"\r\n110,10\r\n").unwrap();
        assert_eq!(t.rates, vec![0.5, 1.0]);
    }

    #[test]
    fn missing_rows_are_zero() {
        let t = Trace::parse("t", "0,60\n60,60\n180,60\n240,60\n").unwrap();
        assert_eq!(t.rates, vec![1.0, 1.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn busy_rate_is_a_high_percentile_of_minutes() {
        // 1,000 minutes at 1, 2, …, 1,000 requests/s (in an order of their own): the busiest
        // one is above the 99.9th percentile, the next is not.
        let csv: String = (0..1000u64).map(|i| format!("{},{}\n", i * 60, 60 * ((i * 7919) % 1000 + 1))).collect();
        assert_eq!(Trace::parse("t", &csv).unwrap().busy_rate(), 999.0);
        // Rows of a second are read by the minute.
        let secs: String = (0..600).map(|i| format!("{i},{}\n", if i < 60 { 10 } else { 1 })).collect();
        assert_eq!(Trace::parse("t", &secs).unwrap().busy_rate(), 10.0);
    }

    #[test]
    fn errors_name_the_line() {
        let e = Trace::parse("f.csv", "timestamp,count\n0,1\nyesterday,2\n").unwrap_err();
        assert_eq!(e.to_string(), "f.csv:3: timestamp \"yesterday\" is not RFC 3339 or epoch seconds");
        let e = Trace::parse("f.csv", "0,1\n60,-1\n").unwrap_err();
        assert!(e.to_string().starts_with("f.csv:2:"), "{e}");
        assert!(Trace::parse("f.csv", "0,1\n").is_err());
        assert!(Trace::parse("f.csv", "60,1\n0,1\n").is_err());
        // One row per event, a millisecond apart, then one a year later.
        let events = "0,1\n0.001,1\n0.002,1\n31536000,1\n";
        let e = Trace::parse("f.csv", events).unwrap_err();
        assert!(e.to_string().contains("more than the 100000000 this reads"), "{e}");
    }
}
