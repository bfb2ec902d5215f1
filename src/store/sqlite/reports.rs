//! What `crawlq status` and `run --exit-when-idle` read.

use sqlx::Connection;

use super::SqliteStore;
use crate::store::error::Doing;
use crate::store::{
    ErrorGroup, HostQueue, StatusCounts, StatusLimits, StatusReport, StoreError, WorkerSummary,
};

const COUNT_BY_STATUS: &str = "SELECT status, COUNT(*) FROM jobs GROUP BY status";

impl SqliteStore {
    /// Whether any job is running or waiting; a job only waiting for its next recrawl
    /// does not count (so `run --exit-when-idle` ends after one round of a recrawl).
    pub async fn has_unfinished_jobs(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM jobs
                             WHERE status = 'running'
                                OR (status = 'queued'
                                    AND NOT (fetch_no > 1 AND attempts = 0 AND run_after > ",
            now!(),
            ")))"
        ))
        .fetch_one(&mut *self.writer().await.doing("checking for unfinished jobs")?)
        .await
        .doing("checking for unfinished jobs")
    }

    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_BY_STATUS)
            .fetch_all(&mut *self.writer().await.doing("counting jobs")?)
            .await
            .doing("counting jobs")?;
        Ok(StatusCounts::from_rows(rows))
    }

    /// What `crawlq status` reports, read in one transaction so that its parts agree:
    /// the `limits.top_hosts` hosts by queue depth, the errors of the last hour grouped by
    /// reason (at most `limits.error_groups`), and workers running, stale or stopped within
    /// the last day (at most `limits.workers`).
    pub async fn status_report(&self, limits: StatusLimits) -> Result<StatusReport, StoreError> {
        const DOING: &str = "reading the status report";
        let mut writer = self.writer().await.doing(DOING)?;
        let mut tx = writer.begin().await.doing(DOING)?;
        let jobs = StatusCounts::from_rows(
            sqlx::query_as(COUNT_BY_STATUS)
                .fetch_all(&mut *tx)
                .await
                .doing(DOING)?,
        );
        // The oldest due job by id walks the status index in order and stops early.
        let (not_yet_admitted, oldest_due_created_at): (i64, Option<String>) =
            sqlx::query_as(concat!(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND host IS NULL),
                        (SELECT created_at FROM jobs INDEXED BY jobs_status
                          WHERE status = 'queued' AND run_after <= ",
                now!(),
                " ORDER BY id LIMIT 1)"
            ))
            .fetch_one(&mut *tx)
            .await
            .doing(DOING)?;
        let (fetched_last_minute, fetched_last_hour): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(fetched_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-60 seconds')), 0),
                    COUNT(*)
               FROM results
              WHERE fetched_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')",
        )
        .fetch_one(&mut *tx)
        .await
        .doing(DOING)?;
        let top_hosts: Vec<HostQueue> = sqlx::query_as(concat!(
            "SELECT q.host, q.queued, q.due,
                    (SELECT COUNT(*) FROM jobs r
                      WHERE r.status = 'running' AND r.host = q.host) AS running,
                    CASE WHEN h.paused_until > ",
            now!(),
            " THEN h.paused_until END AS paused_until,
                    CASE WHEN h.paused_until > ",
            now!(),
            " THEN h.pause_reason END AS pause_reason
               FROM (SELECT host, COUNT(*) AS queued, SUM(run_after <= ",
            now!(),
            ") AS due
                       FROM jobs WHERE status = 'queued' AND host IS NOT NULL
                      GROUP BY host ORDER BY queued DESC, host LIMIT ?1) q
               LEFT JOIN hosts h ON h.host = q.host
              ORDER BY q.queued DESC, q.host"
        ))
        .bind(limits.top_hosts)
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        // Failed jobs by when they finished; jobs waiting for a retry (attempts > 0: a
        // recrawl waiting for its next fetch has 0) by when they were put back. Retry
        // messages end in "(attempt N of M; retrying in X s)" and final ones in "(gave up
        // after N attempts)": that is cut off so that one cause is one group.
        let recent_errors: Vec<ErrorGroup> = sqlx::query_as(
            "SELECT status, reason, COUNT(*) AS jobs, MAX(at) AS last_seen
               FROM (SELECT status, at,
                            CASE WHEN instr(error, ' (attempt ') > 0
                                     THEN substr(error, 1, instr(error, ' (attempt ') - 1)
                                 WHEN instr(error, ' (gave up after ') > 0
                                     THEN substr(error, 1, instr(error, ' (gave up after ') - 1)
                                 ELSE IFNULL(error, '') END AS reason
                       FROM (SELECT status, finished_at AS at, error
                               FROM jobs INDEXED BY jobs_finished_at
                              WHERE finished_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')
                                AND status = 'failed'
                             UNION ALL
                             SELECT status, updated_at, error
                               FROM jobs INDEXED BY jobs_retrying
                              WHERE status = 'queued' AND error IS NOT NULL AND attempts > 0
                                AND updated_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')))
              GROUP BY status, reason
              ORDER BY jobs DESC, reason
              LIMIT ?1",
        )
        .bind(limits.error_groups)
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        let workers: Vec<WorkerSummary> = sqlx::query_as(
            "SELECT id, hostname, pid, version, state, started_at, heartbeat_age_secs,
                    claimed, done, failed, in_flight
               FROM worker_status
              WHERE state = 'running'
                 OR heartbeat_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')
              ORDER BY started_at DESC, id
              LIMIT ?1",
        )
        .bind(limits.workers)
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
