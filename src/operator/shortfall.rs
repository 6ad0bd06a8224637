//! When a ScalingPolicy cannot keep up, and when that pages the on-call.
//!
//! A policy falls short when demand needs more replicas than its upper bound, when a signal is
//! lost (it holds, blind), or when its target cannot be read or scaled. A short spell is
//! normal (a peak the bounds cut for a minute, a Prometheus restart), so a spell pages only
//! once it has lasted the policy's `page.after` without a break, and only once.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use serde_json::json;

use super::pager::{Action, Page, Severity};
use crate::{
    api::OpenPage,
    engine::scaling::{Decision, Reason},
};

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
            Self::AboveMax { .. } => KINDS[0],
            Self::SignalLost { .. } => KINDS[1],
            Self::TargetError { .. } => KINDS[2],
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

/// The kinds of shortfall, as a spell and its open page in status name them.
const KINDS: [&str; 3] = ["AboveMax", "SignalLost", "TargetError"];

/// A run of ticks that fell short in the same way.
#[derive(Clone, Debug, PartialEq)]
pub struct Spell {
    kind: &'static str,
    since: f64,
    /// The dedup key it paged under, once it has.
    paged: Option<String>,
    /// What fell short, in words, as its last tick said it.
    sentence: String,
}

/// What a tick's shortfall calls for.
#[derive(Clone, Debug, PartialEq)]
pub enum Due {
    Nothing,
    /// The spell has lasted long enough: page, under this dedup key.
    Trigger(String),
    /// A spell that paged is over: close its incident. `lasted` is in seconds.
    Resolve {
        dedup_key: String,
        sentence: String,
        lasted: f64,
    },
}

/// Records a tick's shortfall (none when the policy kept up) at `now` (seconds) and says
/// what it calls for: a page when its spell has lasted `after` seconds and has not paged yet
/// (under the key `new_key` makes of the spell's kind), the end of the incident when a spell
/// that paged ends. A tick that keeps up ends the spell; a shortfall of another kind ends it
/// and starts a new one.
pub fn pages(
    spell: &mut Option<Spell>,
    shortfall: Option<&Shortfall>,
    now: f64,
    after: f64,
    new_key: impl FnOnce(&str) -> String,
) -> Due {
    let same = spell.as_ref().is_some_and(|s| shortfall.is_some_and(|f| f.kind() == s.kind));
    if !same && let Some(ended) = spell.take() {
        if let Some(shortfall) = shortfall {
            *spell = Some(Spell::begin(shortfall, now));
        }
        return match ended.paged {
            Some(dedup_key) => Due::Resolve { dedup_key, sentence: ended.sentence, lasted: now - ended.since },
            None => Due::Nothing,
        };
    }
    let Some(shortfall) = shortfall else { return Due::Nothing };
    let s = spell.get_or_insert_with(|| Spell::begin(shortfall, now));
    s.sentence = shortfall.sentence();
    if s.paged.is_some() || now - s.since < after {
        return Due::Nothing;
    }
    let key = new_key(s.kind);
    s.paged = Some(key.clone());
    Due::Trigger(key)
}

impl Spell {
    fn begin(shortfall: &Shortfall, now: f64) -> Self {
        Self { kind: shortfall.kind(), since: now, paged: None, sentence: shortfall.sentence() }
    }

    /// The page this spell holds open, for status; none until it has paged. `now` is the
    /// scaler's clock (seconds), `wall` the time it stands for.
    pub fn open_page(&self, now: f64, wall: Timestamp) -> Option<OpenPage> {
        let dedup_key = self.paged.clone()?;
        let since = wall.checked_sub(SignedDuration::from_secs_f64((now - self.since).max(0.0))).unwrap_or(wall);
        Some(OpenPage { dedup_key, reason: self.kind.into(), since: Time(since), summary: self.sentence.clone() })
    }

