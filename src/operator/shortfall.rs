//! When a ScalingPolicy cannot keep up, and when that pages the on-call.
//!
//! A policy falls short when demand needs more replicas than its upper bound, when a signal is
//! lost (it holds, blind), or when its target cannot be read or scaled. A short spell is
//! normal (a peak the bounds cut for a minute, a Prometheus restart), so a spell pages only
//! once it has lasted the policy's `page.after` without a break, and only once.

use serde_json::json;

use super::pager::{Page, Severity};
use crate::engine::scaling::{Decision, Reason};

/// Why a policy is not keeping up.
#[derive(Clone, Debug, PartialEq)]
pub enum Shortfall {
    /// Demand needs `needed` replicas, more than the policy's `max`.
    AboveMax { needed: i64, max: i32 },
    /// Signals are lost; the policy holds (or went to its fallback) without seeing demand.
    SignalLost { detail: String },
    /// The target cannot be read or scaled.
    TargetError { detail: String },
}

impl Shortfall {
    /// The shortfall a decision shows, if any.
    pub fn of(d: &Decision, max: i32, lost: &[String]) -> Option<Self> {
        if matches!(d.reason, Reason::SignalLossHold | Reason::SignalLossFallback) {
            let detail = if lost.is_empty() { d.message.clone() } else { lost.join("; ") };
            return Some(Self::SignalLost { detail });
        }
        d.needed_above(max).map(|needed| Self::AboveMax { needed, max })
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::AboveMax { .. } => "AboveMax",
            Self::SignalLost { .. } => "SignalLost",
            Self::TargetError { .. } => "TargetError",
        }
    }

    /// What is short, in words (also the `DemandMet` condition's message).
    pub fn sentence(&self) -> String {
        match self {
            Self::AboveMax { needed, max } => format!("demand needs {needed} replicas, above maxReplicas {max}"),
            Self::SignalLost { detail } => format!("signals lost, holding blind: {detail}"),
            Self::TargetError { detail } => format!("cannot act on its target: {detail}"),
        }
    }
}

/// A run of ticks that fell short in the same way.
#[derive(Clone, Debug, PartialEq)]
pub struct Spell {
    kind: &'static str,
    since: f64,
    paged: bool,
}

/// Records a tick's shortfall (none when the policy kept up) at `now` (seconds) and says
/// whether it pages: when its spell has lasted `after` seconds and has not paged yet. A tick
/// that keeps up ends the spell; a shortfall of another kind starts a new one.
pub fn pages(spell: &mut Option<Spell>, shortfall: Option<&Shortfall>, now: f64, after: f64) -> bool {
    let Some(kind) = shortfall.map(Shortfall::kind) else {
        *spell = None;
        return false;
    };
    let s = match spell {
        Some(s) if s.kind == kind => s,
        _ => spell.insert(Spell { kind, since: now, paged: false }),
    };
    if s.paged || now - s.since < after {
        return false;
    }
    s.paged = true;
    true
}

/// The page for a policy (`key` is `namespace/name`) that has fallen short for `lasted`.
pub fn page(key: &str, shortfall: &Shortfall, lasted: &str, d: Option<&Decision>, unix_now: i64) -> Page {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    Page {
        dedup_key: format!("levee/ScalingPolicy/{key}/{}/{unix_now}", shortfall.kind()),
        summary: format!("levee: ScalingPolicy {key} cannot keep up for {lasted}: {}", shortfall.sentence()),
        // Demand above the bound is load the service is not sized for now; a blind hold or
        // a target levee cannot act on only may become that.
        severity: match shortfall {
            Shortfall::AboveMax { .. } => Severity::Critical,
            _ => Severity::Warning,
        },
        source: format!("ScalingPolicy/{key}"),
        details: json!({
            "policy": key,
            "shortfall": shortfall.kind(),
            "decision": d,
            "inspect": format!("kubectl -n {ns} describe scalingpolicy {name}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn above() -> Shortfall {
        Shortfall::AboveMax { needed: 20, max: 5 }
    }

    fn lost() -> Shortfall {
        Shortfall::SignalLost { detail: "prometheus: connection refused".into() }
    }

    #[test]
    fn a_spell_pages_once_when_it_has_lasted_long_enough() {
        let mut spell = None;
        assert!(!pages(&mut spell, Some(&above()), 0.0, 60.0));
        assert!(!pages(&mut spell, Some(&above()), 59.0, 60.0));
        assert!(pages(&mut spell, Some(&above()), 60.0, 60.0));
        assert!(!pages(&mut spell, Some(&above()), 600.0, 60.0), "one page per spell");
    }

    #[test]
    fn a_break_or_another_kind_starts_a_new_spell() {
        let mut spell = None;
        assert!(!pages(&mut spell, Some(&above()), 0.0, 60.0));
        assert!(!pages(&mut spell, None, 50.0, 60.0));
        assert!(!pages(&mut spell, Some(&above()), 55.0, 60.0), "the break reset the clock");
        assert!(!pages(&mut spell, Some(&lost()), 100.0, 60.0), "another kind starts afresh");
        assert!(!pages(&mut spell, Some(&lost()), 159.0, 60.0));
        assert!(pages(&mut spell, Some(&lost()), 160.0, 60.0));
        // After the spell ends, the next one pages again.
        assert!(!pages(&mut spell, None, 170.0, 60.0));
        assert!(!pages(&mut spell, Some(&lost()), 180.0, 60.0));
        assert!(pages(&mut spell, Some(&lost()), 240.0, 60.0));
    }

    #[test]
    fn the_page_says_what_is_short_and_where_to_look() {
        let p = page("shop/api", &above(), "5m", None, 1_800_000_000);
        assert_eq!(
            p.summary,
            "levee: ScalingPolicy shop/api cannot keep up for 5m: demand needs 20 replicas, above maxReplicas 5"
        );
        assert_eq!(p.severity, Severity::Critical);
        assert_eq!(p.dedup_key, "levee/ScalingPolicy/shop/api/AboveMax/1800000000");
        assert_eq!(p.details["inspect"], "kubectl -n shop describe scalingpolicy api");
        assert_eq!(page("shop/api", &lost(), "5m", None, 0).severity, Severity::Warning);
    }
}
