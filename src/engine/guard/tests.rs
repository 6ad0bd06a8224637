use super::*;

/// One second of traffic: (ip, asn, country, requests).
fn sample(sources: &[(String, u32, &str, u64)], new_sources: u64) -> Sample {
    let mut top: BTreeMap<Dimension, BTreeMap<String, u64>> = BTreeMap::new();
    let mut prefix_asns = HashMap::new();
    let mut requests = 0;
    for (ip, asn, country, n) in sources {
        requests += n;
        let prefix = crate::edge::source::prefix_of(ip.parse().unwrap()).to_string();
        prefix_asns.insert(prefix.clone(), asn.to_string());
        for (d, k) in [
            (Dimension::Ip, ip.clone()),
            (Dimension::Prefix, prefix),
            (Dimension::Asn, asn.to_string()),
            (Dimension::Country, (*country).to_owned()),
        ] {
            *top.entry(d).or_default().entry(k).or_default() += n;
        }
    }
    let top = top
        .into_iter()
        .map(|(d, m)| {
            let mut v: Vec<(String, u64)> = m.into_iter().collect();
            v.sort_by_key(|b| std::cmp::Reverse(b.1));
            v.truncate(1024);
            (d, v)
        })
        .collect();
    Sample { secs: 1.0, requests: requests as f64, new_source_requests: new_sources as f64, top, prefix_asns, at: None }
}

/// 40 regular clients in 10 prefixes, 4 ASNs and 2 countries, 15..25 req/s each. A prefix
/// belongs to one ASN and one country.
fn regulars(t: u64) -> Vec<(String, u32, &'static str, u64)> {
    (0..40u64)
        .map(|i| {
            let jitter = (i * 7919 + t * 104_729) % 11;
            (
                format!("198.51.{}.{}", i % 10, 10 + i),
                64500 + (i % 10 % 4) as u32,
                if i % 2 == 0 { "DE" } else { "FR" },
                15 + jitter,
            )
        })
        .collect()
}

/// Whether `f` names one of the regulars' addresses, prefixes, ASNs or countries.
fn names_a_regular(f: &Finding) -> bool {
    f.key.starts_with("198.51.") || ["64500", "64501", "64502", "64503", "DE", "FR"].contains(&f.key.as_str())
}

/// A detector that has watched the regulars for `secs` samples.
fn warmed_up(secs: u64) -> GuardDetector {
    let mut d = detector();
    for t in 0..secs {
        d.observe(&sample(&regulars(t), 0));
    }
    d
}

fn detector() -> GuardDetector {
    GuardDetector::new(Tuning::new(Sensitivity::Medium, 3600.0, 1.0), vec!["10.0.0.0/8".parse().unwrap()])
}

#[test]
fn normal_traffic_raises_nothing() {
    let mut d = detector();
    for t in 0..900 {
        let obs = d.observe(&sample(&regulars(t), 0));
        assert!(obs.findings.is_empty() && !obs.surge && !obs.demand_rise, "t={t}: {}", obs.summary());
    }
}

#[test]
fn a_new_flooder_is_named_within_two_samples() {
    let mut d = warmed_up(120);
    let mut named_at = None;
    for t in 120..130 {
        let mut s = regulars(t);
        s.push(("203.0.113.9".into(), 64666, "US", 600));
        let obs = d.observe(&sample(&s, if t == 120 { 600 } else { 0 }));
        let flooders: Vec<&Finding> = obs.findings.iter().filter(|f| f.kind == Kind::SingleSource).collect();
        if !flooders.is_empty() {
            assert!(flooders.iter().all(|f| f.key == "203.0.113.9" && f.dimension == Dimension::Ip), "{flooders:?}");
            assert!(flooders[0].ratio > 5.0);
            named_at.get_or_insert(t);
        }
    }
    assert_eq!(named_at, Some(121), "confirmed on its second hot sample");
}

