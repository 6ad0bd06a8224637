//! The Numenta Anomaly Benchmark: run a detector over NAB-format CSVs and score it with NAB's
//! method (windows, probation, scaled-sigmoid weighting, three cost profiles, normalisation
//! between the null and the perfect detector).

use std::{collections::BTreeMap, path::Path};

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::engine::detect::{
    DetectorConfig, RobustDetector,
    novelty::{NoveltyConfig, NoveltyDetector},
};

/// A NAB cost profile.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

/// NAB's three profiles (its `profiles.json`).
pub const PROFILES: [Profile; 3] = [
    Profile { name: "standard", tp: 1.0, fp: 0.11, fn_: 1.0 },
    Profile { name: "low_fp", tp: 1.0, fp: 0.22, fn_: 1.0 },
    Profile { name: "low_fn", tp: 1.0, fp: 0.11, fn_: 2.0 },
];

/// Probation: the first 15% of a file, at most 750 rows, is learnt from but not scored.
fn probation(rows: usize) -> usize {
    ((rows as f64 * 0.15) as usize).min(750)
}

/// `2 * sigmoid(-5x) - 1`: 1 at the start of a window falling to 0 at its end, and negative
/// past it (to −1 far beyond).
fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 { -1.0 } else { 2.0 / (1.0 + (5.0 * x).exp()) - 1.0 }
}

/// One file's rows and windows (row-index ranges, inclusive).
pub struct Series {
    pub name: String,
    pub timestamps: Vec<String>,
    pub values: Vec<f64>,
    pub windows: Vec<(usize, usize)>,
}

/// The raw score of `detections` (row indices) on `s` under `p`.
fn raw_score(s: &Series, detections: &[usize], p: Profile) -> f64 {
    let start = probation(s.values.len());
    let mut score = 0.0;
    let mut hit = vec![false; s.windows.len()];
    for &i in detections.iter().filter(|&&i| i >= start) {
        match s.windows.iter().position(|&(a, b)| a <= i && i <= b) {
            Some(w) => {
                if !hit[w] {
                    hit[w] = true;
                    let (a, b) = s.windows[w];
                    let width = (b - a + 1) as f64;
                    score += p.tp * scaled_sigmoid(-((b - i + 1) as f64) / width);
                }
            }
            None => {
                // A false positive costs less the closer it follows a window.
                let prev = s.windows.iter().filter(|&&(_, b)| b < i).max_by_key(|&&(_, b)| b);
                let unweighted = match prev {
                    Some(&(a, b)) => scaled_sigmoid((i - b) as f64 / ((b - a) as f64).max(1.0)),
                    None => -1.0,
                };
                score += p.fp * unweighted;
            }
        }
    }
    score - p.fn_ * hit.iter().filter(|h| !**h).count() as f64
}

/// Scores by profile, normalised so the null detector scores 0 and the perfect one 100.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NabScores {
    pub standard: f64,
    pub low_fp: f64,
    pub low_fn: f64,
    pub files: usize,
    pub windows: usize,
    pub detections: usize,
}

pub fn score(series: &[Series], detections: &[Vec<usize>]) -> NabScores {
    let mut out = [0.0; 3];
    for (k, p) in PROFILES.iter().enumerate() {
        let (mut raw, mut null, mut perfect) = (0.0, 0.0, 0.0);
        for (s, d) in series.iter().zip(detections) {
            raw += raw_score(s, d, *p);
            null += raw_score(s, &[], *p);
            let ideal: Vec<usize> = s.windows.iter().map(|&(a, _)| a).collect();
            perfect += raw_score(s, &ideal, *p);
        }
        out[k] = if perfect > null { 100.0 * (raw - null) / (perfect - null) } else { 0.0 };
    }
    NabScores {
        standard: out[0],
        low_fp: out[1],
        low_fn: out[2],
        files: series.len(),
        windows: series.iter().map(|s| s.windows.len()).sum(),
        detections: detections.iter().map(Vec::len).sum(),
    }
}

/// The detector to score.
#[derive(Clone, Copy, Debug)]
pub enum Detector {
    /// Transition novelty over this many levels. It warms up on the probation period, as NAB
    /// lets every detector, and rests a fifth of it after each change.
    Novelty { levels: u32 },
    /// The robust EWMA/MAD baseline.
    Robust(DetectorConfig),
}

