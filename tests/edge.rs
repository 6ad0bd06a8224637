//! `levee edge` with real traffic on loopback: breakers, hostile clients, Mitigations applied
//! with kubectl, and the whole loop (edge reports → operator detection → Mitigation → edge).

mod common;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::{
    Operator, TestNs,
    edge::{Edge, PageReceiver, Upstream, kubectl, load},
    eventually,
};
use levee::api::{Mitigation, TrafficGuard};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn status_of(url: &str) -> impl Future<Output = u16> + use<> {
    let url = url.to_owned();
    async move { reqwest::get(url).await.map_or(0, |r| r.status().as_u16()) }
}

#[tokio::test]
async fn a_breaker_opens_on_a_failing_upstream_and_recovers_when_it_heals() {
    let up = Upstream::start().await;
    let edge = Edge::start(&up.url(), &["--standalone"]).await;
    assert_eq!(status_of(&edge.url("/")).await, 200);

    up.failing.store(true, Ordering::Relaxed);
    // Half the calls of the window failing (with at least five calls) or five failures in a
    // row open it; from then on calls never reach the upstream.
    let mut failures = 0;
    while status_of(&edge.url("/")).await == 500 {
        failures += 1;
        assert!(failures <= 5, "still closed after {failures} failures");
    }
    assert_eq!(failures, 4, "1 success + 4 failures: 80% of 5 calls failed");
    let served = up.served.load(Ordering::Relaxed);
    let res = reqwest::get(edge.url("/")).await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    for _ in 0..20 {
        assert_eq!(status_of(&edge.url("/")).await, 503);
    }
    assert_eq!(up.served.load(Ordering::Relaxed), served, "an open breaker sends nothing upstream");
    assert_eq!(edge.metric("levee_edge_breaker_open").await, 1.0);

    // Healed: after openFor (5 s) probes go through and the breaker closes.
    up.failing.store(false, Ordering::Relaxed);
    let healed = Instant::now();
    eventually(Duration::from_secs(10), "breaker closes", || status_of(&edge.url("/")), |s| *s == 200).await;
    assert!(healed.elapsed() >= Duration::from_secs(3), "stayed open for about openFor");
    for _ in 0..20 {
        assert_eq!(status_of(&edge.url("/")).await, 200);
    }
    assert_eq!(edge.metric("levee_edge_breaker_open").await, 0.0);
}

