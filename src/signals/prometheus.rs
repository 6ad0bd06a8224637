//! Prometheus instant and range queries through `prometheus-http-query`.

use std::{collections::BTreeMap, time::Duration};

use prometheus_http_query::Client;

use super::{DEFAULT_TIMEOUT, SignalError, with_timeout};

const NAME: &str = "prometheus";

/// A Prometheus server.
#[derive(Clone)]
pub struct Prometheus {
    client: Client,
    url: String,
    timeout: Duration,
}

/// One series of a range query: its labels and its samples.
pub type Series = (BTreeMap<String, String>, Vec<Sample>);

/// One sample: seconds since the epoch and a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub timestamp: f64,
    pub value: f64,
}

impl Prometheus {
    /// # Errors
    /// When `url` is not a valid base URL.
    pub fn new(url: &str) -> Result<Self, SignalError> {
        let client = Client::try_from(url).map_err(|e| SignalError::BadResponse {
            source_name: NAME.into(),
            detail: format!("invalid URL {url:?}: {e}"),
        })?;
        Ok(Self { client, url: url.to_owned(), timeout: DEFAULT_TIMEOUT })
    }

    fn error(&self, e: prometheus_http_query::Error) -> SignalError {
        match e {
            prometheus_http_query::Error::Client(c) => {
                SignalError::Unreachable { source_name: NAME.into(), target: self.url.clone(), detail: c.to_string() }
            }
            other => SignalError::BadResponse { source_name: NAME.into(), detail: other.to_string() },
        }
    }

    /// Evaluates `query` now; it must return exactly one series (a scalar counts as one).
    ///
    /// # Errors
    /// Unreachable server, timeout, a query Prometheus refuses (with its message), no series,
    /// or more than one series.
    pub async fn instant(&self, query: &str) -> Result<Sample, SignalError> {
        with_timeout(NAME, self.timeout, async {
            let res = self.client.query(query).get().await.map_err(|e| self.error(e))?;
            let data = res.data();
            if let Some(s) = data.as_scalar() {
                return Ok(Sample { timestamp: s.timestamp(), value: s.value() });
            }
            let vector = data.as_vector().ok_or_else(|| SignalError::BadResponse {
                source_name: NAME.into(),
                detail: format!("{query:?} did not return an instant vector"),
            })?;
            match vector.as_slice() {
                [one] => Ok(Sample { timestamp: one.sample().timestamp(), value: one.sample().value() }),
                [] => Err(SignalError::NoData { source_name: NAME.into(), what: query.to_owned() }),
                many => Err(SignalError::BadResponse {
                    source_name: NAME.into(),
                    detail: format!("{query:?} returned {} series; aggregate it to one (e.g. sum(...))", many.len()),
                }),
            }
        })
        .await
    }

    /// Evaluates `query` over `[start, end]` every `step` seconds; one series expected.
    ///
    /// # Errors
    /// As [`Prometheus::instant`].
    pub async fn range(&self, query: &str, start: i64, end: i64, step: f64) -> Result<Vec<Sample>, SignalError> {
        let mut series = self.range_series(query, start, end, step).await?;
        match series.len() {
            1 => Ok(series.remove(0).1),
            0 => Err(SignalError::NoData { source_name: NAME.into(), what: query.to_owned() }),
            n => Err(SignalError::BadResponse {
                source_name: NAME.into(),
                detail: format!("{query:?} returned {n} series; aggregate it to one"),
            }),
        }
    }

    /// Evaluates `query` over `[start, end]` every `step` seconds: every series with its
    /// labels.
    ///
    /// # Errors
    /// Unreachable server, timeout, a query Prometheus refuses (with its message), or a result
    /// that is not a range vector.
    pub async fn range_series(&self, query: &str, start: i64, end: i64, step: f64) -> Result<Vec<Series>, SignalError> {
        with_timeout(NAME, self.timeout * 3, async {
            let res = self.client.query_range(query, start, end, step).get().await.map_err(|e| self.error(e))?;
            let matrix = res.data().as_matrix().ok_or_else(|| SignalError::BadResponse {
                source_name: NAME.into(),
                detail: format!("{query:?} did not return a range vector"),
            })?;
            Ok(matrix
                .iter()
                .map(|r| {
                    let labels = r.metric().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let samples = r.samples().iter().map(|s| Sample { timestamp: s.timestamp(), value: s.value() });
                    (labels, samples.collect())
                })
                .collect())
        })
        .await
    }
}