#[test]
fn a_flood_seconds_after_the_detector_starts_names_only_the_flooder() {
    // Five clients at 20 req/s in one /24 (no prefix table: no ASN or country), then after
    // 15 s a flood from another prefix. The clients are younger than the window within which
    // aggregates count as having come with a surge, yet they are the baseline itself.
    // The edge reports what it lets through: the flooder at its limit once it is named.
    let second = |t: u64, flood: Option<u64>| {
        let mut ips: Vec<(String, u64)> = (10..15).map(|i| (format!("198.51.100.{i}"), 18 + (t + i) % 5)).collect();
        if let Some(n) = flood {
            ips.push(("203.0.113.9".into(), n));
        }
        let mut prefixes: BTreeMap<String, u64> = BTreeMap::new();
        for (ip, n) in &ips {
            *prefixes.entry(crate::edge::source::prefix_of(ip.parse().unwrap()).to_string()).or_default() += n;
        }
        let mut prefixes: Vec<(String, u64)> = prefixes.into_iter().collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.1));
        ips.sort_by_key(|p| std::cmp::Reverse(p.1));
        Sample {
            secs: 1.0,
            requests: ips.iter().map(|i| i.1 as f64).sum(),
            new_source_requests: if t == 15 { 300.0 } else { 0.0 },
            top: BTreeMap::from([(Dimension::Ip, ips), (Dimension::Prefix, prefixes)]),
            prefix_asns: HashMap::new(),
            at: None,
        }
    };
    let mut d = detector();
    let mut flooder_named = false;
    for t in 0..45 {
        let flood = (t >= 15).then_some(if flooder_named { 39 } else { 300 });
        let obs = d.observe(&second(t, flood));
        for f in &obs.findings {
            assert!(!f.key.starts_with("198.51.100."), "t={t}: {f:?}");
            flooder_named |= f.key == "203.0.113.9";
        }
    }
    assert!(flooder_named);
}

#[test]
fn a_known_source_is_judged_against_its_own_baseline() {
    let mut d = warmed_up(120);
    // One regular client at 4× its rate is not a flood; at 10× it is.
    let bump = |t: u64, factor: u64| {
        let mut s = regulars(t);
        s[3].3 *= factor;
        s
    };
    for t in 120..130 {
        assert!(d.observe(&sample(&bump(t, 4), 0)).findings.is_empty());
    }
    let named = (130..135).any(|t| d.observe(&sample(&bump(t, 10), 0)).findings.iter().any(|f| f.key == "198.51.3.13"));
    assert!(named);
}

#[test]
fn allowlisted_sources_are_never_named() {
    let mut d = warmed_up(120);
    for t in 120..140 {
        let mut s = regulars(t);
        // 15× a regular client. (The edge leaves allowlisted traffic out of its counts, so
        // aggregates never see it; here it is only the address that is judged.)
        s.push(("10.1.2.3".into(), 64500, "DE", 300));
        assert!(d.observe(&sample(&s, 0)).findings.is_empty());
    }
}

#[test]
fn a_distributed_surge_names_its_aggregates_and_no_single_source() {
    let mut d = warmed_up(300);
    // 20× the usual 800 req/s from 2,000 new addresses in 150 new ASNs, each address at 8
    // req/s, below a regular client's rate.
    let attack: Vec<(String, u32, &str, u64)> = (0..2000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x2d00_0000 + i * 97);
            (ip.to_string(), 70_000 + i % 150, ["BR", "VN", "IN", "ID"][(i % 4) as usize], 8)
        })
        .collect();
    // Nothing is mitigated here, so the surge goes on and every sample is judged afresh.
    let mut first = None;
    let mut findings = Vec::new();
    for t in 300..310 {
        let mut s = regulars(t);
        s.extend(attack.iter().cloned());
        let obs = d.observe(&sample(&s, if t == 300 { 16_000 } else { 0 }));
        if obs.surge && first.is_none() {
            first = Some(obs.clone());
        }
        findings.extend(obs.findings);
    }
    let obs = first.expect("surge never declared");
    assert!(obs.mix_distance > 0.5, "{}", obs.summary());
    assert!(!obs.findings.is_empty() && findings.iter().all(|f| f.kind == Kind::DistributedSurge), "{findings:?}");
    let dim = obs.findings[0].dimension;
    assert!(obs.findings.iter().all(|f| f.dimension == dim));
    // None of the regulars' aggregates is ever named.
    for f in &findings {
        assert!(!names_a_regular(f), "{f:?}");
    }
    let named: f64 = obs.findings.iter().map(|f| f.rate - f.baseline).sum();
    assert!(named >= 0.5 * (obs.total_rate - obs.total_baseline), "{}", obs.summary());
}