/// Writes raw bytes and returns the status line of the answer ("" when the edge just closed).
async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.map_or(0, |r| r.unwrap_or(0));
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn hostile_input_gets_http_errors_and_never_crashes_the_edge() {
    let up = Upstream::start().await;
    let mut edge =
        Edge::start(&up.url(), &["--standalone", "--header-timeout", "1s", "--max-header-bytes", "8192"]).await;
    let p = edge.port;

    assert!(raw(p, b"\x00\xff\x13garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert!(raw(p, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert!(raw(p, b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw(p, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let many: String = (0..500).map(|i| format!("X-{i}: v\r\n")).collect();
    let status = raw(p, format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    let conflicting = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello";
    assert!(raw(p, conflicting).await.starts_with("HTTP/1.1 400"));
    let bad_chunk = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n";
    let status = raw(p, bad_chunk).await;
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.1 502"), "{status}");

    // Slow clients: 200 connections that never finish their headers are dropped after the
    // header timeout, and well-behaved clients are served all along.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", p)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(s);
    }
    for _ in 0..20 {
        assert_eq!(status_of(&edge.url("/")).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 512];
        // Closed (0 bytes) or answered with 408 and closed: either way, not held open.
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "every slow client was disconnected");

    assert!(edge.is_running());
    assert_eq!(status_of(&edge.admin("/healthz")).await, 200);
    assert_eq!(status_of(&edge.url("/")).await, 200);
}

#[tokio::test]
async fn a_mitigation_applied_with_kubectl_takes_effect_within_2s_and_lapses_at_its_ttl() {
    let ns = TestNs::new("edge-kubectl").await;
    let up = Upstream::start().await;
    let edge = Edge::start(&up.url(), &["--namespace", &ns.name, "--pool", "public", "--trusted-hops", "1"]).await;
    let client = reqwest::Client::new();
    let from = |ip: &'static str| {
        let c = client.clone();
        let url = edge.url("/");
        async move { c.get(url).header("x-forwarded-for", ip).send().await.map_or(0, |r| r.status().as_u16()) }
    };
    assert_eq!(from("198.51.100.7").await, 200);

    let ttl = 8;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(ttl);
    let manifest = format!(
        r#"apiVersion: levee.dev/v1alpha1
kind: Mitigation
metadata: {{name: block-one, namespace: {ns}}}
spec:
  edgePool: public
  match: {{ip: 198.51.100.7}}
  action: Block
  expiresAt: "{exp}"
  reason: written by hand in a test
"#,
        ns = ns.name,
        exp = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let applied = Instant::now();
    kubectl(&["apply", "-f", "-"], Some(&manifest)).await;
    eventually(Duration::from_secs(2), "mitigation in force", || from("198.51.100.7"), |s| *s == 403).await;
    let took = applied.elapsed();
    assert_eq!(from("198.51.100.8").await, 200, "only the matched source");
    eprintln!("mitigation in force {took:?} after kubectl apply returned");

    // It lapses at expiresAt, even before anything deletes it.
    let until_expiry = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_expiry.saturating_sub(Duration::from_millis(1500))).await;
    assert_eq!(from("198.51.100.7").await, 403, "still in force shortly before expiry");
    eventually(Duration::from_secs(4), "mitigation lapses", || from("198.51.100.7"), |s| *s == 200).await;
    assert!(ns.api::<Mitigation>().get_opt("block-one").await.unwrap().is_some(), "lapsed, not deleted");
}

/// A TrafficGuard `name` for the pool of the same name; `extra` is more of its spec, indented
/// two spaces (its own `mitigation` replaces the default one).
fn guard_yaml(ns: &str, name: &str, mode: &str, extra: &str) -> String {
    let mitigation = if extra.contains("  mitigation:") { "" } else { "  mitigation: {ttl: 2m, rateLimitMultiple: 2}" };
    format!(
        r#"apiVersion: levee.dev/v1alpha1
kind: TrafficGuard
metadata: {{name: {name}, namespace: {ns}}}
spec:
  edgePool: {name}
  aggregationKeys: [Ip, Prefix, Asn, Country]
  mode: {mode}
  allowlist: ["10.0.0.0/8"]
{mitigation}
{extra}
"#
    )
}

/// A namespace with an operator, a TrafficGuard in `mode` for pool `public` (with `spec` more
/// of its spec), an upstream and an edge in front of it that reports to the operator (with
/// `extra` arguments). The operator's pause ConfigMap would be in the namespace too.
async fn guarded_edge(prefix: &str, mode: &str, spec: &str, extra: &[&str]) -> (TestNs, Operator, Upstream, Edge) {
    let ns = TestNs::new(prefix).await;
    let op = Operator::start_with(&ns.name, &["--control-namespace", &ns.name]).await;
    ns.create_yaml(&guard_yaml(&ns.name, "public", mode, spec)).await.unwrap();
    let up = Upstream::start().await;
    let mut args = vec!["--namespace", &ns.name, "--pool", "public", "--trusted-hops", "1"];
    let url = op.url("");
    args.extend(["--operator-url", &url]);
    args.extend(extra);
    let edge = Edge::start(&up.url(), &args).await;
    (ns, op, up, edge)
}

/// Normal clients for `secs` from `base`.0..5, and a flood from 203.0.113.9 after `flood_after`.
async fn traffic(edge: &Edge, secs: f64, flood_after: f64) -> (Vec<common::edge::Tally>, common::edge::Tally) {
    let regulars: Vec<_> =
        (0..5).map(|i| tokio::spawn(load(edge.url("/"), format!("198.51.100.{}", 10 + i), 20.0, secs))).collect();
    let url = edge.url("/");
    let flood = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(flood_after)).await;
        load(url, "203.0.113.9".into(), 300.0, secs - flood_after).await
    });
    let mut tallies = Vec::new();
    for r in regulars {
        tallies.push(r.await.unwrap());
    }
    (tallies, flood.await.unwrap())
}

