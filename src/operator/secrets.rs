//! Reading one key of a Secret that a policy names (`SecretKeyRef`).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::SecretKeyRef;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read Secret {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("key {key:?} of Secret {name:?} not found")]
    NotFound { name: String, key: String },
    #[error("key {key:?} of Secret {name:?} is not UTF-8")]
    NotUtf8 { name: String, key: String },
}

/// The value of `r` in namespace `ns`, trimmed (a trailing newline from `kubectl create secret
/// --from-file` is not part of a URL or a password).
pub async fn read(client: &Client, ns: &str, r: &SecretKeyRef) -> Result<String, SecretError> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&r.name)
        .await
        .map_err(|source| SecretError::Read { name: r.name.clone(), source })?;
    let bytes = s.as_ref().and_then(|s| s.data.as_ref()).and_then(|d| d.get(&r.key)).map(|b| b.0.clone());
    let not_found = || SecretError::NotFound { name: r.name.clone(), key: r.key.clone() };
    let value = bytes.ok_or_else(not_found)?;
    String::from_utf8(value)
        .map(|v| v.trim().to_owned())
        .map_err(|_| SecretError::NotUtf8 { name: r.name.clone(), key: r.key.clone() })
}
