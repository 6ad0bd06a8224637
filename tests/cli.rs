//! The `levee` binary's offline commands, end to end: simulate, backtest, crd (and `levee
//! status` with no operator to ask).

use std::process::Command;

fn levee(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run levee")
}

#[test]
fn simulate_json_has_every_controller_and_the_keys() {
    let dir = std::env::temp_dir().join(format!("levee-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.html");
    let out = levee(&["simulate", "--no-traffic-guard", "--json", "--report", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scenario"], "incident");
    for c in ["none", "hpa", "keda", "levee"] {
        for key in ["slo_violation_minutes", "replica_minutes"] {
            assert!(v["controllers"][c][key].is_number(), "{c}.{key} missing: {v}");
        }
    }
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg") && html.contains("levee's decisions"), "report has charts and the timeline");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simulate_prints_a_table_and_a_timeline() {
    let report = std::env::temp_dir().join(format!("levee-cli-table-{}.html", std::process::id()));
    let out =
        levee(&["simulate", "--no-traffic-guard", "--controllers", "none,levee", "--report", report.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SLO-bad") && text.contains("levee's decisions:"), "{text}");
    assert!(text.contains("21:0"), "timeline uses the incident's clock: {text}");
    std::fs::remove_file(report).ok();
}

#[test]
fn simulate_fits_a_trace_of_any_size_to_the_fleet() {
    // Six hours of a busy service: up to 5,000 requests/s. At the NASA scenario's own ×100 it
    // would need 50,000 replicas and every controller would sit at maxReplicas (120), failing
    // alike; fitted, its busiest minutes need 40% of them.
    let dir = std::env::temp_dir().join(format!("levee-cli-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("busy.csv");
    let rows: String = (0..360)
        .map(|m| {
            let per_sec = 3000.0 + 2000.0 * (f64::from(m) / 360.0 * std::f64::consts::PI).sin();
            format!("{},{}\n", 1_700_000_000 + m * 60, (per_sec * 60.0).round())
        })
        .collect();
    std::fs::write(&trace, format!("timestamp,count\n{rows}")).unwrap();
    let report = dir.join("report.html");
    let args = ["simulate", "--trace", trace.to_str().unwrap(), "--controllers", "none,levee", "--json"];
    let out = levee(&[&args[..], &["--report", report.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trace_scale"], 0.1, "0.4 × 120 replicas × 10/s over 5,000/s, rounded: {v}");
    let fitted = &v["controllers"]["levee"];
    assert!(fitted["success_rate"].as_f64().unwrap() > 0.99, "levee keeps up with the fitted trace: {fitted}");
    assert!(v["controllers"]["none"]["success_rate"].as_f64().unwrap() < 0.9, "10 fixed replicas do not: {v}");

    // A scale given by hand is used as it is; a nonsensical one is refused.
    let out = levee(&[&args[..], &["--trace-scale", "0.05", "--report", report.to_str().unwrap()]].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trace_scale"], 0.05, "{v}");
    let out = levee(&[&args[..], &["--trace-scale=0"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--trace-scale must be a positive number"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simulate_puts_the_scenarios_traffic_guard_in_front_by_default() {
    // The incident with fewer clients, a shorter history and a shorter surge, to keep the
    // debug build quick.
    let yaml = include_str!("../src/sim/scenarios/incident.yaml")
        .replace("duration: 5h30m", "duration: 40m")
        .replace("end: 1h53m", "end: 20m")
        .replace("legit: { sources: 4000", "legit: { sources: 300")
        .replace("surge: { sources: 2000", "surge: { sources: 150")
        .replace("trafficGuard:\n", "trafficGuard:\n  history: 10m\n");
    let dir = std::env::temp_dir().join(format!("levee-cli-guard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, report) = (dir.join("small.yaml"), dir.join("report.html"));
    std::fs::write(&file, yaml).unwrap();
    let args = ["simulate", "--scenario", file.to_str().unwrap(), "--controllers", "levee", "--json", "--report"];
    let out = levee(&[&args[..], &[report.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &v["controllers"]["levee"]["traffic_guard"];
    assert!(g["attacks"][0]["detect_secs"].as_f64().is_some_and(|d| d <= 15.0), "{v}");
    assert!(g["false_positive_ratio"].as_f64().is_some_and(|f| f <= 0.001), "{v}");
    let html = std::fs::read_to_string(&report).unwrap();
    let mitigations = format!("{} Mitigations, {} renewed", g["mitigations"], g["renewals"]);
    assert!(html.contains("levee's TrafficGuard") && html.contains(&mitigations), "{mitigations} not in the report");

    let out = levee(&[&args[..], &[report.to_str().unwrap(), "--no-traffic-guard"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["controllers"]["levee"].get("traffic_guard").is_none(), "{v}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let out = levee(&["simulate", "--scenario", "no-such-thing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no built-in scenario") && !err.contains("panicked"), "{err}");

    let out = levee(&["simulate", "--scenario", "nasa", "--traffic-guard"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no trafficGuard section") && !err.contains("panicked"), "{err}");

    let bad = std::env::temp_dir().join(format!("levee-bad-trace-{}.csv", std::process::id()));
    std::fs::write(&bad, "timestamp,count\n0,1\nnot-a-time,2\n").unwrap();
    let out = levee(&["backtest", "--trace", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(":3:") && !err.contains("panicked"), "{err}");
    std::fs::remove_file(bad).ok();

    // Nothing listens on port 1 of loopback.
    let out = levee(&["status", "--operator", "http://127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot reach the operator at http://127.0.0.1:1/status"), "{err}");
}

#[test]
fn backtest_json_on_the_nasa_trace() {
    let trace = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/traces/nasa_http_1995_07_1min.csv");
    let out = levee(&["backtest", "--trace", trace, "--horizon", "15m", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["mape", "mase", "coverage"] {
        assert!(v[key].is_number(), "{key}: {v}");
    }
    // Beats the seasonal-naive forecast, and the band is calibrated to within 5 points.
    assert!(v["mase"].as_f64().unwrap() < 1.0, "{v}");
    let (cov, nominal) = (v["coverage"].as_f64().unwrap(), v["nominal_coverage"].as_f64().unwrap());
    assert!((cov - nominal).abs() < 0.05, "{v}");
    assert_eq!(v["baseline"], "seasonal-naive", "{v}");
}

#[test]
fn backtest_scores_a_trace_shorter_than_a_day() {
    // About an hour of per-second arrivals: no day to compare with, so MASE is against the
    // last value seen and scoring starts after half an hour.
    let trace = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/traces/azure_llm_inference_2023_code_1s.csv");
    let out = levee(&["backtest", "--trace", trace, "--horizon", "1m", "--step", "10s", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["baseline"], "naive", "{v}");
    assert!(v["points"].as_u64().unwrap() > 100 && v["mase"].as_f64().unwrap().is_finite(), "{v}");
}

#[test]
fn crd_check_passes_on_the_committed_files() {
    let out = levee(&["crd", "--check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn nab_scores_and_writes_checkable_detections() {
    let out_file = std::env::temp_dir().join(format!("levee-nab-{}.csv", std::process::id()));
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/nab");
    let out = levee(&["nab", "--data", data, "--json", "--detections", out_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["standard", "low_fp", "low_fn"] {
        let s = v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
        assert!((-200.0..=100.0).contains(&s), "{key} = {s}");
    }
    // The default detector keeps the score the project reports on the shipped subset.
    assert!(v["standard"].as_f64().unwrap() >= 60.0, "{v}");
    let csv = std::fs::read_to_string(&out_file).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("file,timestamp"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len() as u64, v["detections"].as_u64().unwrap());
    assert!(rows.iter().all(|r| r.contains(".csv,") && r.split(',').nth(1).is_some_and(|t| t.len() >= 19)), "{rows:?}");
    std::fs::remove_file(out_file).ok();

    let robust = levee(&["nab", "--data", data, "--json", "--detector", "robust"]);
    assert!(robust.status.success(), "{}", String::from_utf8_lossy(&robust.stderr));
    let r: serde_json::Value = serde_json::from_slice(&robust.stdout).unwrap();
    assert!(r["standard"].as_f64().unwrap() > 0.0, "better than the null detector: {r}");
    let bad = levee(&["nab", "--data", data, "--levels", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--levels must be at least 2"));
}

#[test]
fn nab_scores_the_files_a_directory_has_of_a_larger_windows_file() {
    // NAB's full windows.json names 58 files; a directory may hold some of them. Here it holds
    // one (with blank lines at its end, as an editor leaves them) of the two named.
    let dir = std::env::temp_dir().join(format!("levee-nab-subset-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("realTraffic")).unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/nab/realTraffic/speed_6005.csv");
    let csv = std::fs::read_to_string(shipped).unwrap();
    std::fs::write(dir.join("realTraffic/speed_6005.csv"), format!("{csv}\n\n")).unwrap();
    let windows = dir.join("windows.json");
    std::fs::write(
        &windows,
        r#"{"realTraffic/speed_6005.csv": [["2015-09-16 18:40:00.000000", "2015-09-17 16:24:00.000000"]],
            "realKnownCause/nyc_taxi.csv": [["2014-11-01 19:00:00.000000", "2014-11-02 12:30:00.000000"]]}"#,
    )
    .unwrap();
    let args = ["nab", "--data", dir.to_str().unwrap(), "--windows", windows.to_str().unwrap(), "--json"];
    let out = levee(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 of the files") && err.contains("realKnownCause/nyc_taxi.csv"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["files"].as_u64(), v["windows"].as_u64()), (Some(1), Some(1)), "{v}");

    // Not one of the named files there: an error that says so.
    std::fs::remove_file(dir.join("realTraffic/speed_6005.csv")).unwrap();
    let out = levee(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("none of the 2 files"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
