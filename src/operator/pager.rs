//! Paging the on-call. A route is what a policy's `page.routeSecretRef` holds: an `http(s)://`
//! URL gets the page as a JSON POST (a generic webhook: Alertmanager-style receivers, Slack
//! relays, Opsgenie integrations), a 32-character key is a PagerDuty routing key and gets an
//! Events API v2 `trigger`. When what paged is over, a `resolve` with the same dedup key
//! closes the incident, so the on-call is not left holding an alert nobody will clear.
//!
//! Delivery is retried a few times within a bounded time: a pager that is down must not hold
//! up the guard, and one that refuses the page says why in the error.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use serde::Serialize;
use serde_json::json;

use crate::api::{SecretKeyRef, common::OpenPage};

/// PagerDuty's Events API v2.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Per attempt.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Waits before the second and third attempts.
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
/// PagerDuty truncates longer summaries; cut them ourselves, on a character boundary.
const MAX_SUMMARY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("the page route {0}")]
    Route(String),
    #[error("{target} refused the page: HTTP {status}: {body}")]
    Refused { target: String, status: u16, body: String },
    #[error("cannot reach {target}: {detail}")]
    Unreachable { target: String, detail: String },
}

/// Where a page goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Webhook(reqwest::Url),
    PagerDuty { routing_key: String },
}

impl Route {
    /// Reads a route from a Secret's value.
    pub fn parse(value: &str) -> Result<Self, PageError> {
        let v = value.trim();
        if v.starts_with("http://") || v.starts_with("https://") {
            return reqwest::Url::parse(v)
                .map(Route::Webhook)
                .map_err(|e| PageError::Route(format!("is not a valid URL: {e}")));
        }
        if v.len() == 32 && v.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(Route::PagerDuty { routing_key: v.to_owned() });
        }
        // Never echo the value: it may be a credential pasted into the wrong key.
        Err(PageError::Route(format!(
            "is neither an http(s):// URL nor a 32-character PagerDuty routing key ({} characters)",
            v.chars().count()
        )))
    }
}

/// How urgent a page is (PagerDuty's severities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
}

/// Whether a page opens (or adds to) an incident, or says it is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Resolve,
}

/// One page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page {
    #[serde(skip)]
    pub action: Action,
    /// Pages of one incident share it, so the pager groups them (and a resolve finds them).
    pub dedup_key: String,
    /// One line the on-call reads first.
    pub summary: String,
    pub severity: Severity,
    /// The object that paged, `<kind>/<namespace>/<name>`.
    pub source: String,
    /// The evidence: what was seen and what was done.
    pub details: serde_json::Value,
}

impl Page {
    /// The page that closes the incident paged under `dedup_key`: `summary` says what ended.
    pub fn resolve(dedup_key: String, source: String, summary: String, details: serde_json::Value) -> Self {
        Self { action: Action::Resolve, dedup_key, summary, severity: Severity::Warning, source, details }
    }
}

/// Sends pages.
#[derive(Clone, Debug)]
pub struct Pager {
    http: reqwest::Client,
    pagerduty_url: reqwest::Url,
}

