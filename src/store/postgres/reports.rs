//! What `crawlq status` and `run --exit-when-idle` read. Times come back as the UTC
//! ISO-8601 text the SQLite store reports, so `crawlq status` reads the same on both.

use super::PostgresStore;
use crate::store::error::Doing;
use crate::store::{
    ErrorGroup, HostQueue, StatusCounts, StatusLimits, StatusReport, StoreError, WorkerSummary,
};

const COUNT_BY_STATUS: &str = "SELECT status, COUNT(*) FROM jobs GROUP BY status";

impl PostgresStore {
    /// Whether any job is running or waiting; a job only waiting for its next recrawl
    /// does not count (so `run --exit-when-idle` ends after one round of a recrawl).
    pub async fn has_unfinished_jobs(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs
                             WHERE status = 'running'
                                OR (status = 'queued'
                                    AND NOT (fetch_no > 1 AND attempts = 0 AND run_after > now())))",
        )
        .fetch_one(&self.pool)
        .await
        .doing("checking for unfinished jobs")
    }

    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_BY_STATUS)
            .fetch_all(&self.pool)
            .await
            .doing("counting jobs")?;
        Ok(StatusCounts::from_rows(rows))
    }

    /// What `crawlq status` reports, read from one snapshot (a read-only repeatable-read
    /// transaction) so that its parts agree.
    pub async fn status_report(&self, limits: StatusLimits) -> Result<StatusReport, StoreError> {
        const DOING: &str = "reading the status report";
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .doing(DOING)?;
        let jobs = StatusCounts::from_rows(
            sqlx::query_as(COUNT_BY_STATUS)
                .fetch_all(&mut *tx)
                .await
                .doing(DOING)?,
        );
        let (not_yet_admitted, oldest_due_created_at): (i64, Option<String>) =
            sqlx::query_as(concat!(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND host IS NULL),
                        (SELECT ",
                iso!("created_at"),
                " FROM jobs WHERE status = 'queued' AND run_after <= now() ORDER BY id LIMIT 1)"
            ))
            .fetch_one(&mut *tx)
            .await
            .doing(DOING)?;
        let (fetched_last_minute, fetched_last_hour): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE fetched_at >= now() - interval '60 seconds'),
                    COUNT(*)
               FROM results
              WHERE fetched_at >= now() - interval '3600 seconds'",
        )
        .fetch_one(&mut *tx)
        .await
        .doing(DOING)?;
        let top_hosts: Vec<HostQueue> = sqlx::query_as(concat!(
            "SELECT q.host, q.queued, q.due,
                    (SELECT COUNT(*) FROM jobs r
                      WHERE r.status = 'running' AND r.host = q.host) AS running,
                    CASE WHEN h.paused_until > now() THEN ",
            iso!("h.paused_until"),
            " END AS paused_until,
                    CASE WHEN h.paused_until > now() THEN h.pause_reason END AS pause_reason
               FROM (SELECT host, COUNT(*) AS queued,
                            COUNT(*) FILTER (WHERE run_after <= now()) AS due
                       FROM jobs WHERE status = 'queued' AND host IS NOT NULL
                      GROUP BY host ORDER BY queued DESC, host LIMIT $1) q
               LEFT JOIN hosts h ON h.host = q.host
              ORDER BY q.queued DESC, q.host"
        ))
        .bind(i64::from(limits.top_hosts))
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        // As on SQLite: failed jobs by when they finished, jobs waiting for a retry by when
        // they were put back, grouped by the error without its retry bookkeeping.
        let recent_errors: Vec<ErrorGroup> = sqlx::query_as(concat!(
            "SELECT status, reason, COUNT(*) AS jobs, ",
            iso!("MAX(at)"),
            " AS last_seen
               FROM (SELECT status, at,
                            CASE WHEN strpos(error, ' (attempt ') > 0
                                     THEN substr(error, 1, strpos(error, ' (attempt ') - 1)
                                 WHEN strpos(error, ' (gave up after ') > 0
                                     THEN substr(error, 1, strpos(error, ' (gave up after ') - 1)
                                 ELSE COALESCE(error, '') END AS reason
                       FROM (SELECT status, finished_at AS at, error
                               FROM jobs
                              WHERE finished_at >= now() - interval '3600 seconds'
                                AND status = 'failed'
                             UNION ALL
                             SELECT status, updated_at, error
                               FROM jobs
                              WHERE status = 'queued' AND error IS NOT NULL AND attempts > 0
                                AND updated_at >= now() - interval '3600 seconds') AS recent
                    ) AS reasons
              GROUP BY status, reason
              ORDER BY jobs DESC, reason
              LIMIT $1"
        ))
        .bind(i64::from(limits.error_groups))
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        let workers: Vec<WorkerSummary> = sqlx::query_as(concat!(
            "SELECT id, hostname, pid, version, state, ",
            iso!("started_at"),
            " AS started_at, heartbeat_age_secs, claimed, done, failed, in_flight
               FROM worker_status
              WHERE state = 'running' OR heartbeat_at >= now() - interval '1 day'
              ORDER BY worker_status.started_at DESC, id
              LIMIT $1"
        ))
        .bind(i64::from(limits.workers))
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        tx.commit().await.doing(DOING)?;
        Ok(StatusReport {
            jobs,
            not_yet_admitted,
            oldest_due_created_at,
            fetched_last_minute,
            fetched_last_hour,
            top_hosts,
            recent_errors,
            workers,
        })
    }
}