#[test]
fn a_surge_that_ramps_up_for_minutes_is_named_by_the_aggregates_it_came_with() {
    let mut d = warmed_up(300);
    // From new addresses in 150 new ASNs and 4 new countries: 150 of them at 1 req/s at
    // first, rising to 600 at 26 req/s over ten minutes. It stands out only well after its
    // aggregates first appeared, and they must still count as part of it.
    let mut covered = false;
    for t in 300..900u64 {
        let (active, per_source) = (150 + (t - 300) * 450 / 600, 1 + (t - 300) * 25 / 600);
        let mut s = regulars(t);
        s.extend((0..active as u32).map(|i| {
            let ip = std::net::Ipv4Addr::from(0x2d00_0000 + i * 97);
            (ip.to_string(), 70_000 + i % 150, ["BR", "VN", "IN", "ID"][(i % 4) as usize], per_source)
        }));
        let obs = d.observe(&sample(&s, if t == 300 { 600 } else { 0 }));
        for f in &obs.findings {
            assert!(!names_a_regular(f), "t={t}: {f:?}");
        }
        let named: f64 = obs.findings.iter().map(|f| f.rate - f.baseline).sum();
        if obs.surge && named >= 0.5 * (obs.total_rate - obs.total_baseline) {
            covered = true;
            break;
        }
    }
    assert!(covered, "the ramp's new aggregates were never named");
}

#[test]
fn a_rise_from_the_usual_sources_is_demand() {
    let mut d = warmed_up(300);
    let mut demand = false;
    for t in 300..320 {
        let s: Vec<_> = regulars(t).into_iter().map(|(ip, a, c, n)| (ip, a, c, n * 4)).collect();
        let obs = d.observe(&sample(&s, 0));
        assert!(obs.findings.is_empty() && !obs.surge, "{}", obs.summary());
        demand |= obs.demand_rise;
    }
    assert!(demand);
}

#[test]
fn empty_and_degenerate_samples_do_not_panic() {
    let mut d = detector();
    for _ in 0..50 {
        d.observe(&Sample::default());
        d.observe(&Sample { secs: 0.0, requests: f64::NAN, ..Sample::default() });
    }
    let obs = d.observe(&sample(&regulars(0), 0));
    assert!(obs.total_rate.is_finite());
}

/// Whether a finding, enforced, would catch traffic from `ip` in `asn`.
fn catches(f: &Finding, (ip, asn, country, _): &(String, u32, &str, u64)) -> bool {
    let prefix = crate::edge::source::prefix_of(ip.parse().unwrap()).to_string();
    match f.dimension {
        Dimension::Ip => f.key == *ip,
        Dimension::Prefix => f.key == prefix,
        Dimension::Asn => f.key == asn.to_string() && !f.except.contains(&prefix),
        Dimension::Country => f.key == *country && !f.except.contains(&prefix),
        Dimension::ApiKey => false,
    }
}

#[test]
fn a_surge_through_an_isp_real_clients_use_is_limited_outside_their_prefixes() {
    let mut d = warmed_up(300);
    // 1,700 addresses in 150 new ASNs, and 300 more through ASN 64500, which regular clients
    // (in Germany) in three prefixes use, each from a /24 of its own: 8 req/s per address.
    let attack: Vec<(String, u32, &str, u64)> = (0..2000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x2d00_0000 + i * 256);
            if i < 300 {
                (ip.to_string(), 64500, "DE", 8)
            } else {
                (ip.to_string(), 70_000 + i % 150, ["BR", "VN", "IN", "ID"][(i % 4) as usize], 8)
            }
        })
        .collect();
    // Mitigations are applied as they come: what they catch no longer reaches the counts.
    let mut enforced: Vec<Finding> = Vec::new();
    for t in 300..360 {
        let mut s = regulars(t);
        s.extend(attack.iter().filter(|a| !enforced.iter().any(|f| catches(f, a))).cloned());
        let obs = d.observe(&sample(&s, if t == 300 { 16_000 } else { 0 }));
        enforced.extend(obs.findings);
    }
    let isp =
        enforced.iter().find(|f| f.dimension == Dimension::Asn && f.key == "64500").expect("the shared ISP is named");
    let mut except = isp.except.clone();
    except.sort();
    assert_eq!(except, ["198.51.0.0/24", "198.51.4.0/24", "198.51.8.0/24"], "{isp:?}");
    assert!(isp.baseline <= 5.0, "limited to what it usually sends from other prefixes: {isp:?}");
    assert!(isp.describe().contains("outside its 3 established prefixes"), "{}", isp.describe());
    for r in regulars(0) {
        assert!(!enforced.iter().any(|f| catches(f, &r)), "regular client {} caught: {enforced:?}", r.0);
    }
    let leaked = attack.iter().filter(|a| !enforced.iter().any(|f| catches(f, a))).count();
    assert_eq!(leaked, 0, "every attacking address is under some mitigation");
}

