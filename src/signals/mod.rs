//! Signal sources: Prometheus, RabbitMQ, Amazon SQS, PostgreSQL. Each read has a timeout and fails with
//! an error that says which source, what was asked and what went wrong.

pub mod postgres;
pub mod prometheus;
pub mod rabbitmq;
pub mod sqs;

use std::time::Duration;

/// How long one read may take before it counts as lost. A scaling tick is 5 s, so a source
/// slower than this would delay every decision behind it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a signal could not be read. Every variant means "no data", never "zero".
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{source_name}: no answer within {after:?}")]
    Timeout { source_name: String, after: Duration },
    #[error("{source_name}: cannot reach {target}: {detail}")]
    Unreachable { source_name: String, target: String, detail: String },
    #[error("{source_name}: {detail}")]
    BadResponse { source_name: String, detail: String },
    #[error("{source_name}: {what} not found")]
    NotFound { source_name: String, what: String },
    #[error("{source_name}: query returned no data: {what}")]
    NoData { source_name: String, what: String },
}

/// Runs `fut` with a timeout, turning elapsed time into [`SignalError::Timeout`].
pub(crate) async fn with_timeout<T>(
    source_name: &str,
    after: Duration,
    fut: impl Future<Output = Result<T, SignalError>>,
) -> Result<T, SignalError> {
    tokio::time::timeout(after, fut)
        .await
        .unwrap_or_else(|_| Err(SignalError::Timeout { source_name: source_name.to_owned(), after }))
}