/// [`guarded_edge`] in Enforce mode whose guard pages a webhook on loopback when it mitigates.
async fn paging_guarded_edge(prefix: &str) -> (TestNs, Operator, Upstream, Edge, PageReceiver) {
    let page = "  page: {when: Mitigation, routeSecretRef: {name: pager, key: route}}";
    let (ns, op, up, edge) = guarded_edge(prefix, "Enforce", page, &[]).await;
    let pager = PageReceiver::start().await;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: pager, namespace: {}}}\nstringData: {{route: '{}'}}\n",
        ns.name,
        pager.url()
    );
    ns.create_yaml(&secret).await.unwrap();
    (ns, op, up, edge, pager)
}

/// The guard `public`'s open page, once its status holds one.
async fn open_page(ns: &TestNs) -> levee::api::OpenPage {
    let open = || async { ns.api::<TrafficGuard>().get("public").await.unwrap().status.and_then(|s| s.open_page) };
    eventually(Duration::from_secs(10), "the open page in status", open, |o| o.is_some()).await.unwrap()
}

#[tokio::test]
async fn a_flooding_source_gets_429s_within_seconds_while_others_keep_succeeding() {
    let (ns, op, _up, edge, pager) = paging_guarded_edge("edge-flood").await;

    // 15 s of normal traffic to learn from, then 15 s with a flood at 15× a regular client.
    let onset = Instant::now() + Duration::from_secs(15);
    let (regulars, flood) = traffic(&edge, 30.0, 15.0).await;
    for (i, t) in regulars.iter().enumerate() {
        assert_eq!((t.limited, t.other), (0, 0), "regular client {i} was limited: {t:?}");
        assert!(t.ok >= 500, "{t:?}");
    }
    let first = flood.first_limited_after.expect("the flood was never limited");
    eprintln!("flood limited {first:.1}s after it began; {flood:?}");
    assert!(first <= 5.0, "limited only after {first:.1}s");
    assert!(flood.limited > flood.ok, "{flood:?}");

    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    let m = ms.items.iter().find(|m| m.spec.match_.ip.as_deref() == Some("203.0.113.9")).expect("a mitigation for it");
    let ev = m.spec.evidence.as_ref().unwrap();
    assert_eq!(ev.detector, "single-source");
    assert!(ev.observed_rate > 100.0 && ev.baseline_rate < 50.0, "{ev:?}");
    assert_eq!(m.spec.offence, 0);
    assert!(ms.items.iter().all(|m| m.spec.match_.ip.as_deref() != Some("198.51.100.10")));
    let g = ns.api::<TrafficGuard>().get("public").await.unwrap();
    let status = g.status.unwrap();
    assert!(status.active_mitigations >= Some(1), "{status:?}");
    // The latest detection may be a later one (the total dropping back once the flood is
    // limited); the Event of the mitigation says what happened to the flooder.
    assert!(status.last_detection.is_some(), "{status:?}");
    assert_eq!(status.edges_reporting, Some(1));
    let events = ns.api::<k8s_openapi::api::events::v1::Event>().list(&Default::default()).await.unwrap();
    let notes: Vec<&str> = events.items.iter().filter_map(|e| e.note.as_deref()).collect();
    assert!(notes.iter().any(|n| n.contains("203.0.113.9") && n.contains("single-source")), "{notes:#?}");

    // The on-call was paged once, with the explanation, within a minute of onset (the
    // incident's acceptance bar), and the guard says so in an Event.
    let pages = pager.pages.lock().unwrap().clone();
    assert_eq!(pages.len(), 1, "one page for one incident: {pages:#?}");
    let (at, body) = &pages[0];
    let after = at.saturating_duration_since(onset).as_secs_f64();
    eprintln!("paged {after:.1}s after the flood began");
    assert!(after <= 60.0, "paged {after:.1}s after onset");
    assert_eq!(body["event"], "levee.page");
    let summary = body["summary"].as_str().unwrap();
    assert!(summary.contains("203.0.113.9") && summary.contains(&format!("{}/public", ns.name)), "{summary}");
    let m0 = &body["details"]["mitigations"][0];
    assert_eq!(m0["match"]["ip"], "203.0.113.9");
    assert_eq!(m0["evidence"]["detector"], "single-source");
    assert!(body["details"]["inspect"].as_str().unwrap().contains("get mitigations"), "{body}");
    assert!(notes.iter().any(|n| n.starts_with("paged the on-call")), "{notes:#?}");

    // The operator restarts mid-incident: status keeps the open page for the next one.
    let open = open_page(&ns).await;
    assert_eq!(open.dedup_key, body["dedup_key"].as_str().unwrap());
    assert_eq!(open.reason, "Incident");
    assert!(open.summary.contains("203.0.113.9"), "{open:?}");
    assert!(op.stop().await);
    let _op = Operator::start(&ns.name).await;

    // The on-call lifts the mitigations once the flood is over: the incident ends, and its
    // page is resolved under the same dedup key, by the operator that did not send it.
    let mitigations = ns.api::<Mitigation>();
    mitigations.delete_collection(&Default::default(), &Default::default()).await.unwrap();
    let both =
        eventually(Duration::from_secs(15), "the page resolved", || async { pager.bodies() }, |p| p.len() >= 2).await;
    assert_eq!(both.len(), 2, "{both:#?}");
    assert_eq!(both[1]["event"], "levee.resolve");
    assert_eq!(both[1]["dedup_key"], both[0]["dedup_key"]);
    let summary = both[1]["summary"].as_str().unwrap();
    assert!(summary.contains("incident over after"), "{summary}");
    let closed = || async { ns.api::<TrafficGuard>().get("public").await.unwrap().status.and_then(|s| s.open_page) };
    eventually(Duration::from_secs(10), "no page left open in status", closed, Option::is_none).await;
}

