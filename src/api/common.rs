//! Types shared by every policy kind: modes, durations, references and status conditions.

use std::{borrow::Cow, fmt, str::FromStr};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether a policy acts or only records what it would have done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Act: scale, create mitigations, bootstrap.
    #[default]
    Enforce,
    /// Decide and record in status and metrics, but change nothing.
    Shadow,
}

/// A duration written as in Kubernetes and Go (`90s`, `5m`, `1h30m`, `250ms`).
///
/// Only whole numbers with the units `ms`, `s`, `m` and `h` are accepted, so the same
/// string parses identically here and in the apiserver's CEL `duration()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// The schema pattern for [`Duration`]; kept in one place so CRD and parser agree.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 30s, 5m, 1h30m, 250ms)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError { input: s.to_owned(), reason };
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("each part must start with a whole number"));
            }
            let value: u64 = rest[..digits].parse().map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ms" => std::time::Duration::from_millis(1),
                "s" => std::time::Duration::from_secs(1),
                "m" => std::time::Duration::from_secs(60),
                "h" => std::time::Duration::from_secs(3600),
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            let part = unit
                .checked_mul(u32::try_from(value).map_err(|_| err("number too large"))?)
                .ok_or_else(|| err("too long"))?;
            total = total.checked_add(part).ok_or_else(|| err("too long"))?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = ms / 1000;
        let (h, m);
        (h, secs) = (secs / 3600, secs % 3600);
        (m, secs) = (secs / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // maxLength bounds the cost the apiserver estimates for CEL rules using duration().
        json_schema!({ "type": "string", "pattern": DURATION_PATTERN, "maxLength": 32 })
    }
}

/// A key in a Secret in the policy's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the policy.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A page levee sent and has not resolved yet. It is kept in status so that an operator
/// restarted mid-incident resolves it when what paged is over, instead of leaving it open for
/// someone to close by hand or paging again under a new key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenPage {
    /// The dedup key the page went under; its resolve goes under the same.
    pub dedup_key: String,
    /// What paged: `AboveMax`, `SignalLost` or `TargetError` on a ScalingPolicy, `Incident` on
    /// a TrafficGuard, `ColdStart` or `DeathSpiral` on a BootstrapPolicy.
    pub reason: String,
    /// When what paged began.
    pub since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What is wrong, in one line.
    pub summary: String,
}

/// The standard condition types levee writes on every policy.
pub mod condition {
    /// The policy is valid and being acted on.
    pub const READY: &str = "Ready";
    /// The policy cannot be acted on; the message names the offending field.
    pub const INVALID: &str = "Invalid";
}

/// Status fields every policy kind shares, for code that handles all kinds alike.
pub trait PolicyStatus {
    fn conditions(&self) -> &[Condition];
    fn observed_generation(&self) -> Option<i64>;
}

macro_rules! impl_policy_status {
    ($($t:ty),*) => {$(
        impl $crate::api::common::PolicyStatus for $t {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
        }
    )*};
}
pub(crate) use impl_policy_status;

/// A Kubernetes time in Unix seconds, as the engine and the edges count time.
pub fn unix_secs(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// Unix seconds as a Kubernetes time; now, for seconds out of its range.
pub fn time_at(unix_secs: f64) -> Time {
    Time(Timestamp::from_millisecond((unix_secs * 1000.0) as i64).unwrap_or_else(|_| Timestamp::now()))
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    unix_secs(&Time(Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let cases = [("30s", 30_000), ("5m", 300_000), ("1h30m", 5_400_000), ("250ms", 250), ("0s", 0)];
        for (s, ms) in cases {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms, "{s}");
        }
    }

    #[test]
    fn refuses_what_cel_would_refuse() {
        for s in ["", "5", "m", "1.5h", "5 m", "3d", "-5s", "5minutes"] {
            assert!(s.parse::<Duration>().is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["30s", "5m", "1h30m", "250ms", "2h", "1h0m1s"] {
            let d: Duration = s.parse().unwrap();
            let again: Duration = d.to_string().parse().unwrap();
            assert_eq!(d, again);
        }
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
    }

    #[test]
    fn error_names_the_input() {
        let e = "3d".parse::<Duration>().unwrap_err();
        assert!(e.to_string().contains("\"3d\""), "{e}");
    }
}