/// Runs `detector` over one series; returns the flagged rows.
pub fn detect(values: &[f64], detector: Detector) -> Vec<usize> {
    let mut judge: Box<dyn FnMut(f64) -> bool> = match detector {
        Detector::Novelty { levels } => {
            let warmup = probation(values.len());
            let mut d = NoveltyDetector::new(NoveltyConfig { levels, rest: warmup / 5, warmup });
            Box::new(move |x| d.observe(x))
        }
        Detector::Robust(cfg) => {
            let mut d = RobustDetector::new(cfg);
            Box::new(move |x| d.observe(x).anomalous)
        }
    };
    values.iter().enumerate().filter_map(|(i, &v)| judge(v).then_some(i)).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NabError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Parse { path: String, line: usize, message: String },
}

fn parse_ts(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// The files a windows file names, as found in a data directory.
pub struct Corpus {
    pub series: Vec<Series>,
    /// Files the windows file names that the directory does not have (NAB's own
    /// `windows.json` over a subset of its data), left out of the score.
    pub missing: Vec<String>,
}

/// Loads every file named in the windows file that `data` holds.
///
/// # Errors
/// An unreadable windows file or CSV, a row or window timestamp that does not parse, or not
/// one of the named files in `data`.
pub fn load(data: &Path, windows_file: &Path) -> Result<Corpus, NabError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| NabError::Read { path: p.display().to_string(), message: e.to_string() })
    };
    let windows: BTreeMap<String, Vec<[String; 2]>> = serde_json::from_str(&read(windows_file)?)
        .map_err(|e| NabError::Read { path: windows_file.display().to_string(), message: e.to_string() })?;
    let (mut out, mut missing) = (Vec::new(), Vec::new());
    for (name, ws) in windows {
        let path = data.join(&name);
        if !path.exists() {
            missing.push(name);
            continue;
        }
        let text = read(&path)?;
        let (mut timestamps, mut values, mut times) = (Vec::new(), Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
            let err = |message: String| NabError::Parse { path: path.display().to_string(), line: i + 1, message };
            let (t, v) =
                line.split_once(',').ok_or_else(|| err(format!("expected `timestamp,value`, got {line:?}")))?;
            times.push(parse_ts(t).ok_or_else(|| err(format!("bad timestamp {t:?}")))?);
            values.push(v.trim().parse::<f64>().map_err(|_| err(format!("bad value {v:?}")))?);
            timestamps.push(t.trim().to_owned());
        }
        let mut rows = Vec::new();
        for [a, b] in &ws {
            let bad = |t: &str| NabError::Parse {
                path: windows_file.display().to_string(),
                line: 0,
                message: format!("bad window time {t:?}"),
            };
            let (ta, tb) = (parse_ts(a).ok_or_else(|| bad(a))?, parse_ts(b).ok_or_else(|| bad(b))?);
            let first = times.iter().position(|t| *t >= ta);
            let last = times.iter().rposition(|t| *t <= tb);
            if let (Some(f), Some(l)) = (first, last)
                && f <= l
            {
                rows.push((f, l));
            }
        }
        out.push(Series { name, timestamps, values, windows: rows });
    }
    if out.is_empty() {
        return Err(NabError::Read {
            path: data.display().to_string(),
            message: format!(
                "none of the {} files {} names is there (names are paths under --data)",
                missing.len(),
                windows_file.display()
            ),
        });
    }
    Ok(Corpus { series: out, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Series {
        Series {
            name: "s".into(),
            timestamps: vec![String::new(); 1000],
            values: vec![0.0; 1000],
            windows: vec![(400, 499), (800, 899)],
        }
    }

    #[test]
    fn null_scores_zero_and_perfect_scores_one_hundred() {
        let s = [series()];
        assert_eq!(score(&s, &[vec![]]).standard, 0.0);
        let perfect = score(&s, &[vec![400, 800]]);
        assert!((perfect.standard - 100.0).abs() < 1e-9);
        assert!((perfect.low_fn - 100.0).abs() < 1e-9);
    }

    #[test]
    fn earlier_is_better_and_false_positives_cost() {
        let s = [series()];
        let early = score(&s, &[vec![410, 810]]).standard;
        let late = score(&s, &[vec![490, 890]]).standard;
        assert!(early > late && late > 0.0, "{early} {late}");
        let noisy = score(&s, &[vec![410, 810, 200, 300]]).standard;
        assert!(noisy < early);
        let low_fp = score(&s, &[vec![410, 810, 200, 300]]).low_fp;
        assert!(low_fp < noisy, "FPs cost twice as much under reward_low_FP_rate");
    }

    #[test]
    fn detections_in_probation_and_repeats_in_a_window_do_not_count() {
        let s = [series()];
        let base = score(&s, &[vec![410]]).standard;
        assert_eq!(score(&s, &[vec![10, 410, 420, 430]]).standard, base);
    }
}