#[tokio::test]
async fn deleting_a_guard_with_its_page_open_resolves_the_page() {
    let (ns, _op, _up, edge, pager) = paging_guarded_edge("edge-page-delete").await;
    let (_, flood) = traffic(&edge, 25.0, 15.0).await;
    assert!(flood.first_limited_after.is_some(), "the flood was never limited: {flood:?}");
    let open = open_page(&ns).await;

    ns.api::<TrafficGuard>().delete("public", &Default::default()).await.unwrap();
    let both =
        eventually(Duration::from_secs(15), "the page resolved", || async { pager.bodies() }, |p| p.len() >= 2).await;
    assert_eq!(both[1]["event"], "levee.resolve", "{both:#?}");
    assert_eq!(both[1]["dedup_key"], open.dedup_key.as_str());
    let summary = both[1]["summary"].as_str().unwrap();
    assert!(summary.contains("TrafficGuard") && summary.contains("was deleted with this page open"), "{summary}");
}

#[tokio::test]
async fn a_mitigation_whose_source_keeps_flooding_is_renewed_instead_of_lapsing() {
    // Mitigations of ten seconds: without renewal, the flood's would lapse mid-flood.
    let spec = "  mitigation: {ttl: 10s, escalation: [2m], rateLimitMultiple: 2}";
    let (ns, _op, _up, edge) = guarded_edge("edge-renew", "Enforce", spec, &[]).await;
    let (_, flood) = traffic(&edge, 35.0, 15.0).await;
    let first = flood.first_limited_after.expect("the flood was never limited");
    assert!(first <= 5.0, "limited only after {first:.1}s");

    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    let m = ms.items.iter().find(|m| m.spec.match_.ip.as_deref() == Some("203.0.113.9")).expect("a mitigation for it");
    assert!(m.spec.offence >= 1, "{:?}", m.spec);
    let left = m.spec.expires_at.0.as_second() - chrono::Utc::now().timestamp();
    assert!(left > 60, "renewed with the escalated TTL of 2m, {left}s left");
    let renewed = common::event_notes(&ns, "Renewed").await;
    eprintln!("{renewed:#?}");
    assert!(
        renewed.iter().any(|n| n.contains(&m.metadata.name.clone().unwrap()) && n.contains("still refuse")),
        "{renewed:#?}"
    );
    // Renewed before it lapsed: it was never made afresh, which would be a second Mitigated event.
    let made = common::event_notes(&ns, "Mitigated").await.into_iter().filter(|n| n.contains("203.0.113.9"));
    assert_eq!(made.count(), 1, "the flooder's mitigation was made again after lapsing");
}

