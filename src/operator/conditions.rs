//! Standard `status.conditions`, written so `lastTransitionTime` moves only on a real transition.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition as levee wants it, before merging with what the object already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The conditions a field manager applies: `wanted`, where a condition whose status did not
/// change keeps its `lastTransitionTime` from `existing`.
///
/// Conditions of other types are left out on purpose. `conditions` is a map-typed list, so
/// under server-side apply each manager owns its own entries; re-applying another manager's
/// condition from a possibly stale read would take it over and could turn it back.
///
/// # Guarantees
/// The result is sorted by type, so applying the same inputs twice yields the same patch.
pub fn merge(existing: &[Condition], wanted: &[Wanted], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let status = if w.status { "True" } else { "False" };
        let previous = existing.iter().find(|c| c.type_ == w.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: w.type_.to_owned(),
            status: status.to_owned(),
            reason: w.reason.clone(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(status: bool, message: &str) -> Vec<Wanted> {
        vec![Wanted { type_: "Ready", status, reason: "R".into(), message: message.into() }]
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let first = merge(&[], &wanted(true, "ok"), Some(1), at(100));
        assert_eq!(first[0].last_transition_time, Time(at(100)));
        let same = merge(&first, &wanted(true, "still ok"), Some(2), at(200));
        assert_eq!(same[0].last_transition_time, Time(at(100)), "no transition, time kept");
        assert_eq!(same[0].message, "still ok");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &wanted(false, "bad"), Some(3), at(300));
        assert_eq!(flipped[0].last_transition_time, Time(at(300)));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn other_managers_conditions_are_left_out() {
        let foreign = Condition {
            type_: "Available".into(),
            status: "True".into(),
            reason: "X".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(at(5)),
        };
        let merged = merge(std::slice::from_ref(&foreign), &wanted(true, "ok"), None, at(10));
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].type_, "Ready");
    }
}
