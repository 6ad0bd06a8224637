//! Replay lag of a PostgreSQL streaming replica.

use std::time::Duration;

use tokio_postgres::NoTls;

use super::{DEFAULT_TIMEOUT, SignalError, with_timeout};

const NAME: &str = "postgres";

/// How far a replica is behind its primary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplicaLag {
    /// Seconds since the last replayed transaction committed on the primary; 0 when the
    /// replica has replayed everything it received. A replica that has replayed nothing since
    /// it started while WAL waits counts as behind since it started.
    pub seconds: f64,
    /// WAL bytes received but not yet replayed.
    pub bytes: f64,
}

/// Reads the lag of the replica at `conninfo` (a libpq connection string).
///
/// # Errors
/// Unreachable server, timeout, or a server that is not a replica.
pub async fn replica_lag(conninfo: &str) -> Result<ReplicaLag, SignalError> {
    replica_lag_within(conninfo, DEFAULT_TIMEOUT).await
}

/// [`replica_lag`] with an explicit timeout.
pub async fn replica_lag_within(conninfo: &str, timeout: Duration) -> Result<ReplicaLag, SignalError> {
    with_timeout(NAME, timeout, async {
        let unreachable = |e: tokio_postgres::Error| SignalError::Unreachable {
            source_name: NAME.into(),
            target: redact(conninfo),
            detail: e.to_string(),
        };
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await.map_err(unreachable)?;
        let conn = tokio::spawn(connection);
        // Lag in seconds is only meaningful while WAL is outstanding: an idle primary sends
        // nothing, and now() - last replay time would grow without any real lag. A replica
        // restarted and stuck has no last replay time at all; it must not read as caught up.
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(),
                        COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::float8,
                        CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                             ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()),
                                           EXTRACT(EPOCH FROM now() - pg_postmaster_start_time()), 0) END::float8",
                &[],
            )
            .await
            .map_err(|e| SignalError::BadResponse { source_name: NAME.into(), detail: e.to_string() })?;
        conn.abort();
        let in_recovery: bool = row.get(0);
        if !in_recovery {
            return Err(SignalError::BadResponse {
                source_name: NAME.into(),
                detail: format!("{} is a primary, not a replica", redact(conninfo)),
            });
        }
        Ok(ReplicaLag { bytes: row.get::<_, f64>(1).max(0.0), seconds: row.get::<_, f64>(2).max(0.0) })
    })
    .await
}

/// A connection string without its password, for error messages.
fn redact(conninfo: &str) -> String {
    conninfo
        .split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=***" } else { kv })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_password() {
        assert_eq!(super::redact("host=a password=secret user=b"), "host=a password=*** user=b");
    }
}