#[tokio::test]
async fn prometheus_history_seeds_baselines_so_a_usually_heavy_source_is_not_taken_for_a_flood_and_a_day_of_it_gives_a_daily_shape()
 {
    // Prometheus says 203.0.113.9 usually sends 250 req/s, and the pool 350 in all. The
    // same traffic as the flood test (where it is limited within seconds) now comes from a
    // source doing what it always does.
    let query = r#"label_replace(vector(250), "ip", "203.0.113.9", "", "") or vector(350)"#;
    let baseline = format!("  baseline: {{source: Prometheus, window: 10m, prometheusQuery: '{query}'}}");
    let (ns, _op, _up, edge) = guarded_edge("edge-seeded", "Enforce", &baseline, &[]).await;
    // A second guard whose query parses but fails in Prometheus: an Event says why, and
    // nothing stops. (One that does not parse never gets this far: the guard is invalid.)
    let bad = r#"  baseline: {source: Prometheus, window: 10m, prometheusQuery: 'label_replace(vector(1), "a", "b", "c", "(")'}"#;
    ns.create_yaml(&guard_yaml(&ns.name, "private", "Enforce", bad)).await.unwrap();
    // A third whose history spans a day, with a daily cycle peaking at 06:00 UTC: its
    // baselines follow the time of day.
    let daily = r#"  baseline: {source: Prometheus, window: 24h, prometheusQuery: '100 + 80 * sin(vector(2 * pi() * time() / 86400))'}"#;
    ns.create_yaml(&guard_yaml(&ns.name, "daily", "Enforce", daily)).await.unwrap();

    let (regulars, heavy) = traffic(&edge, 25.0, 10.0).await;
    assert!(regulars.iter().all(|t| t.limited == 0 && t.other == 0), "{regulars:?}");
    assert_eq!((heavy.limited, heavy.other), (0, 0), "a source as heavy as usual is not limited: {heavy:?}");
    assert!(heavy.ok > 3000, "{heavy:?}");
    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    assert!(ms.items.is_empty(), "no mitigations: {:?}", ms.items.iter().map(|m| &m.spec.reason).collect::<Vec<_>>());

    let events = ns.api::<k8s_openapi::api::events::v1::Event>().list(&Default::default()).await.unwrap();
    let note = |reason: &str, object: &str| {
        events
            .items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
            })
            .and_then(|e| e.note.clone())
            .unwrap_or_else(|| panic!("no {reason} Event for {object}"))
    };
    let seeded = note("BaselineSeeded", "public");
    assert!(seeded.contains("the total") && seeded.contains("1 Ip keys"), "{seeded}");
    assert!(seeded.contains("no daily shape"), "ten minutes of history: {seeded}");
    let daily = note("BaselineSeeded", "daily");
    // The peak falls between the quarter hours that start at 05:45 and at 06:00.
    assert!(daily.contains("a daily shape, busiest at 05:45 UTC") || daily.contains("busiest at 06:00 UTC"), "{daily}");
    let failed = note("BaselineSeedFailed", "private");
    assert!(failed.contains("invalid regular expression") && failed.contains("retrying"), "{failed}");
}

#[tokio::test]
async fn a_shadow_guard_counts_what_it_would_limit_and_limits_nothing() {
    // Ten-second mitigations, so that the flood outlasts the first: a shadow mitigation is
    // renewed as an enforced one would be, from what its edges would have refused.
    let spec = "  mitigation: {ttl: 10s, escalation: [2m], rateLimitMultiple: 2}";
    let (ns, _op, _up, edge) = guarded_edge("edge-shadow", "Shadow", spec, &[]).await;
    let (regulars, flood) = traffic(&edge, 33.0, 13.0).await;
    assert!(regulars.iter().all(|t| t.limited == 0 && t.other == 0));
    assert_eq!((flood.limited, flood.other), (0, 0), "shadow mode limits nothing: {flood:?}");
    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    let m = ms.items.iter().find(|m| m.spec.match_.ip.as_deref() == Some("203.0.113.9")).expect("a shadow mitigation");
    assert_eq!(m.spec.mode, levee::api::Mode::Shadow);
    assert!(edge.metric("levee_edge_shadow_limited_total").await > 100.0);
    let renewed = common::event_notes(&ns, "Renewed").await;
    assert!(renewed.iter().any(|n| n.contains("would still refuse")), "{renewed:#?}");
    let made =
        common::event_notes(&ns, "WouldMitigate").await.into_iter().filter(|n| n.contains("203.0.113.9")).count();
    assert_eq!(made, 1, "the shadow mitigation lapsed and was made again: {renewed:#?}");
}

