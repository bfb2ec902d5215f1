//! Claiming: which hosts have due jobs, and taking jobs under a lease. The claim is one
//! `UPDATE … RETURNING` whose rows are chosen in a `MATERIALIZED` CTE with `FOR UPDATE
//! SKIP LOCKED`: materialized so the planner cannot fold the choice into the UPDATE and
//! update more rows than each host's LIMIT, and SKIP LOCKED so that daemons claiming at
//! once take different jobs instead of waiting on each other's.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::Row;

use super::PostgresStore;
use crate::follow::CrawlSpec;
use crate::job::ClaimedJob;
use crate::job::{JobId, JobKind};
use crate::store::error::Doing;
use crate::store::{decisions, HostPick, StoreError};

impl PostgresStore {
    /// Hosts with admitted, queued jobs due now and no pause, in host order after `after`,
    /// going round to the first host up to `after` itself, at most `limit`: a loose index
    /// scan (two index seeks per host, however many jobs each has), as on SQLite. `host`
    /// is `COLLATE "C"`, so the order is the bytes' order whatever the server's locale.
    pub async fn hosts_with_due_jobs(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "WITH RECURSIVE next_host(host, lap) AS (
                 SELECT (SELECT MIN(host) FROM jobs
                          WHERE status = 'queued' AND host IS NOT NULL AND host > $1), 0
                 UNION ALL
                 -- Past the last host (NULL), the walk starts again from the first one
                 -- (lap 1) and stops at `after`.
                 SELECT (SELECT MIN(j.host) FROM jobs j
                          WHERE j.status = 'queued' AND j.host IS NOT NULL
                            AND j.host > COALESCE(n.host, '')),
                        n.lap + (n.host IS NULL)::int
                   FROM next_host n WHERE n.lap = 0 OR n.host < $1
             )
             SELECT n.host FROM next_host n
              WHERE n.host IS NOT NULL AND (n.lap = 0 OR n.host <= $1)
                AND (SELECT MIN(j.run_after) FROM jobs j
                      WHERE j.status = 'queued' AND j.host = n.host) <= now()
                AND NOT EXISTS (SELECT 1 FROM hosts h
                                 WHERE h.host = n.host AND h.paused_until > now())
              LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .doing("listing hosts with due jobs")
    }

    /// Claims up to `pick.jobs` due jobs of each picked host (highest priority, then oldest
    /// first) in one statement, all or nothing.
    pub async fn claim(
        &self,
        lease_token: &str,
        lease: Duration,
        picks: &[HostPick],
        conditional_get: bool,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let hosts: Vec<&str> = picks.iter().map(|pick| pick.host.as_str()).collect();
        let counts: Vec<i64> = picks.iter().map(|pick| pick.jobs as i64).collect();
        let rows = sqlx::query(concat!(
            "WITH picked AS MATERIALIZED (
                 SELECT j.id
                   FROM unnest($3::text[], $4::bigint[]) AS p(host, n)
                  CROSS JOIN LATERAL (
                        SELECT id FROM jobs
                         WHERE status = 'queued' AND host = p.host AND run_after <= now()
                         ORDER BY priority DESC, id
                         LIMIT p.n
                           FOR UPDATE SKIP LOCKED) j)
             UPDATE jobs
                SET status = 'running', lease_owner = $1, lease_expires_at = ",
            now_plus!("$2"),
            ",
                    attempts = LEAST(GREATEST(attempts, 0), 2147483647) + 1,
                    updated_at = now()
              -- An array, not a join: the planner guesses 100 rows for `unnest` and would
              -- hash all of `jobs` to find a handful by id.
              WHERE jobs.id = ANY (ARRAY(SELECT id FROM picked))
          RETURNING jobs.id, jobs.lease_owner, jobs.url, jobs.host, jobs.attempts,
                    COALESCE(jobs.root_id, jobs.id) AS root_id, jobs.max_depth, jobs.depth,
                    jobs.scope, jobs.allow, jobs.deny, jobs.crawl_host, jobs.max_attempts,
                    jobs.selectors::text AS selectors,
                    GREATEST(1, LEAST(jobs.fetch_no, 2147483647)) AS fetch_no,
                    jobs.canonical_url, jobs.kind,
                    -- The version of this URL we hold: [ETag, Last-Modified, result id,
                    -- the selectors that result was parsed with].
                    (SELECT jsonb_build_array(v.etag, v.last_modified, v.result_id,
                                              vj.selectors::text)::text
                       FROM validators v
                       JOIN results r ON r.id = v.result_id
                       JOIN jobs vj ON vj.id = r.job_id
                      WHERE $5 AND v.url = jobs.canonical_url) AS known_version"
        ))
        .bind(lease_token)
        .bind(lease.as_secs_f64())
        .bind(&hosts)
        .bind(&counts)
        .bind(conditional_get)
        .fetch_all(&self.pool)
        .await
        .doing("claiming jobs")?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match claimed_job(row) {
                Ok(job) => claimed.push(job),
                // Not renewed (we do not hold it), so its lease expires and it comes back.
                Err(e) => {
                    tracing::error!(error = %e, "a claimed row could not be read; it will be re-queued when its lease expires")
                }
            }
        }
        Ok(claimed)
    }

    /// Pushes back the expiry of the leases we hold, and only those. Returns the leases
    /// renewed (job id, lease token).
    pub async fn renew_leases(
        &self,
        lease: Duration,
        held: &[&ClaimedJob],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let ids: Vec<i64> = held.iter().map(|j| j.id.0).collect();
        let leases: Vec<&str> = held.iter().map(|j| j.lease.as_str()).collect();
        sqlx::query_as(concat!(
            "UPDATE jobs SET lease_expires_at = ",
            now_plus!("$1"),
            "  FROM unnest($2::bigint[], $3::text[]) AS l(id, lease)
              WHERE jobs.id = ANY ($2::bigint[]) AND jobs.id = l.id
                AND jobs.lease_owner = l.lease AND jobs.status = 'running'
          RETURNING jobs.id, jobs.lease_owner"
        ))
        .bind(lease.as_secs_f64())
        .bind(&ids)
        .bind(&leases)
        .fetch_all(&self.pool)
        .await
        .doing("renewing leases")
    }

    /// Jobs whose lease ran out go back to `queued`, or to `failed` after their last
    /// attempt. A `running` row without a lease (written by hand) counts as expired.
    pub async fn requeue_expired(&self, default_max_attempts: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs
                SET status = CASE WHEN attempts >= GREATEST(1, COALESCE(max_attempts, $1))
                                  THEN 'failed' ELSE 'queued' END,
                    error = CASE WHEN attempts >= GREATEST(1, COALESCE(max_attempts, $1))
                                 THEN 'lease expired: the daemon running it stopped before finishing (gave up after '
                                      || attempts || ' attempts)'
                                 ELSE 'lease expired: the daemon running it stopped before finishing; queued again' END,
                    finished_at = CASE WHEN attempts >= GREATEST(1, COALESCE(max_attempts, $1))
                                       THEN now() END,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
              WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < now())",
        )
        .bind(i64::from(default_max_attempts))
        .execute(&self.pool)
        .await
        .doing("re-queueing jobs with expired leases")?;
        Ok(done.rows_affected())
    }

    /// On shutdown: hands every job `owner` still holds back to the queue, the interrupted
    /// attempt not counted.
    pub async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs
                SET status = 'queued', attempts = GREATEST(attempts - 1, 0),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
              WHERE status = 'running' AND starts_with(lease_owner, $1)",
        )
        .bind(format!("{owner}/"))
        .execute(&self.pool)
        .await
        .doing("releasing jobs on shutdown")?;
        Ok(done.rows_affected())
    }
}

