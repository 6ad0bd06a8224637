//! RDS read replicas: created with `CreateDBInstanceReadReplica`, removed only if levee
//! created them.
//!
//! # Guarantees
//! Replicas levee creates are named `<prefix>-<n>` with the smallest free `n` and tagged
//! `levee.dev/policy`, so a crash between any two steps neither duplicates a replica (the
//! retried create finds the name taken) nor loses one (the next tick counts it). Replicas
//! without the tag are counted but never deleted.

use aws_sdk_rds::types::{DbInstance, Tag};

use super::{ActuatorError, Size, aws_code, aws_error};

/// The tag that marks a replica as levee's, with the owning policy as its value.
pub const OWNER_TAG: &str = "levee.dev/policy";

#[derive(Clone)]
pub struct ReadReplicas {
    client: aws_sdk_rds::Client,
    pub source: String,
    pub instance_class: String,
    pub prefix: String,
    /// `namespace/name` of the owning policy.
    pub owner: String,
}

impl ReadReplicas {
    pub fn new(client: aws_sdk_rds::Client, source: &str, instance_class: &str, prefix: &str, owner: &str) -> Self {
        Self {
            client,
            source: source.to_owned(),
            instance_class: instance_class.to_owned(),
            prefix: prefix.to_owned(),
            owner: owner.to_owned(),
        }
    }

    fn label(&self) -> String {
        format!("read replicas of RDS instance {}", self.source)
    }

    /// Every replica of the source (levee's and others), excluding ones being deleted.
    async fn replicas(&self) -> Result<Vec<DbInstance>, ActuatorError> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .describe_db_instances()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| aws_error(&self.label(), e))?;
            out.extend(
                page.db_instances()
                    .iter()
                    .filter(|i| {
                        i.read_replica_source_db_instance_identifier() == Some(self.source.as_str())
                            && i.db_instance_status() != Some("deleting")
                    })
                    .cloned(),
            );
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    fn ours(&self, i: &DbInstance) -> bool {
        i.tag_list().iter().any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(self.owner.as_str()))
    }

    /// All replicas of the source, and those of them that are available.
    pub async fn size(&self) -> Result<Size, ActuatorError> {
        let replicas = self.replicas().await?;
        let ready = replicas.iter().filter(|i| i.db_instance_status() == Some("available")).count();
        Ok(Size { desired: replicas.len() as i64, ready: ready as i64 })
    }

    /// Adds or removes levee's replicas until the source has `replicas` of them in all.
    /// Only levee's own replicas are ever deleted, newest name first.
    pub async fn scale(&self, replicas: i64) -> Result<(), ActuatorError> {
        let existing = self.replicas().await?;
        let current = existing.len() as i64;
        if replicas > current {
            let taken: Vec<&str> = existing.iter().filter_map(|i| i.db_instance_identifier()).collect();
            let mut n = 1;
            for _ in current..replicas {
                while taken.contains(&format!("{}-{n}", self.prefix).as_str()) {
                    n += 1;
                }
                let id = format!("{}-{n}", self.prefix);
                n += 1;
                let res = self
                    .client
                    .create_db_instance_read_replica()
                    .db_instance_identifier(&id)
                    .source_db_instance_identifier(&self.source)
                    .db_instance_class(&self.instance_class)
                    .tags(Tag::builder().key(OWNER_TAG).value(&self.owner).build())
                    .send()
                    .await;
                match res {
                    Ok(_) => {}
                    // A create retried after a crash: the replica exists and will be counted.
                    Err(e) if aws_code(&e) == Some("DBInstanceAlreadyExists") => {}
                    Err(e) => return Err(aws_error(&self.label(), e)),
                }
            }
        } else if replicas < current {
            let mut ours: Vec<&DbInstance> = existing.iter().filter(|i| self.ours(i)).collect();
            // Newest (highest-numbered) first: they carry the least warm cache.
            ours.sort_by_key(|i| {
                std::cmp::Reverse(
                    i.db_instance_identifier()
                        .and_then(|id| id.rsplit('-').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0),
                )
            });
            for i in ours.into_iter().take((current - replicas) as usize) {
                let id = i.db_instance_identifier().unwrap_or_default();
                let res =
                    self.client.delete_db_instance().db_instance_identifier(id).skip_final_snapshot(true).send().await;
                match res {
                    Ok(_) => {}
                    Err(e) if aws_code(&e) == Some("DBInstanceNotFound") => {}
                    Err(e) => return Err(aws_error(&self.label(), e)),
                }
            }
        }
        Ok(())
    }
}
