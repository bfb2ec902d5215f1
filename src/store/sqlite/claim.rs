//! Claiming: which hosts have due jobs, and taking jobs under a lease (one `UPDATE …
//! RETURNING` is the claim); renewing, expiring and releasing leases.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::{lossy_text, SqliteStore};
use crate::follow::CrawlSpec;
use crate::job::{ClaimedJob, JobId, JobKind};
use crate::store::error::Doing;
use crate::store::{decisions, HostPick, StoreError};

/// Hosts picked for more than one job, per claim statement (each is a term of a compound
/// SELECT, and SQLite allows 500).
const CLAIM_HOSTS_PER_STATEMENT: usize = 200;

impl SqliteStore {
    /// Hosts that have admitted, queued jobs due now, in host order starting after `after`
    /// and going round to the first host up to `after` itself, at most `limit`. A loose
    /// index scan: two index seeks per host (is there a next host, is its earliest job
    /// due), however many jobs each host has.
    pub async fn hosts_with_due_jobs(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(concat!(
            "WITH RECURSIVE next_host(host, lap) AS (
                 SELECT (SELECT MIN(host) FROM jobs INDEXED BY jobs_claimable
                          WHERE status = 'queued' AND host IS NOT NULL AND host > ?1), 0
                 UNION ALL
                 -- Past the last host (NULL), the walk starts again from the first one
                 -- (lap 1) and stops at `after`.
                 SELECT (SELECT MIN(j.host) FROM jobs j INDEXED BY jobs_claimable
                          WHERE j.status = 'queued' AND j.host IS NOT NULL
                            AND j.host > COALESCE(n.host, '')),
                        n.lap + (n.host IS NULL)
                   FROM next_host n WHERE n.lap = 0 OR n.host < ?1
             )
             SELECT CAST(n.host AS BLOB) AS host FROM next_host n
              WHERE n.host IS NOT NULL AND (n.lap = 0 OR n.host <= ?1)
                AND (SELECT MIN(j.run_after) FROM jobs j INDEXED BY jobs_due
                      WHERE j.status = 'queued' AND j.host = n.host) <= ",
            now!(),
            "   AND NOT EXISTS (SELECT 1 FROM hosts h
                                 WHERE h.host = n.host AND h.paused_until > ",
            now!(),
            ") LIMIT ?2"
        ))
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&mut *self.writer().await.doing("listing hosts with due jobs")?)
        .await
        .doing("listing hosts with due jobs")?;
        // Leniently: `host` is ours, but a user could still write bytes that are not UTF-8.
        rows.iter()
            .map(|row| lossy_text(row, "host").map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()
            .doing("listing hosts with due jobs")
    }

    /// Claims up to `pick.jobs` due jobs of each picked host (highest priority, then oldest
    /// first): they become `running` under the lease token `lease_token`, which must be
    /// unique to this claim (see [`lease_token`]). All or nothing. With `conditional_get`,
    /// each job comes with the validators its URL was last fetched with.
    pub async fn claim(
        &self,
        lease_token: &str,
        lease: Duration,
        picks: &[HostPick],
        conditional_get: bool,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        const DOING: &str = "claiming jobs";
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        // A host picked for one job (the usual case with many hosts at polite rates) is
        // one element of a JSON array, so those picks share one statement text that stays
        // prepared. A host picked for more jobs needs a term of its own (its LIMIT), and
        // SQLite allows at most 500 terms in one compound SELECT.
        let (single, several) = decisions::split_picks(picks);
        let single = serde_json::to_string(&single).expect("host names serialize");
        let mut writer = self.writer().await.doing(DOING)?;
        if several.len() <= CLAIM_HOSTS_PER_STATEMENT {
            // One statement is all or nothing by itself: no BEGIN and COMMIT, which would
            // be two more round trips to SQLite's thread per claim.
            return claim_from(
                &mut writer,
                lease_token,
                lease,
                &single,
                &several,
                conditional_get,
            )
            .await;
        }
        let mut tx = writer.begin().await.doing(DOING)?;
        let mut claimed = Vec::new();
        for (i, chunk) in several.chunks(CLAIM_HOSTS_PER_STATEMENT).enumerate() {
            let single = if i == 0 { single.as_str() } else { "[]" };
            claimed.extend(
                claim_from(&mut tx, lease_token, lease, single, chunk, conditional_get).await?,
            );
        }
        tx.commit().await.doing(DOING)?;
        Ok(claimed)
    }

    /// Pushes back the expiry of the leases we hold. Only the attempts the scheduler is
    /// actually running are renewed, so anything it lost track of expires and comes back.
    /// Returns the leases renewed (job id, lease token).
    pub async fn renew_leases(
        &self,
        lease: Duration,
        held: &[&ClaimedJob],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let leases: Vec<(i64, &str)> = held.iter().map(|j| (j.id.0, j.lease.as_str())).collect();
        let leases = serde_json::to_string(&leases).expect("ids and strings serialize");
        sqlx::query_as(concat!(
            "UPDATE jobs SET lease_expires_at = ",
            now_plus!("?1"),
            " WHERE status = 'running'
                AND (id, lease_owner) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?2))
             RETURNING id, lease_owner"
        ))
        .bind(lease.as_secs_f64())
        .bind(leases)
        .fetch_all(&mut *self.writer().await.doing("renewing leases")?)
        .await
        .doing("renewing leases")
    }

    /// Jobs whose lease ran out (their daemon died) go back to `queued`, or to `failed` if
    /// that was their last attempt, so a job that crashes the daemon cannot loop forever.
    /// A `running` row without a lease (written by hand) counts as expired.
    pub async fn requeue_expired(&self, default_max_attempts: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE jobs
                SET status = CASE WHEN CAST(attempts AS INTEGER) >= MAX(1, CAST(COALESCE(max_attempts, ?1) AS INTEGER))
                                  THEN 'failed' ELSE 'queued' END,
                    error = CASE WHEN CAST(attempts AS INTEGER) >= MAX(1, CAST(COALESCE(max_attempts, ?1) AS INTEGER))
                                 THEN 'lease expired: the daemon running it stopped before finishing (gave up after '
                                      || attempts || ' attempts)'
                                 ELSE 'lease expired: the daemon running it stopped before finishing; queued again' END,
                    finished_at = CASE WHEN CAST(attempts AS INTEGER) >= MAX(1, CAST(COALESCE(max_attempts, ?1) AS INTEGER)) THEN ",
            now!(),
            " END,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = ",
            now!(),
            " WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < ",
            now!(),
            ")"
        ))
        .bind(default_max_attempts)
        .execute(&mut *self.writer().await.doing("re-queueing jobs with expired leases")?)
        .await
        .doing("re-queueing jobs with expired leases")?;
        Ok(done.rows_affected())
    }

    /// On shutdown: hands every job `owner` still holds back to the queue. The interrupted
    /// attempt is not counted against the job.
    pub async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE jobs
                SET status = 'queued', attempts = MAX(CAST(attempts AS INTEGER) - 1, 0),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = ",
            now!(),
            " WHERE status = 'running' AND substr(lease_owner, 1, length(?1)) = ?1"
        ))
        .bind(format!("{owner}/"))
        .execute(&mut *self.writer().await.doing("releasing jobs on shutdown")?)
        .await
        .doing("releasing jobs on shutdown")?;
        Ok(done.rows_affected())
    }
}

