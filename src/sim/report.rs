//! Presenting a simulation: a table, levee's decision timeline, JSON, and a self-contained
//! HTML report with charts.
//!
//! Charts are plain inline SVG polylines: a report must open anywhere, offline, and chart
//! libraries' text layout needs system fonts this tool cannot count on.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Run, controllers::Target, metrics::Summary, scenario::Scenario};

/// The `--json` document.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    pub scenario: &'a str,
    pub seed: u64,
    /// The replayed trace and the factor its rates were multiplied by, when one is replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_scale: Option<f64>,
    pub controllers: serde_json::Map<String, serde_json::Value>,
}

pub fn json(scenario: &Scenario, runs: &[Run]) -> serde_json::Result<String> {
    let mut controllers = serde_json::Map::new();
    for r in runs {
        let mut v = serde_json::to_value(&r.summary)?;
        if let (Some(g), Some(obj)) = (&r.guard, v.as_object_mut()) {
            obj.insert("traffic_guard".into(), serde_json::to_value(g)?);
        }
        controllers.insert(r.summary.controller.clone(), v);
    }
    serde_json::to_string_pretty(&JsonReport {
        scenario: &scenario.name,
        seed: scenario.seed,
        trace: scenario.arrivals.trace.as_deref(),
        trace_scale: scenario.arrivals.trace.is_some().then_some(scenario.arrivals.trace_scale),
        controllers,
    })
}

fn drain(s: &Summary) -> String {
    match s.time_to_drain_secs {
        Some(t) => format!("{:.0}m", t / 60.0),
        None if s.peak_backlog > 0.0 => "never".into(),
        None => "-".into(),
    }
}

/// What levee's TrafficGuard did in a run, in a few lines; empty without one.
pub fn guard_lines(run: &Run) -> String {
    let Some(g) = &run.guard else { return String::new() };
    let secs = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |s| format!("{s:.0}s"));
    let mut out = String::new();
    for a in &g.attacks {
        let _ = writeln!(
            out,
            "  {:<10} detected {:>6}  limited {:>6}  after onset; {:.1}% of it admitted",
            a.name,
            secs(a.detect_secs),
            secs(a.enforce_secs),
            100.0 * a.admitted_ratio
        );
    }
    let _ = writeln!(
        out,
        "  page {} after onset; {} Mitigations, {} renewed as they were about to lapse; legitimate requests \
         refused at the edge {:.3}%",
        secs(g.page_secs),
        g.mitigations,
        g.renewals,
        100.0 * g.false_positive_ratio
    );
    out
}

/// The comparison table.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>11} {:>9} {:>12} {:>7} {:>9} {:>10} {:>13} {:>9}",
        "", "SLO-bad", "replica-", "success", "peak", "drain", "reversals", "zero-live", "primary at", "peak lag"
    );
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>11} {:>9} {:>12} {:>7} {:>9} {:>10} {:>13} {:>9}",
        "", "minutes", "minutes", "", "backlog", "time", "", "minutes", "100% (min)", ""
    );
    for r in runs {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{:<8} {:>9.0} {:>11.0} {:>8.2}% {:>12.0} {:>7} {:>9} {:>10.1} {:>13.1} {:>8.0}s",
            s.controller,
            s.slo_violation_minutes,
            s.replica_minutes,
            s.success_rate * 100.0,
            s.peak_backlog,
            drain(s),
            s.reversals,
            s.zero_live_secs / 60.0,
            s.primary_over_capacity_secs / 60.0,
            s.peak_replica_lag_secs,
        );
    }
    out
}

/// levee's decisions, oldest first: at most `limit` lines, then a count of the rest.
pub fn timeline(scenario: &Scenario, run: &Run, limit: usize) -> String {
    let mut out = String::new();
    for d in run.decisions.iter().take(limit) {
        let target = match d.target {
            Target::Api => "api",
            Target::Workers => "workers",
            Target::Replicas => "db-replicas",
        };
        let _ = writeln!(
            out,
            "{}  {target:<11} {:<16} {}",
            scenario.clock(d.decision.at),
            d.decision.reason.as_str(),
            d.decision.message
        );
    }
    if run.decisions.len() > limit {
        let _ =
            writeln!(out, "… and {} more decisions (all of them are in the HTML report)", run.decisions.len() - limit);
    }
    out
}

