//! ECS services, through `UpdateService` desiredCount.

use super::{ActuatorError, Size, aws_error};

#[derive(Clone)]
pub struct EcsService {
    client: aws_sdk_ecs::Client,
    pub cluster: String,
    pub service: String,
}

impl EcsService {
    pub fn new(client: aws_sdk_ecs::Client, cluster: &str, service: &str) -> Self {
        Self { client, cluster: cluster.to_owned(), service: service.to_owned() }
    }

    fn label(&self) -> String {
        format!("ECS service {}/{}", self.cluster, self.service)
    }

    /// desiredCount and runningCount.
    pub async fn size(&self) -> Result<Size, ActuatorError> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| aws_error(&self.label(), e))?;
        let s = out.services().first().ok_or_else(|| ActuatorError::NotFound { target: self.label() })?;
        if s.status() == Some("INACTIVE") {
            return Err(ActuatorError::NotFound { target: self.label() });
        }
        Ok(Size { desired: i64::from(s.desired_count()), ready: i64::from(s.running_count()) })
    }

    /// Sets desiredCount. Repeating it is harmless.
    pub async fn scale(&self, replicas: i64) -> Result<(), ActuatorError> {
        let count = i32::try_from(replicas)
            .map_err(|_| ActuatorError::Api { target: self.label(), detail: format!("{replicas} is out of range") })?;
        self.client
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .desired_count(count)
            .send()
            .await
            .map_err(|e| aws_error(&self.label(), e))?;
        Ok(())
    }
}
