//! Actuators: read a target's replica counts and set the desired count. Every write is
//! idempotent and safe to repeat after a crash.

pub mod ecs;
pub mod kubernetes;
pub mod rds;

/// A target's size now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Replicas asked for.
    pub desired: i64,
    /// Replicas ready to serve.
    pub ready: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error("{target} not found")]
    NotFound { target: String },
    #[error("{target}: {detail}")]
    Api { target: String, detail: String },
}

/// The AWS error code of a service error (`DBInstanceAlreadyExists`, ...).
pub(crate) fn aws_code<E, R>(e: &aws_sdk_ecs::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code())
}

/// AWS errors as one line: the service's code and message, not the SDK's debug dump.
pub(crate) fn aws_error<E, R>(target: &str, e: aws_sdk_ecs::error::SdkError<E, R>) -> ActuatorError
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match e.as_service_error() {
        Some(se) => format!("{}: {}", se.code().unwrap_or("error"), se.message().unwrap_or("")),
        None => aws_sdk_ecs::error::DisplayErrorContext(&e).to_string(),
    };
    ActuatorError::Api { target: target.to_owned(), detail }
}