/// One claim statement. `single` is a JSON array of the hosts that get one job each: one
/// index probe per host, in a statement whose text does not change with their number.
/// Each of `several` (hosts that get more) is a term of a `UNION ALL` of index range scans.
async fn claim_from(
    connection: &mut SqliteConnection,
    lease_token: &str,
    lease: Duration,
    single: &str,
    several: &[&HostPick],
    conditional_get: bool,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let claimable = |host: &str, limit: &str| {
        format!(
            "SELECT id FROM jobs INDEXED BY jobs_claimable
              WHERE status = 'queued' AND host = {host} AND run_after <= {}
              ORDER BY priority DESC, id LIMIT {limit}",
            now!()
        )
    };
    let mut chosen = format!(
        "SELECT ({}) FROM json_each(?4) AS pick",
        claimable("pick.value", "1")
    );
    for i in 0..several.len() {
        let (host, limit) = (format!("?{}", 5 + 2 * i), format!("?{}", 6 + 2 * i));
        chosen += &format!(" UNION ALL SELECT id FROM ({})", claimable(&host, &limit));
    }
    // CASTs: users may have written any type into these columns; the values we return
    // must decode, or the claimed rows would sit in `running` with nobody working on them.
    let sql = format!(
        "UPDATE jobs
                SET status = 'running', lease_owner = ?1, lease_expires_at = {},
                    attempts = MAX(0, MIN(CAST(attempts AS INTEGER), 2147483647)) + 1,
                    updated_at = {}
              WHERE id IN ({chosen})
          RETURNING id, lease_owner, CAST(url AS BLOB) AS url, CAST(host AS BLOB) AS host, attempts,
                    COALESCE(root_id, id) AS root_id, CAST(max_depth AS INTEGER) AS max_depth,
                    CAST(depth AS INTEGER) AS depth, CAST(scope AS TEXT) AS scope,
                    CAST(allow AS BLOB) AS allow, CAST(deny AS BLOB) AS deny,
                    CAST(crawl_host AS BLOB) AS crawl_host,
                    CAST(max_attempts AS INTEGER) AS max_attempts,
                    CAST(selectors AS TEXT) AS selectors,
                    MAX(1, MIN(CAST(fetch_no AS INTEGER), 2147483647)) AS fetch_no,
                    CAST(canonical_url AS BLOB) AS canonical_url, CAST(kind AS TEXT) AS kind,
                    -- The version of this URL we hold: [ETag, Last-Modified, result id,
                    -- the selectors that result was parsed with]. As bytes, read leniently:
                    -- a version that does not decode means a plain GET, never a failed claim.
                    (SELECT CAST(json_array(CAST(v.etag AS TEXT), CAST(v.last_modified AS TEXT),
                                            CAST(v.result_id AS INTEGER),
                                            CAST(vj.selectors AS TEXT)) AS BLOB)
                       FROM validators v
                       JOIN results r ON r.id = v.result_id
                       JOIN jobs vj ON vj.id = r.job_id
                      WHERE ?3 AND v.url = jobs.canonical_url) AS known_version",
        now_plus!("?2"),
        now!(),
    );
    // Only placeholders are spliced in; every value is bound.
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(lease_token)
        .bind(lease.as_secs_f64())
        .bind(conditional_get)
        .bind(single);
    for pick in several {
        query = query.bind(pick.host.as_str()).bind(pick.jobs as i64);
    }
    let rows = query.fetch_all(connection).await.doing("claiming jobs")?;
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

fn claimed_job(row: &SqliteRow) -> Result<ClaimedJob, sqlx::Error> {
    let job = ClaimedJob {
        id: JobId(row.try_get("id")?),
        lease: row.try_get("lease_owner")?,
        url: lossy_text(row, "url")?.unwrap_or_default(),
        host: lossy_text(row, "host")?.unwrap_or_default(),
        attempt: row.try_get("attempts")?,
        max_attempts: row
            .try_get::<Option<i64>, _>("max_attempts")?
            // A limit below 1 still allows the attempt that was just claimed.
            .map(|n| n.clamp(1, i64::from(u32::MAX)) as u32),
        selectors: lossy_text(row, "selectors")?,
        root_id: row.try_get("root_id")?,
        crawl: CrawlSpec {
            max_depth: row.try_get("max_depth")?,
            depth: row.try_get("depth")?,
            scope: lossy_text(row, "scope")?.unwrap_or_default(),
            allow: lossy_text(row, "allow")?,
            deny: lossy_text(row, "deny")?,
            crawl_host: lossy_text(row, "crawl_host")?,
        },
        fetch_no: row.try_get("fetch_no")?,
        canonical_url: lossy_text(row, "canonical_url")?,
        known_version: None,
        kind: JobKind::from_column(lossy_text(row, "kind")?.as_deref()),
    };
    let known: Option<Vec<u8>> = row.try_get("known_version").ok().flatten();
    Ok(decisions::with_known_version(job, known.as_deref()))
}
