//! Per-request guard work at the edge: count the source in the sketch and the heavy-hitter
//! list, and ask the upstream's breaker.
//!
//! Run with `cargo bench --bench edge`.

use criterion::{Criterion, criterion_group, criterion_main};
use levee::edge::{
    breaker::{Breaker, BreakerConfig},
    sketch::{CountMin, HeavyHitters},
};

fn guard_per_request(c: &mut Criterion) {
    // 100,000 distinct sources, a fifth of the traffic from ten heavy ones.
    let keys: Vec<String> = (0..100_000u32).map(|i| format!("198.51.{}.{}", i / 256 % 256, i % 256)).collect();
    let heavy: Vec<String> = (0..10).map(|i| format!("203.0.113.{i}")).collect();
    let mut cm = CountMin::new(1 << 16, 4);
    let mut hh = HeavyHitters::new(1024);
    let mut breaker = Breaker::new(BreakerConfig::default());
    let mut i = 0usize;
    let mut t = 0.0;
    c.bench_function("guard work per request", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            t += 0.0001;
            let key = if i.is_multiple_of(5) { &heavy[i % 10] } else { &keys[i % keys.len()] };
            let estimate = cm.add(key.as_bytes());
            hh.offer(key, u64::from(estimate));
            let allowed = breaker.allow(t);
            if allowed {
                breaker.record(t, t, false);
            }
            std::hint::black_box((estimate, allowed))
        })
    });
}

criterion_group!(benches, guard_per_request);
criterion_main!(benches);