#[test]
fn a_surge_that_ramps_up_under_its_first_limits_is_named_in_full_within_one_allowance() {
    let mut d = warmed_up(300);
    // 1,700 addresses in 150 new ASNs and 300 through ASN 64500, which regular clients use,
    // each from a /24 of its own; every address ramps from nothing to 8 req/s over ten
    // minutes. Mitigations are applied as they come, so the first ones contain the surge
    // while the rest of it is still small.
    let attack = |t: u64| -> Vec<(String, u32, &str, u64)> {
        let per_address = (t - 300) * 8 / 600;
        (0..2000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x2d00_0000 + i * 256).to_string();
                if i < 300 {
                    (ip, 64500, "DE", per_address)
                } else {
                    (ip, 70_000 + i % 150, ["BR", "VN", "IN", "ID"][(i % 4) as usize], per_address)
                }
            })
            .filter(|a| a.3 > 0)
            .collect()
    };
    let mut enforced: Vec<Finding> = Vec::new();
    for t in 300..900 {
        let mut s = regulars(t);
        s.extend(attack(t).into_iter().filter(|a| !enforced.iter().any(|f| catches(f, a))));
        let obs = d.observe(&sample(&s, 0));
        enforced.extend(obs.findings);
    }
    for r in regulars(0) {
        assert!(!enforced.iter().any(|f| catches(f, &r)), "regular client {} caught: {enforced:?}", r.0);
    }
    let leaked: Vec<_> = attack(899).into_iter().filter(|a| !enforced.iter().any(|f| catches(f, a))).collect();
    assert!(leaked.is_empty(), "{} attacking addresses under no mitigation, e.g. {:?}", leaked.len(), leaked[0]);
    // Aggregates that came with the surge share what new sources usually send (1% of the
    // 800 req/s here), however many batches they were named in.
    let newborn: Vec<&Finding> = enforced.iter().filter(|f| f.born_with_surge).collect();
    let shared: f64 = newborn.iter().map(|f| f.baseline).sum();
    assert!(!newborn.is_empty());
    assert!(shared <= 8.5 + MIN_BASELINE * newborn.len() as f64, "{} newcomers share {shared:.1} req/s", newborn.len());
}

#[test]
fn a_mitigation_is_renewed_only_near_its_end_and_while_its_target_sends_twice_what_it_may() {
    // Limited to 10 req/s an edge: refusing 10 more means the target sends 20.
    assert!(renews(20.0, 300.0, 10.0, 10.0));
    assert!(renews(0.0, 300.0, 10.0, 250.0));
    assert!(!renews(20.0, 300.0, 10.0, 9.9), "over its limit, but less than twice: let it lapse");
    assert!(!renews(RENEW_AHEAD_SECS + 1.0, 300.0, 10.0, 1000.0), "not due yet");
    assert!(!renews(20.0, 300.0, 0.1, 0.5), "a trickle of refusals is not a surge");
    assert!(!renews(20.0, 300.0, 10.0, f64::NAN), "no figure: let it lapse, detection stays on");
    // A short term is renewed in its second half only, not from its start.
    assert!(!renews(9.0, 10.0, 10.0, 1000.0), "one second into a 10 s term");
    assert!(renews(5.0, 10.0, 10.0, 1000.0));
}

#[test]
fn a_pool_idle_until_its_clients_start_is_not_taken_for_a_surge() {
    // The edges report nothing for 15 s (a new pool, traffic not yet moved to it), then all
    // the clients start at once, each new in its first second. With no traffic before them
    // there is no baseline to be a surge against: they become it.
    let mut d = detector();
    for t in 0..90u64 {
        let s = if t < 15 { Vec::new() } else { regulars(t) };
        let new: u64 = if t == 15 { s.iter().map(|x| x.3).sum() } else { 0 };
        let o = d.observe(&sample(&s, new));
        assert!(!o.surge && o.findings.is_empty(), "t={t}: {}", o.summary());
    }
    // Then a flood is still found.
    let mut found = false;
    for t in 90..100u64 {
        let mut s = regulars(t);
        s.push(("203.0.113.9".to_owned(), 64666, "BR", 300));
        found |= d.observe(&sample(&s, 0)).findings.iter().any(|f| f.key == "203.0.113.9");
    }
    assert!(found);
}

