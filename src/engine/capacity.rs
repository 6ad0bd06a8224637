//! Replicas from demand, by Little's law: work arriving per second plus the backlog that must
//! be drained, over what one replica does at the target utilisation.

use crate::api::scaling_policy::CapacityModel;

/// Replicas needed to serve `arrival_rate` units/s and drain `backlog` units (waiting plus
/// in progress) within the model's `drainWithin`, at its target utilisation.
///
/// # Guarantees
/// Monotone: more arrival or more backlog never needs fewer replicas. Non-finite or negative
/// inputs count as zero, so the result is always a finite count.
pub fn replicas_for(model: &CapacityModel, arrival_rate: f64, backlog: f64) -> i64 {
    let clean = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    let per_replica = model.units_per_replica * model.target_utilization;
    if per_replica <= 0.0 || !per_replica.is_finite() {
        return 0;
    }
    let drain = model.drain_within.as_secs_f64().max(1.0);
    let work = clean(arrival_rate) + clean(backlog) / drain;
    // Tolerate float noise so that exactly-full capacity is not rounded up a replica.
    (work / per_replica - 1e-9).ceil().max(0.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Duration;

    fn model() -> CapacityModel {
        CapacityModel {
            units_per_replica: 100.0,
            target_utilization: 0.5,
            drain_within: Duration::from_secs(100),
            max_replica_lag: None,
        }
    }

    #[test]
    fn littles_law() {
        // 50 units/s per replica at 50% utilisation.
        assert_eq!(replicas_for(&model(), 500.0, 0.0), 10);
        assert_eq!(replicas_for(&model(), 501.0, 0.0), 11);
        // 5000 backlog within 100 s = 50 units/s = one more replica.
        assert_eq!(replicas_for(&model(), 500.0, 5000.0), 11);
        assert_eq!(replicas_for(&model(), 0.0, 0.0), 0);
    }

    #[test]
    fn garbage_counts_as_nothing() {
        assert_eq!(replicas_for(&model(), f64::NAN, -5.0), 0);
        assert_eq!(replicas_for(&model(), f64::INFINITY, 0.0), 0);
    }

    #[test]
    fn monotone_in_load() {
        let m = model();
        let mut last = 0;
        for i in 0..2000 {
            let r = replicas_for(&m, i as f64 * 3.7, i as f64 * 11.0);
            assert!(r >= last, "load {i}: {r} < {last}");
            last = r;
        }
    }
}
