//! RabbitMQ queue depth and rates from the management HTTP API.

use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_TIMEOUT, SignalError, with_timeout};

const NAME: &str = "rabbitmq";

/// A RabbitMQ management endpoint.
#[derive(Clone)]
pub struct RabbitMq {
    http: reqwest::Client,
    base: reqwest::Url,
    user: String,
    password: String,
    timeout: Duration,
}

/// What a queue holds and how fast it moves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered to a consumer and not yet acknowledged (in progress).
    pub unacked: u64,
    /// Messages published per second.
    pub publish_rate: f64,
    /// Messages delivered per second.
    pub deliver_rate: f64,
    /// Consumers attached.
    pub consumers: u64,
}

impl QueueStats {
    /// Work not yet done: waiting plus in progress.
    pub fn backlog(&self) -> u64 {
        self.ready + self.unacked
    }
}

#[derive(Deserialize)]
struct QueueJson {
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    consumers: u64,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

#[derive(Deserialize, Default)]
struct MessageStats {
    #[serde(default)]
    publish_details: Option<Rate>,
    #[serde(default)]
    deliver_get_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    rate: f64,
}

impl RabbitMq {
    /// # Errors
    /// When `base` is not an http(s) URL.
    pub fn new(base: &str, user: &str, password: &str) -> Result<Self, SignalError> {
        let bad = |detail: String| SignalError::BadResponse { source_name: NAME.into(), detail };
        let mut base = reqwest::Url::parse(base).map_err(|e| bad(format!("invalid management URL {base:?}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder().build().map_err(|e| bad(e.to_string()))?;
        Ok(Self { http, base, user: user.into(), password: password.into(), timeout: DEFAULT_TIMEOUT })
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn send_error(&self, e: reqwest::Error) -> SignalError {
        SignalError::Unreachable { source_name: NAME.into(), target: self.base.to_string(), detail: e.to_string() }
    }

    /// Depth and rates of `queue` in `vhost`.
    ///
    /// # Errors
    /// Unreachable broker, timeout, bad credentials, unknown queue, or an unexpected body.
    pub async fn queue(&self, vhost: &str, queue: &str) -> Result<QueueStats, SignalError> {
        with_timeout(NAME, self.timeout, async {
            let res = self
                .http
                .get(self.url(&["api", "queues", vhost, queue]))
                .basic_auth(&self.user, Some(&self.password))
                .send()
                .await
                .map_err(|e| self.send_error(e))?;
            match res.status() {
                reqwest::StatusCode::NOT_FOUND => {
                    return Err(SignalError::NotFound {
                        source_name: NAME.into(),
                        what: format!("queue {queue:?} in vhost {vhost:?}"),
                    });
                }
                s if !s.is_success() => {
                    return Err(SignalError::BadResponse {
                        source_name: NAME.into(),
                        detail: format!("management API answered {s}"),
                    });
                }
                _ => {}
            }
            let q: QueueJson = res.json().await.map_err(|e| SignalError::BadResponse {
                source_name: NAME.into(),
                detail: format!("unexpected queue body: {e}"),
            })?;
            let stats = q.message_stats.unwrap_or_default();
            Ok(QueueStats {
                ready: q.messages_ready,
                unacked: q.messages_unacknowledged,
                publish_rate: stats.publish_details.map_or(0.0, |r| r.rate),
                deliver_rate: stats.deliver_get_details.map_or(0.0, |r| r.rate),
                consumers: q.consumers,
            })
        })
        .await
    }
}