#[test]
fn clients_returning_after_a_quarter_hour_idle_are_not_a_surge() {
    // Past the new-source filter's two generations, every returning client is new again in
    // its first second, and the baselines have watched 15 minutes of nothing.
    let mut d = warmed_up(300);
    for _ in 0..900 {
        d.observe(&sample(&[], 0));
    }
    for t in 0..60u64 {
        let s = regulars(t);
        let new: u64 = if t == 0 { s.iter().map(|x| x.3).sum() } else { 0 };
        let o = d.observe(&sample(&s, new));
        assert!(!o.surge && o.findings.is_empty(), "t={t}: {}", o.summary());
    }
}

#[test]
fn a_crowd_from_the_usual_networks_is_demand_and_an_attack_on_top_of_it_is_not() {
    let mut d = warmed_up(300);
    // 120 new users in 30 new prefixes of the regulars' ISPs and countries, at their pace: four
    // times the usual traffic.
    let crowd = |t: u64| -> Vec<(String, u32, &'static str, u64)> {
        (0..120u64)
            .map(|i| {
                let jitter = (i * 7919 + t * 104_729) % 11;
                let prefix = i % 30;
                (
                    format!("192.0.{prefix}.{}", 10 + i),
                    64500 + (prefix % 4) as u32,
                    ["DE", "FR"][(prefix % 2) as usize],
                    15 + jitter,
                )
            })
            .collect()
    };
    let mut took_for_crowd = false;
    for t in 300..420 {
        let mut s = regulars(t);
        s.extend(crowd(t));
        let obs = d.observe(&sample(&s, if t == 300 { 2400 } else { 0 }));
        assert!(obs.findings.is_empty() && !obs.surge, "t={t}: {}", obs.summary());
        took_for_crowd |= obs.crowd && obs.demand_rise;
    }
    assert!(took_for_crowd, "the crowd was never reported as one");
    // Then 200 addresses in 50 ASNs and 2 countries of their own, 30 req/s each.
    let attackers: Vec<(String, u32, &str, u64)> = (0..200u32)
        .map(|i| {
            (
                std::net::Ipv4Addr::from(0x2d00_0000 + i * 97).to_string(),
                70_000 + i % 50,
                ["BR", "VN"][(i % 2) as usize],
                30,
            )
        })
        .collect();
    let mut named_attack = false;
    for t in 420..450 {
        let mut s = regulars(t);
        s.extend(crowd(t));
        s.extend(attackers.iter().cloned());
        let obs = d.observe(&sample(&s, if t == 420 { 200 } else { 0 }));
        for f in &obs.findings {
            assert!(!names_a_regular(f), "t={t}: {f:?}");
            assert!(!crowd(t).iter().any(|c| catches(f, c)), "t={t}: {f:?} catches the crowd");
            named_attack |= attackers.iter().any(|a| catches(f, a));
        }
    }
    assert!(named_attack, "the attack on top of the crowd was never named");
}