    /// The spell a page still open in status stands for, after a restart lost the one in
    /// memory. A reason this version does not know becomes a kind no shortfall has, so the
    /// next tick ends the spell and resolves its page.
    pub fn restore(open: &OpenPage, now: f64, wall: Timestamp) -> Self {
        let age = wall.duration_since(open.since.0).as_secs_f64().max(0.0);
        Self {
            kind: KINDS.into_iter().find(|k| *k == open.reason).unwrap_or("Unknown"),
            since: now - age,
            paged: Some(open.dedup_key.clone()),
            sentence: open.summary.clone(),
        }
    }
}

/// The dedup key of a page about a policy (`key` is `namespace/name`) falling short in the
/// way `kind` names, at `unix_now`.
pub fn dedup_key(key: &str, kind: &str, unix_now: i64) -> String {
    format!("levee/ScalingPolicy/{key}/{kind}/{unix_now}")
}

/// The page that ends the incident of a spell that paged.
pub fn resolve(key: &str, dedup_key: String, sentence: &str, lasted: f64) -> Page {
    let lasted = crate::api::Duration::from_secs(lasted.round().max(0.0) as u64);
    Page::resolve(
        dedup_key,
        format!("ScalingPolicy/{key}"),
        format!("levee: ScalingPolicy {key}: ended after {lasted}: {sentence}"),
        json!({ "policy": key, "lasted": lasted.to_string() }),
    )
}