#[tokio::test]
async fn a_paused_guard_limits_nothing_new_and_says_what_it_would_have_done() {
    let (ns, _op, _up, edge) = guarded_edge("edge-pause", "Enforce", "", &[]).await;
    let pause = levee::operator::pause::Paused { reason: "drill".into(), since: None, until: None };
    let cm = pause.to_configmap(&ns.name);
    ns.api::<k8s_openapi::api::core::v1::ConfigMap>().create(&Default::default(), &cm).await.unwrap();
    let (regulars, flood) = traffic(&edge, 25.0, 12.0).await;
    assert!(regulars.iter().all(|t| t.limited == 0 && t.other == 0));
    assert_eq!((flood.limited, flood.other), (0, 0), "paused, an Enforce guard limits nothing: {flood:?}");
    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    let m = ms.items.iter().find(|m| m.spec.match_.ip.as_deref() == Some("203.0.113.9")).expect("a mitigation");
    assert_eq!(m.spec.mode, levee::api::Mode::Shadow, "made in Shadow mode while paused");
    assert!(edge.metric("levee_edge_shadow_limited_total").await > 100.0);
}

#[tokio::test]
async fn a_distributed_surge_is_limited_by_its_aggregate_while_regular_clients_keep_succeeding() {
    // Regular clients in a prefix of ASN 64500 (DE). The surge: sixty addresses of an ASN never
    // seen before (BR), each at half a regular client's rate, and forty more through ASN 64500
    // itself, each from a /24 of its own, none of which stands out.
    let table = std::env::temp_dir().join(format!("levee-prefixes-{}.csv", std::process::id()));
    std::fs::write(&table, "198.51.0.0/16,64500,DE\n203.0.113.0/24,64666,BR\n").unwrap();
    let (ns, _op, _up, edge) =
        guarded_edge("edge-surge", "Enforce", "", &["--prefix-table", table.to_str().unwrap()]).await;
    // Onset after the detector's first 30 s: what came within 30 s of a surge counts as
    // part of it, so only clients seen before then are established.
    let (secs, onset) = (60.0, 35.0);
    let regulars: Vec<_> =
        (0..10).map(|i| tokio::spawn(load(edge.url("/"), format!("198.51.100.{}", 10 + i), 10.0, secs))).collect();
    let attack = |ip: String| {
        let url = edge.url("/");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(onset)).await;
            load(url, ip, 5.0, secs - onset).await
        })
    };
    let attackers: Vec<_> = (1..=60).map(|i| attack(format!("203.0.113.{i}"))).collect();
    let through_isp: Vec<_> = (1..=40).map(|i| attack(format!("198.51.{i}.7"))).collect();
    for r in regulars {
        let t = r.await.unwrap();
        assert_eq!((t.limited, t.other), (0, 0), "a regular client was limited: {t:?}");
    }
    let tally = |tallies: Vec<common::edge::Tally>| {
        let (mut sent, mut limited, mut first) = (0, 0, f64::MAX);
        for t in tallies {
            sent += t.ok + t.limited + t.other;
            limited += t.limited;
            first = first.min(t.first_limited_after.unwrap_or(f64::MAX));
        }
        (sent, limited, first)
    };
    let mut done = Vec::new();
    for a in attackers {
        done.push(a.await.unwrap());
    }
    let (sent, limited, first) = tally(done);
    let mut done = Vec::new();
    for a in through_isp {
        done.push(a.await.unwrap());
    }
    let (isp_sent, isp_limited, isp_first) = tally(done);
    eprintln!("surge limited {first:.1}s after onset; {limited} of {sent} attack requests refused");
    eprintln!("through the shared ISP: limited {isp_first:.1}s after onset; {isp_limited} of {isp_sent} refused");
    assert!(first <= 15.0, "limited only after {first:.1}s");
    assert!(limited * 4 > sent * 3, "only {limited} of {sent} refused");
    assert!(isp_first <= 20.0, "the part through the shared ISP limited only after {isp_first:.1}s");
    assert!(isp_limited * 2 > isp_sent, "only {isp_limited} of {isp_sent} refused through the shared ISP");
    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    let surge: Vec<&Mitigation> = ms
        .items
        .iter()
        .filter(|m| m.spec.evidence.as_ref().is_some_and(|e| e.detector == "distributed-surge"))
        .collect();
    assert!(!surge.is_empty(), "no distributed-surge mitigation: {:#?}", ms.items);
    // The /24s the part through the shared ISP comes from: each holds one attacker only.
    let isp_attack_prefixes: Vec<String> = (1..=40).map(|i| format!("198.51.{i}.0/24")).collect();
    for m in &surge {
        let mm = &m.spec.match_;
        let names_attack = mm.prefix.as_deref() == Some("203.0.113.0/24")
            || mm.prefix.as_ref().is_some_and(|p| isp_attack_prefixes.contains(p))
            || mm.asn == Some(64666)
            || mm.country.as_deref() == Some("BR")
            || mm.ip.as_deref().is_some_and(|ip| ip.starts_with("203.0.113."))
            || (mm.asn == Some(64500) && mm.except_prefixes == ["198.51.100.0/24"]);
        assert!(names_attack, "a mitigation names a regular aggregate: {mm:?}");
    }
    let isp = surge.iter().find(|m| m.spec.match_.asn == Some(64500)).expect("the shared ISP is limited");
    assert!(isp.spec.reason.contains("outside its 1 established prefixes"), "{}", isp.spec.reason);
    std::fs::remove_file(table).ok();
}

