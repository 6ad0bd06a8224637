//! What an edge tells the operator every interval: how much traffic, from whom, and how its
//! upstreams fare. JSON over HTTP (`POST /v1/edge/reports` on the operator).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::api::traffic_guard::AggregationKey as Dimension;

/// The operator's path for edge reports.
pub const REPORT_PATH: &str = "/v1/edge/reports";

/// Largest report the operator accepts; a full report of 1,024 keys in five dimensions is
/// well under it.
pub const MAX_REPORT_BYTES: usize = 4 << 20;

/// One interval of one edge.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeReport {
    pub namespace: String,
    pub pool: String,
    /// Which edge (pod name or host, and process id).
    pub edge: String,
    /// Length of the interval counted.
    pub interval_secs: f64,
    /// Requests let through and counted (all but limited, blocked and allowlisted ones).
    pub requests: u64,
    /// Requests from a client IP not seen in the edge's memory window (about ten minutes).
    pub new_source_requests: u64,
    /// The heaviest keys of each dimension with their request counts, heaviest first.
    #[serde(default)]
    pub top: BTreeMap<Dimension, Vec<(String, u64)>>,
    /// Requests per traffic class.
    #[serde(default)]
    pub classes: BTreeMap<String, u64>,
    /// The ASN of each prefix in `top` that has one in the prefix table: it tells the
    /// prefixes an ISP's clients use apart from those a surge through the same ISP uses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefix_asns: BTreeMap<String, u32>,
    /// Requests answered 429 or 403 by a mitigation.
    pub limited: u64,
    /// Requests each mitigation (`namespace/name`) answered 429 or 403, or would have in shadow.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refused_by_rule: BTreeMap<String, u64>,
    /// Requests a shadow mitigation would have limited.
    pub shadow_limited: u64,
    /// Requests from allowlisted sources, left out of every other count.
    #[serde(default)]
    pub allowlisted_requests: u64,
    #[serde(default)]
    pub upstreams: Vec<UpstreamReport>,
}

/// One upstream as this edge sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamReport {
    pub name: String,
    /// `Closed`, `Open` or `HalfOpen`.
    pub breaker: String,
    pub calls: u64,
    pub failures: u64,
    /// Calls refused because the breaker was open.
    pub refused: u64,
}