/// The page for a policy (`key` is `namespace/name`) that has fallen short for `lasted`.
pub fn page(key: &str, shortfall: &Shortfall, lasted: &str, d: Option<&Decision>, dedup_key: String) -> Page {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    Page {
        action: Action::Trigger,
        dedup_key,
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

    /// Runs `pages` with keys made of the kind and the time.
    fn tick(spell: &mut Option<Spell>, shortfall: Option<&Shortfall>, now: f64) -> Due {
        pages(spell, shortfall, now, 60.0, |kind| format!("{kind}@{now}"))
    }

    #[test]
    fn a_spell_pages_once_when_it_has_lasted_long_enough() {
        let mut spell = None;
        assert_eq!(tick(&mut spell, Some(&above()), 0.0), Due::Nothing);
        assert_eq!(tick(&mut spell, Some(&above()), 59.0), Due::Nothing);
        assert_eq!(tick(&mut spell, Some(&above()), 60.0), Due::Trigger("AboveMax@60".into()));
        assert_eq!(tick(&mut spell, Some(&above()), 600.0), Due::Nothing, "one page per spell");
    }

    #[test]
    fn a_spell_restored_from_status_carries_on_where_the_last_operator_left_it() {
        let wall: Timestamp = "2026-11-27T10:10:00Z".parse().unwrap();
        let mut spell = None;
        tick(&mut spell, Some(&above()), 100.0);
        assert_eq!(spell.as_ref().unwrap().open_page(100.0, wall), None, "nothing open before it pages");
        tick(&mut spell, Some(&above()), 160.0);
        let open = spell.as_ref().unwrap().open_page(400.0, wall).unwrap();
        assert_eq!(open.dedup_key, "AboveMax@160");
        assert_eq!((open.reason.as_str(), open.since.0.to_string().as_str()), ("AboveMax", "2026-11-27T10:05:00Z"));

        // A new operator, whose clock starts at 0, ten minutes later (wall time).
        let later = wall + SignedDuration::from_secs(600);
        let mut restored = Some(Spell::restore(&open, 0.0, later));
        assert_eq!(tick(&mut restored, Some(&above()), 5.0), Due::Nothing, "the same spell does not page again");
        assert_eq!(
            tick(&mut restored, None, 10.0),
            Due::Resolve { dedup_key: "AboveMax@160".into(), sentence: above().sentence(), lasted: 15.0 * 60.0 + 10.0 },
            "its end resolves the page the last operator sent, with its whole length"
        );

        let unknown = OpenPage { reason: "SomethingNewer".into(), ..open };
        let mut restored = Some(Spell::restore(&unknown, 0.0, later));
        assert!(
            matches!(tick(&mut restored, Some(&above()), 5.0), Due::Resolve { .. }),
            "a reason this version does not know is resolved at once"
        );
    }

    #[test]
    fn a_spell_that_paged_resolves_its_incident_when_it_ends() {
        let mut spell = None;
        tick(&mut spell, Some(&above()), 0.0);
        assert_eq!(tick(&mut spell, Some(&above()), 60.0), Due::Trigger("AboveMax@60".into()));
        let sentence = "demand needs 20 replicas, above maxReplicas 5".to_owned();
        assert_eq!(
            tick(&mut spell, None, 90.0),
            Due::Resolve { dedup_key: "AboveMax@60".into(), sentence: sentence.clone(), lasted: 90.0 }
        );
        assert_eq!(tick(&mut spell, None, 95.0), Due::Nothing, "resolved once");
        // A spell that changes kind after paging ends too; the new one pages on its own clock.
        tick(&mut spell, Some(&above()), 100.0);
        tick(&mut spell, Some(&above()), 160.0);
        assert_eq!(
            tick(&mut spell, Some(&lost()), 170.0),
            Due::Resolve { dedup_key: "AboveMax@160".into(), sentence, lasted: 70.0 }
        );
        assert_eq!(tick(&mut spell, Some(&lost()), 230.0), Due::Trigger("SignalLost@230".into()));
    }

    #[test]
    fn a_break_or_another_kind_starts_a_new_spell() {
        let mut spell = None;
        assert_eq!(tick(&mut spell, Some(&above()), 0.0), Due::Nothing);
        assert_eq!(tick(&mut spell, None, 50.0), Due::Nothing, "a spell that never paged ends quietly");
        assert_eq!(tick(&mut spell, Some(&above()), 55.0), Due::Nothing, "the break reset the clock");
        assert_eq!(tick(&mut spell, Some(&lost()), 100.0), Due::Nothing, "another kind starts afresh");
        assert_eq!(tick(&mut spell, Some(&lost()), 159.0), Due::Nothing);
        assert!(matches!(tick(&mut spell, Some(&lost()), 160.0), Due::Trigger(_)));
        // After the spell ends, the next one pages again.
        assert!(matches!(tick(&mut spell, None, 170.0), Due::Resolve { .. }));
        assert_eq!(tick(&mut spell, Some(&lost()), 180.0), Due::Nothing);
        assert!(matches!(tick(&mut spell, Some(&lost()), 240.0), Due::Trigger(_)));
    }

    #[test]
    fn the_resolve_says_what_ended_and_how_long_it_lasted() {
        let p = resolve("shop/api", "k".into(), &above().sentence(), 432.4);
        assert_eq!(p.action, Action::Resolve);
        assert_eq!(p.dedup_key, "k");
        assert_eq!(
            p.summary,
            "levee: ScalingPolicy shop/api: ended after 7m12s: demand needs 20 replicas, above maxReplicas 5"
        );
    }

    #[test]
    fn the_page_says_what_is_short_and_where_to_look() {
        let p = page("shop/api", &above(), "5m", None, dedup_key("shop/api", "AboveMax", 1_800_000_000));
        assert_eq!(
            p.summary,
            "levee: ScalingPolicy shop/api cannot keep up for 5m: demand needs 20 replicas, above maxReplicas 5"
        );
        assert_eq!(p.severity, Severity::Critical);
        assert_eq!(p.dedup_key, "levee/ScalingPolicy/shop/api/AboveMax/1800000000");
        assert_eq!(p.details["inspect"], "kubectl -n shop describe scalingpolicy api");
        assert_eq!(page("shop/api", &lost(), "5m", None, "k".into()).severity, Severity::Warning);
    }
}