fn claimed_job(row: &PgRow) -> Result<ClaimedJob, sqlx::Error> {
    let job = ClaimedJob {
        id: JobId(row.try_get("id")?),
        lease: row.try_get("lease_owner")?,
        url: row.try_get("url")?,
        host: row.try_get("host")?,
        attempt: row.try_get("attempts")?,
        max_attempts: row
            .try_get::<Option<i64>, _>("max_attempts")?
            // A limit below 1 still allows the attempt that was just claimed.
            .map(|n| n.clamp(1, i64::from(u32::MAX)) as u32),
        selectors: row.try_get("selectors")?,
        root_id: row.try_get("root_id")?,
        crawl: CrawlSpec {
            max_depth: row.try_get("max_depth")?,
            depth: row.try_get("depth")?,
            scope: row.try_get("scope")?,
            allow: row.try_get("allow")?,
            deny: row.try_get("deny")?,
            crawl_host: row.try_get("crawl_host")?,
        },
        fetch_no: row.try_get("fetch_no")?,
        canonical_url: row.try_get("canonical_url")?,
        known_version: None,
        kind: JobKind::from_column(row.try_get::<Option<String>, _>("kind")?.as_deref()),
    };
    let known: Option<String> = row.try_get("known_version").ok().flatten();
    Ok(decisions::with_known_version(
        job,
        known.as_deref().map(str::as_bytes),
    ))
}