impl Pager {
    /// `pagerduty_url` is where PagerDuty routes go ([`PAGERDUTY_EVENTS_URL`] but in tests).
    pub fn new(pagerduty_url: &str) -> Result<Self, PageError> {
        let pagerduty_url = reqwest::Url::parse(pagerduty_url)
            .map_err(|e| PageError::Route(format!("--pagerduty-url {pagerduty_url:?} is not a valid URL: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| PageError::Unreachable { target: "the HTTP client".into(), detail: e.to_string() })?;
        Ok(Self { http, pagerduty_url })
    }

    /// Delivers `page` to `route`: up to three attempts when the pager cannot be reached, times
    /// out, throttles (429) or fails (5xx); a page it rejects (other 4xx) is not retried.
    pub async fn send(&self, route: &Route, page: &Page) -> Result<(), PageError> {
        let (url, body) = match route {
            Route::Webhook(url) => (url.clone(), webhook_body(page)),
            Route::PagerDuty { routing_key } => (self.pagerduty_url.clone(), pagerduty_body(routing_key, page)),
        };
        let target = redacted(&url);
        let mut attempt = 0;
        loop {
            let result = self.http.post(url.clone()).json(&body).send().await;
            let err = match result {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let err = PageError::Refused {
                        target: target.clone(),
                        status: status.as_u16(),
                        body: crate::text::truncate(&text, 300).trim().to_owned(),
                    };
                    if !(status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                        return Err(err);
                    }
                    err
                }
                Err(e) => PageError::Unreachable { target: target.clone(), detail: error_chain(&e) },
            };
            let Some(wait) = BACKOFF.get(attempt) else { return Err(err) };
            tracing::warn!(error = %err, attempt = attempt + 1, "page not delivered; retrying");
            tokio::time::sleep(*wait).await;
            attempt += 1;
        }
    }
}

/// Pages the on-call apart from the caller, so a slow pager never delays the loop that paged:
/// reads the route from `secret_ref` in `ns`, delivers `page`, and tells the outcome in an
/// Event on `object` (`Paged` or `PageFailed`) and the log.
pub fn deliver(
    client: &kube::Client,
    pager: &Pager,
    recorder: &Recorder,
    ns: String,
    object: ObjectReference,
    secret_ref: SecretKeyRef,
    page: Page,
) {
    let (client, pager, recorder) = (client.clone(), pager.clone(), recorder.clone());
    tokio::spawn(async move {
        let result = async {
            let value = super::secrets::read(&client, &ns, &secret_ref).await.map_err(|e| e.to_string())?;
            let route = Route::parse(&value)
                .map_err(|e| format!("key {:?} of Secret {:?}: {e}", secret_ref.key, secret_ref.name))?;
            pager.send(&route, &page).await.map_err(|e| e.to_string())
        }
        .await;
        let (type_, reason, note) = match (result, page.action) {
            (Ok(()), Action::Trigger) => {
                (EventType::Normal, "Paged", format!("paged the on-call ({}): {}", page.dedup_key, page.summary))
            }
            (Ok(()), Action::Resolve) => {
                (EventType::Normal, "PageResolved", format!("resolved the page ({}): {}", page.dedup_key, page.summary))
            }
            (Err(e), _) => (
                EventType::Warning,
                "PageFailed",
                format!("cannot page the on-call: {e}; the page was: {}", page.summary),
            ),
        };
        if type_ == EventType::Normal {
            tracing::info!(source = %page.source, "{note}");
        } else {
            tracing::warn!(source = %page.source, "{note}");
        }
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Page".into(), secondary: None };
        if let Err(e) = recorder.publish(&ev, &object).await {
            tracing::warn!(error = %e, "cannot publish event");
        }
    });
}

/// Resolves the page a policy had open when it was deleted (`open`, from its last status), if
/// its spec still names a route (`route`). The outcome Event goes on the deleted object, which
/// `kubectl get events` still lists; the log says it too.
pub fn resolve_deleted(
    client: &kube::Client,
    pager: &Pager,
    recorder: &Recorder,
    object: ObjectReference,
    route: Option<&SecretKeyRef>,
    open: Option<&OpenPage>,
) {
    let (Some(open), Some(kind), Some(ns), Some(name)) = (open, &object.kind, &object.namespace, &object.name) else {
        return;
    };
    let key = format!("{ns}/{name}");
    let Some(route) = route else {
        tracing::warn!(policy = %key, dedup_key = %open.dedup_key, "deleted with a page open and no page route: close that incident by hand");
        return;
    };
    // Nothing else would ever close it.
    let summary = format!("levee: {kind} {key} was deleted with this page open: {}", open.summary);
    let details = json!({ "policy": key, "deleted": true, "since": open.since.0.to_string() });
    let page = Page::resolve(open.dedup_key.clone(), format!("{kind}/{key}"), summary, details);
    deliver(client, pager, recorder, ns.clone(), object, route.clone(), page);
}

/// The webhook body: the page as it is, marked so a receiver can tell levee's pages apart
/// (`levee.page`) from the ends of their incidents (`levee.resolve`).
fn webhook_body(page: &Page) -> serde_json::Value {
    let mut v = serde_json::to_value(page).unwrap_or_default();
    v["event"] = json!(match page.action {
        Action::Trigger => "levee.page",
        Action::Resolve => "levee.resolve",
    });
    v["summary"] = json!(crate::text::truncate(&page.summary, MAX_SUMMARY));
    v
}

/// A PagerDuty Events API v2 `trigger`, or a `resolve` (which takes no payload).
fn pagerduty_body(routing_key: &str, page: &Page) -> serde_json::Value {
    if page.action == Action::Resolve {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": page.dedup_key,
        });
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": page.dedup_key,
        "client": "levee",
        "payload": {
            "summary": crate::text::truncate(&page.summary, MAX_SUMMARY),
            "source": page.source,
            "severity": page.severity,
            "component": "levee",
            "custom_details": page.details,
        },
    })
}