const COLORS: &[&str] = &["#888888", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"];

/// An SVG line chart of `series` (name, points), with a title and y-axis maximum label.
fn chart(title: &str, unit: &str, series: &[(String, Vec<(f64, f64)>)], x_label: impl Fn(f64) -> String) -> String {
    let (w, h, pad) = (960.0, 260.0, 40.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        if y.is_finite() {
            y1 = y1.max(y);
        }
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - y.clamp(0.0, y1) / y1 * (h - 2.0 * pad);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="{pad}" y="16" font-size="13" font-weight="bold">{title}</text><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="gray"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="gray"/><text x="2" y="{t}">{y1:.0}</text><text x="2" y="{b}">0</text><text x="{pad}" y="{xl}">{l0}</text><text x="{r}" y="{xl}" text-anchor="end">{l1}</text><text x="{r}" y="16" text-anchor="end">{unit}</text>"#,
        b = h - pad,
        r = w - pad,
        t = pad + 4.0,
        xl = h - pad + 16.0,
        l0 = x_label(x0),
        l1 = x_label(x1),
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        // At most ~2,000 vertices per line: enough for the eye, small enough to open fast.
        let stride = (points.len() / 2000).max(1);
        for &(x, y) in points.iter().step_by(stride) {
            let _ = write!(path, "{:.1},{:.1} ", sx(x), sy(y));
        }
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.3" points="{path}"/><text x="{lx}" y="{ly}" fill="{color}">{name}</text>"#,
            lx = w - pad - 140.0,
            ly = pad + 14.0 * i as f64,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The self-contained HTML report.
pub fn html(scenario: &Scenario, runs: &[Run]) -> String {
    let minute_label = |m: f64| scenario.clock(m * 60.0);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>levee simulate: {}</h1><p>{}</p><p>seed {} · step {} · duration {}</p><pre>{}</pre>",
        escape(&scenario.name),
        escape(&scenario.description),
        scenario.seed,
        scenario.step,
        scenario.duration,
        escape(&table(runs))
    );
    if let Some(levee) = runs.iter().find(|r| r.summary.controller == "levee") {
        let guard = guard_lines(levee);
        if !guard.is_empty() {
            let _ = write!(body, "<h2>levee's TrafficGuard</h2><pre>{}</pre>", escape(&guard));
        }
        let actual: Vec<(f64, f64)> = levee.series.iter().map(|p| (p.minute, p.arrival_rate)).collect();
        let point: Vec<(f64, f64)> =
            levee.forecasts.iter().map(|(t, f)| ((t + f.horizon_secs) / 60.0, f.value)).collect();
        let upper: Vec<(f64, f64)> =
            levee.forecasts.iter().map(|(t, f)| ((t + f.horizon_secs) / 60.0, f.upper)).collect();
        body.push_str(&chart(
            "Arrival rate: actual, and levee's forecast made one lead time earlier",
            "requests/s",
            &[("actual".into(), actual), ("forecast".into(), point), ("forecast upper band".into(), upper)],
            minute_label,
        ));
    }
    let replicas: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| (r.summary.controller.clone(), r.series.iter().map(|p| (p.minute, p.total as f64)).collect()))
        .collect();
    body.push_str(&chart("API replicas (ready or starting) per controller", "replicas", &replicas, minute_label));
    let live: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| (r.summary.controller.clone(), r.series.iter().map(|p| (p.minute, p.ready as f64)).collect()))
        .collect();
    body.push_str(&chart("Live (ready) API instances per controller", "instances", &live, minute_label));
    let failed: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            (r.summary.controller.clone(), r.series.iter().map(|p| (p.minute, p.failed_fraction * 100.0)).collect())
        })
        .collect();
    body.push_str(&chart("Failed requests per minute, percent", "%", &failed, minute_label));
    if let Some(levee) = runs.iter().find(|r| r.summary.controller == "levee") {
        let _ = write!(
            body,
            "<h2>levee's decisions ({})</h2><pre>{}</pre>",
            levee.decisions.len(),
            escape(&timeline(scenario, levee, usize::MAX))
        );
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>levee simulate: {}</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}pre{{font-size:12px;overflow-x:auto}}svg{{margin:1em 0}}</style></head><body>{body}</body></html>",
        escape(&scenario.name)
    )
}
