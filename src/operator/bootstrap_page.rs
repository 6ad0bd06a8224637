//! When a BootstrapPolicy pages: a fleet with no ready instance (a cold start), or instances
//! failing together (a death spiral), is worth waking someone for at once; the page is
//! resolved when neither holds. One page per trouble, whatever it turns into meanwhile (a
//! cold start that ends in a spiral is one incident).

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::json;

use super::pager::{Page, Severity};
use crate::api::OpenPage;

/// What is wrong with a fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct Trouble {
    /// `ColdStart` or `DeathSpiral`, as [`OpenPage::reason`] says it.
    pub reason: &'static str,
    /// What is wrong, in one line.
    pub summary: String,
}

/// The page policy `key` (`namespace/name`) sends now, if any, and the page it leaves open,
/// given the page it has open and the trouble it is in. `settled` says, for a resolve, how
/// the fleet is now.
pub fn page_for(
    key: &str,
    open: Option<&OpenPage>,
    trouble: Option<Trouble>,
    settled: &str,
    now: Timestamp,
) -> (Option<Page>, Option<OpenPage>) {
    let source = format!("BootstrapPolicy/{key}");
    match (open, trouble) {
        (None, Some(t)) => {
            let dedup_key = format!("levee/{source}/{}", now.as_second());
            let summary = format!("levee: BootstrapPolicy {key}: {}", t.summary);
            let details = json!({ "policy": key, "reason": t.reason, "since": now.to_string() });
            let page = Page {
                action: super::pager::Action::Trigger,
                dedup_key: dedup_key.clone(),
                summary: summary.clone(),
                severity: Severity::Critical,
                source,
                details,
            };
            (Some(page), Some(OpenPage { dedup_key, reason: t.reason.into(), since: Time(now), summary }))
        }
        (Some(o), Some(_)) => (None, Some(o.clone())),
        (Some(o), None) => {
            let summary = format!("levee: BootstrapPolicy {key}: over: {settled}");
            let details = json!({ "policy": key, "reason": o.reason, "since": o.since.0.to_string() });
            (Some(Page::resolve(o.dedup_key.clone(), source, summary, details)), None)
        }
        (None, None) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::pager::Action;

    fn cold() -> Option<Trouble> {
        Some(Trouble { reason: "ColdStart", summary: "no instance is ready: database starting (0/2 ready)".into() })
    }

    #[test]
    fn one_page_per_trouble_resolved_when_it_is_over() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let (page, open) = page_for("shop/registry", None, cold(), "", t0);
        let page = page.expect("a page for a cold start");
        assert_eq!(page.action, Action::Trigger);
        assert_eq!(page.severity, Severity::Critical);
        assert_eq!(
            page.summary,
            "levee: BootstrapPolicy shop/registry: no instance is ready: database starting (0/2 ready)"
        );
        let open = open.expect("left open");
        assert_eq!((open.dedup_key.as_str(), open.reason.as_str()), (page.dedup_key.as_str(), "ColdStart"));

        // The cold start ends in a spiral: the same incident, no second page.
        let spiral = Some(Trouble { reason: "DeathSpiral", summary: "a death spiral is suspected".into() });
        let (again, still) = page_for("shop/registry", Some(&open), spiral, "", t0);
        assert_eq!((again, still.as_ref()), (None, Some(&open)));

        let (resolve, left) = page_for("shop/registry", Some(&open), None, "every stage ready", t0);
        let resolve = resolve.expect("a resolve");
        assert_eq!((resolve.action, resolve.dedup_key.as_str()), (Action::Resolve, open.dedup_key.as_str()));
        assert_eq!(resolve.summary, "levee: BootstrapPolicy shop/registry: over: every stage ready");
        assert_eq!(left, None);
        assert_eq!(page_for("shop/registry", None, None, "", t0), (None, None));
    }
}