/// A URL fit for logs and Events: no credentials, no query (webhook URLs carry tokens there).
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// An error with its causes, which reqwest keeps out of its top-level message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};

    use super::*;

    fn page() -> Page {
        Page {
            action: Action::Trigger,
            dedup_key: "levee/shop/edge/1".into(),
            summary: "surge: limit ASN 64512".into(),
            severity: Severity::Critical,
            source: "TrafficGuard/shop/edge".into(),
            details: json!({"mitigations": [{"name": "edge-asn-64512"}]}),
        }
    }

    /// A receiver on loopback answering with each of `statuses` in turn (the last repeats),
    /// recording every body it gets.
    async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        type Seen = Arc<Mutex<Vec<serde_json::Value>>>;
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route(
                "/hook",
                post(|State((seen, statuses)): State<(Seen, Arc<Vec<u16>>)>, Json(body): Json<serde_json::Value>| async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push(body);
                    let status = statuses[(seen.len() - 1).min(statuses.len() - 1)];
                    (StatusCode::from_u16(status).unwrap(), "pager says no")
                }),
            )
            .with_state((seen.clone(), Arc::new(statuses)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), seen)
    }

    #[test]
    fn routes_are_urls_or_routing_keys_and_anything_else_is_named_not_echoed() {
        assert!(matches!(Route::parse(" https://hooks.example/x?token=1\n"), Ok(Route::Webhook(_))));
        let key = "R0123456789abcdef0123456789abcde";
        assert_eq!(Route::parse(key).unwrap(), Route::PagerDuty { routing_key: key.into() });
        let e = Route::parse("hunter2").unwrap_err().to_string();
        assert!(e.contains("neither an http(s):// URL nor") && !e.contains("hunter2"), "{e}");
        assert!(Route::parse("http://").unwrap_err().to_string().contains("not a valid URL"));
    }

    #[tokio::test]
    async fn a_webhook_gets_the_page_as_json() {
        let (url, seen) = receiver(vec![200]).await;
        let pager = Pager::new(PAGERDUTY_EVENTS_URL).unwrap();
        pager.send(&Route::parse(&url).unwrap(), &page()).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["event"], "levee.page");
        assert_eq!(seen[0]["severity"], "critical");
        assert_eq!(seen[0]["summary"], "surge: limit ASN 64512");
        assert_eq!(seen[0]["details"]["mitigations"][0]["name"], "edge-asn-64512");
    }

    #[tokio::test]
    async fn a_pagerduty_route_gets_an_events_v2_trigger() {
        let (url, seen) = receiver(vec![202]).await;
        let pager = Pager::new(&url).unwrap();
        let key = "R0123456789abcdef0123456789abcde";
        pager.send(&Route::parse(key).unwrap(), &page()).await.unwrap();
        let body = seen.lock().unwrap()[0].clone();
        assert_eq!(body["routing_key"], key);
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], "levee/shop/edge/1");
        assert_eq!(body["payload"]["severity"], "critical");
        assert_eq!(body["payload"]["source"], "TrafficGuard/shop/edge");
        assert_eq!(body["payload"]["custom_details"]["mitigations"][0]["name"], "edge-asn-64512");
    }

    #[tokio::test]
    async fn a_resolve_closes_the_incident_under_the_same_key() {
        let (url, seen) = receiver(vec![202]).await;
        let pager = Pager::new(&url).unwrap();
        let key = "R0123456789abcdef0123456789abcde";
        let end = Page::resolve(page().dedup_key, page().source, "over".into(), json!({}));
        pager.send(&Route::parse(key).unwrap(), &end).await.unwrap();
        pager.send(&Route::parse(&url).unwrap(), &end).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], json!({"routing_key": key, "event_action": "resolve", "dedup_key": "levee/shop/edge/1"}));
        assert_eq!(seen[1]["event"], "levee.resolve");
        assert_eq!(seen[1]["dedup_key"], "levee/shop/edge/1");
        assert_eq!(seen[1]["summary"], "over");
    }

    #[tokio::test]
    async fn a_failing_pager_is_retried_and_a_refusal_is_not() {
        let (url, seen) = receiver(vec![503, 200]).await;
        let pager = Pager::new(PAGERDUTY_EVENTS_URL).unwrap();
        pager.send(&Route::parse(&url).unwrap(), &page()).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2, "retried after the 503");

        let (url, seen) = receiver(vec![400]).await;
        let e = pager.send(&Route::parse(&format!("{url}?token=secret")).unwrap(), &page()).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("HTTP 400") && msg.contains("pager says no"), "{msg}");
        assert!(!msg.contains("secret"), "the URL's query is not shown: {msg}");
        assert_eq!(seen.lock().unwrap().len(), 1, "a refusal is final");
    }

    #[tokio::test]
    async fn an_unreachable_pager_is_a_clear_error() {
        // A port nothing listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pager = Pager::new(PAGERDUTY_EVENTS_URL).unwrap();
        let route = Route::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        let msg = pager.send(&route, &page()).await.unwrap_err().to_string();
        assert!(msg.starts_with(&format!("cannot reach http://127.0.0.1:{port}/hook")), "{msg}");
    }
}