#[test]
fn a_small_sites_crowd_through_isps_it_never_saw_is_demand_and_an_attack_through_its_own_is_not() {
    // Forty regulars, each in a /24 of its own through an ISP no other regular uses: a site
    // that has seen little of its users' ISPs.
    let regulars = |t: u64| -> Vec<(String, u32, &'static str, u64)> {
        (0..40u64)
            .map(|i| {
                let jitter = (i * 7919 + t * 104_729) % 11;
                (format!("198.51.{i}.10"), 64500 + i as u32, "DE", 15 + jitter)
            })
            .collect()
    };
    let warmed = || {
        let mut d = detector();
        for t in 0..300 {
            d.observe(&sample(&regulars(t), 0));
        }
        d
    };
    let mut d = warmed();
    // A crowd in 60 new /24s, half through the regulars' ISPs and half through ISPs never
    // seen, at the regulars' pace: about as many new ISPs as new users of such a site bring.
    let crowd = |t: u64| -> Vec<(String, u32, &'static str, u64)> {
        (0..60u64)
            .map(|i| {
                let jitter = (i * 7919 + t * 104_729) % 11;
                let asn = if i % 2 == 0 { 64500 + (i % 40) as u32 } else { 65000 + i as u32 };
                (format!("192.0.{i}.10"), asn, "DE", 15 + jitter)
            })
            .collect()
    };
    let mut took_for_crowd = false;
    for t in 300..420 {
        let mut s = regulars(t);
        s.extend(crowd(t));
        let obs = d.observe(&sample(&s, if t == 300 { 900 } else { 0 }));
        assert!(obs.findings.is_empty() && !obs.surge, "t={t}: {}", obs.summary());
        took_for_crowd |= obs.crowd;
    }
    assert!(took_for_crowd, "the crowd was never reported as one");
    // On the same site, before any crowd, an attack whose every address comes through an ISP
    // of its own is still one: a site's having seen few ISPs does not make every new ISP a
    // user's.
    let mut d = warmed();
    let attackers: Vec<(String, u32, &str, u64)> =
        (0..200u32).map(|i| (format!("45.{}.{}.7", i / 256, i % 256), 70_000 + i % 50, "BR", 30)).collect();
    let mut named_attack = false;
    for t in 300..330 {
        let mut s = regulars(t);
        s.extend(attackers.iter().cloned());
        let obs = d.observe(&sample(&s, if t == 300 { 200 } else { 0 }));
        for f in &obs.findings {
            assert!(!regulars(t).iter().any(|c| catches(f, c)), "t={t}: {f:?} catches a regular");
            named_attack |= attackers.iter().any(|a| catches(f, a));
        }
    }
    assert!(named_attack, "the attack was never named");
}

/// An office's day: 20 req/s at night, rising within the hour from 07:00 (UTC) to 180, falling
/// within the hour from 17:00; each minute off by up to ±10% (a fixed sequence).
fn office(t: f64, i: u64) -> f64 {
    let h = t.rem_euclid(86_400.0) / 3600.0;
    let day = match h {
        h if !(7.0..18.0).contains(&h) => 0.0,
        h if h < 8.0 => h - 7.0,
        h if h < 17.0 => 1.0,
        h => 18.0 - h,
    };
    (20.0 + 160.0 * day) * (0.9 + 0.01 * ((i * 7919) % 21) as f64)
}

/// One minute ending at `at` of the office's traffic, from four usual clients; timed or not.
fn office_minute(at: f64, i: u64, timed: bool) -> Sample {
    let each = (office(at, i) * 60.0 / 4.0).round() as u64;
    let top: Vec<(String, u64)> = (1..=4).map(|k| (format!("198.51.100.{k}"), each)).collect();
    Sample {
        secs: 60.0,
        requests: (4 * each) as f64,
        top: [(Dimension::Ip, top)].into(),
        at: timed.then_some(at),
        ..Sample::default()
    }
}

#[test]
fn a_day_of_watching_teaches_the_daily_shape_so_the_morning_is_no_surprise() {
    // A one-hour baseline of one-minute samples; nothing from Prometheus.
    let guard = || GuardDetector::new(Tuning::new(Sensitivity::Medium, 3600.0, 60.0), Vec::new());
    let (mut learning, mut control) = (guard(), guard());
    let start = 1_700_006_400.0; // a midnight, UTC
    let mut i = 0;
    // Two days.
    while (i as f64) < 2.0 * 1440.0 {
        let at = start + 60.0 * i as f64;
        learning.observe(&office_minute(at, i, true));
        control.observe(&office_minute(at, i, false));
        i += 1;
    }
    let shape = learning.season().expect("a day watched gives a daily shape");
    assert!(shape.describe().contains("quietest at"), "{}", shape.describe());
    assert!(control.season().is_none(), "samples without a time teach no shape");

    // The third morning, 06:00 to 09:00: the office arrives as every day.
    let (mut surprised, mut calm) = (0, 0);
    while (i as f64) < 2.0 * 1440.0 + 9.0 * 60.0 {
        let at = start + 60.0 * i as f64;
        let obs = learning.observe(&office_minute(at, i, true));
        let plain = control.observe(&office_minute(at, i, false));
        if at >= start + 2.0 * 86_400.0 + 6.0 * 3600.0 {
            assert!(!obs.demand_rise && !obs.surge && obs.findings.is_empty(), "{}", obs.summary());
            calm += 1;
            surprised += usize::from(plain.demand_rise);
        }
        i += 1;
    }
    assert_eq!(calm, 180);
    // The control: against a one-hour baseline that knows no day, every morning is a rise.
    assert!(surprised > 30, "{surprised} minutes of the control's morning were a rise");
}