#[tokio::test]
async fn a_crowd_of_new_users_from_the_usual_network_is_let_in_and_told_in_an_event() {
    // Regular clients in a prefix of ASN 64500; then a hundred new users of the same ISP, each
    // from a /24 of its own and at half a regular client's pace: six times the traffic, from
    // addresses never seen, through the network the regular clients use.
    let table = std::env::temp_dir().join(format!("levee-prefixes-crowd-{}.csv", std::process::id()));
    std::fs::write(&table, "198.51.0.0/16,64500,DE\n").unwrap();
    let (ns, _op, _up, edge) =
        guarded_edge("edge-crowd", "Enforce", "", &["--prefix-table", table.to_str().unwrap()]).await;
    let (secs, onset) = (60.0, 35.0);
    let regulars: Vec<_> =
        (0..10).map(|i| tokio::spawn(load(edge.url("/"), format!("198.51.100.{}", 10 + i), 10.0, secs))).collect();
    let crowd: Vec<_> = (1..=100)
        .map(|i| {
            let url = edge.url("/");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(onset)).await;
                load(url, format!("198.51.{i}.7"), 5.0, secs - onset).await
            })
        })
        .collect();
    for c in regulars.into_iter().chain(crowd) {
        let t = c.await.unwrap();
        assert_eq!((t.limited, t.other), (0, 0), "a client was refused: {t:?}");
    }
    let ms = ns.api::<Mitigation>().list(&Default::default()).await.unwrap();
    assert!(ms.items.is_empty(), "the crowd was mitigated: {:#?}", ms.items);
    let crowds = common::event_notes(&ns, "Crowd").await;
    assert_eq!(crowds.len(), 1, "one crowd, one Event: {crowds:#?}");
    assert!(crowds[0].contains("let in as demand"), "{}", crowds[0]);
    std::fs::remove_file(table).ok();
}

#[tokio::test]
async fn a_daily_shape_learnt_before_a_restart_is_resumed() {
    // What an operator that had learnt the pool's daily shape from edge reports wrote before it
    // stopped: the shape, under the guard loop's field manager.
    let ns = TestNs::new("guard-shape").await;
    ns.create_yaml(&guard_yaml(&ns.name, "public", "Enforce", "")).await.unwrap();
    let shape: Vec<f64> = (0..96)
        .map(|i| (1000.0 * (1.0 + 0.5 * (f64::from(i) / 96.0 * std::f64::consts::TAU).sin())).round() / 1000.0)
        .collect();
    let api: kube::Api<TrafficGuard> = ns.api();
    let before = serde_json::json!({
        "apiVersion": "levee.dev/v1alpha1", "kind": "TrafficGuard", "status": { "dailyShape": shape }
    });
    let params = kube::api::PatchParams::apply(levee::operator::guard::FIELD_MANAGER).force();
    api.patch_status("public", &params, &kube::api::Patch::Apply(before)).await.unwrap();

    // The new operator writes the guard's status under the same manager: a shape it had not
    // resumed would be left out, and so removed.
    let _op = Operator::start_with(&ns.name, &["--control-namespace", &ns.name]).await;
    let written = || async { api.get("public").await.unwrap().status.unwrap_or_default() };
    let s =
        eventually(Duration::from_secs(15), "status from the operator", written, |s| s.edges_reporting.is_some()).await;
    assert_eq!(s.daily_shape, shape);
}
