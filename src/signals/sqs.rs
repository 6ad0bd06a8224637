//! Depth of an Amazon SQS queue, from `GetQueueAttributes`.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use super::{DEFAULT_TIMEOUT, SignalError, with_timeout};

const NAME: &str = "sqs";

/// What a queue holds. SQS counts are approximate (eventually consistent), as its
/// documentation says; they lag by seconds, which a backlog signal tolerates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages available to receive.
    pub visible: u64,
    /// Messages received by a consumer and not yet deleted (in progress).
    pub in_flight: u64,
}

impl QueueDepth {
    /// Work not yet done: waiting plus in progress, as for a RabbitMQ queue.
    pub fn backlog(&self) -> u64 {
        self.visible + self.in_flight
    }
}

/// Reads the depth of the queue at `queue_url`.
///
/// # Errors
/// Unreachable endpoint, timeout, unknown queue, denied access, or an answer without counts.
pub async fn queue_depth(client: &aws_sdk_sqs::Client, queue_url: &str) -> Result<QueueDepth, SignalError> {
    queue_depth_within(client, queue_url, DEFAULT_TIMEOUT).await
}

/// [`queue_depth`] with an explicit timeout.
pub async fn queue_depth_within(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    timeout: Duration,
) -> Result<QueueDepth, SignalError> {
    with_timeout(NAME, timeout, async {
        let out = client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(se) if se.is_queue_does_not_exist() => {
                    SignalError::NotFound { source_name: NAME.into(), what: format!("queue {queue_url}") }
                }
                Some(_) => SignalError::BadResponse {
                    source_name: NAME.into(),
                    detail: crate::actuators::aws_error(queue_url, e).to_string(),
                },
                None => SignalError::Unreachable {
                    source_name: NAME.into(),
                    target: queue_url.to_owned(),
                    detail: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                },
            })?;
        let attrs = out.attributes();
        let count = |name: QueueAttributeName| -> Result<u64, SignalError> {
            let raw = attrs.and_then(|a| a.get(&name)).ok_or_else(|| SignalError::NoData {
                source_name: NAME.into(),
                what: format!("{} of {queue_url}", name.as_str()),
            })?;
            raw.parse().map_err(|_| SignalError::BadResponse {
                source_name: NAME.into(),
                detail: format!("{} of {queue_url} is {raw:?}, not a count", name.as_str()),
            })
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages)?,
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

    use super::*;

    fn client(endpoint: &str) -> aws_sdk_sqs::Client {
        let cfg = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        aws_sdk_sqs::Client::from_conf(cfg)
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_an_error_naming_the_queue_not_a_zero() {
        // Port 9 (discard) on loopback: nothing listens there in a test environment.
        let url = "http://127.0.0.1:9/123456789012/jobs";
        let e = queue_depth_within(&client("http://127.0.0.1:9"), url, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(e, SignalError::Unreachable { .. } | SignalError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().starts_with("sqs: "), "{e}");
    }

    #[test]
    fn backlog_is_waiting_plus_in_flight() {
        assert_eq!(QueueDepth { visible: 7, in_flight: 3 }.backlog(), 10);
    }
}
