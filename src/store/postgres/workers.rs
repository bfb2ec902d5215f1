//! The `workers` table: one row per daemon process, its heartbeat and counters.

use std::time::Duration;

use super::PostgresStore;
use crate::store::error::Doing;
use crate::store::{StoreError, WorkerCounters, WorkerHealth, WorkerIdentity};

impl PostgresStore {
    /// Adds this daemon's row.
    pub async fn register_worker(&self, me: &WorkerIdentity) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, hostname, pid, version, heartbeat_every_secs)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&me.id)
        .bind(&me.hostname)
        .bind(i64::from(me.pid))
        .bind(&me.version)
        .bind(me.heartbeat_every.as_secs_f64())
        .execute(&self.pool)
        .await
        .doing("registering this daemon in workers")?;
        Ok(())
    }

    /// Refreshes a worker's heartbeat and counters; `stopped` marks a clean exit.
    pub async fn heartbeat(
        &self,
        id: &str,
        counters: &WorkerCounters,
        stopped: bool,
    ) -> Result<(), StoreError> {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE workers SET heartbeat_at = now(),
                    stopped_at = CASE WHEN $9 THEN now() END,
                    claimed = $2, done = $3, failed = $4, retried = $5, skipped = $6,
                    bytes = $7, in_flight = $8
              WHERE id = $1",
        )
        .bind(id)
        .bind(clamp(counters.claimed))
        .bind(clamp(counters.done))
        .bind(clamp(counters.failed))
        .bind(clamp(counters.retried))
        .bind(clamp(counters.skipped))
        .bind(clamp(counters.bytes))
        .bind(clamp(counters.in_flight))
        .bind(stopped)
        .execute(&self.pool)
        .await
        .doing("writing this daemon's heartbeat")?;
        if !stopped {
            self.lock.keep(self).await;
        }
        Ok(())
    }

    /// The newest daemon that registered from `hostname` (in a container: this one).
    pub async fn newest_worker_on(
        &self,
        hostname: &str,
    ) -> Result<Option<WorkerHealth>, StoreError> {
        let row: Option<(String, i64, String, f64)> = sqlx::query_as(
            "SELECT id, pid, state, heartbeat_age_secs FROM worker_status
              WHERE hostname = $1 ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .bind(hostname)
        .fetch_optional(&self.pool)
        .await
        .doing("reading workers")?;
        Ok(row.map(|(id, pid, state, age)| WorkerHealth {
            id,
            pid,
            state,
            heartbeat_age: Duration::from_secs_f64(age.max(0.0)),
        }))
    }
}
