//! Admission: new rows read, then given their host and canonical URL, failed with a reason,
//! or skipped as already in their crawl — a batch in four statements, in one transaction.

use std::collections::HashMap;

use sqlx::Row;

use super::{json, PostgresStore};
use crate::follow::CrawlSpec;
use crate::job::{Admitted, JobId, JobKind};
use crate::store::error::Doing;
use crate::store::{Admissions, NewJob, StoreError};

impl PostgresStore {
    pub async fn insert_job(
        &self,
        url: &str,
        priority: i64,
        selectors: Option<&str>,
        kind: JobKind,
    ) -> Result<JobId, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (url, priority, selectors, kind) VALUES ($1, $2, $3::jsonb, $4)
             RETURNING id",
        )
        .bind(super::text(url).as_ref())
        .bind(priority)
        .bind(selectors)
        .bind(kind.as_str())
        .fetch_one(&self.pool)
        .await
        .doing("adding a job")?;
        Ok(JobId(id))
    }

    pub async fn unadmitted(&self, limit: usize) -> Result<Vec<NewJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, url, selectors::text AS selectors, scope, allow, deny
               FROM jobs
              WHERE status = 'queued' AND host IS NULL
              ORDER BY id LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .doing("reading new jobs")?;
        rows.iter()
            .map(|row| {
                let url: String = row.try_get("url")?;
                Ok(NewJob {
                    id: JobId(row.try_get("id")?),
                    url_bytes: url.clone().into_bytes(),
                    url,
                    selectors: row.try_get("selectors")?,
                    crawl: CrawlSpec {
                        scope: row.try_get("scope")?,
                        allow: row.try_get("allow")?,
                        deny: row.try_get("deny")?,
                        ..CrawlSpec::default()
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading new jobs")
    }

    /// Records admission decisions. Every statement is guarded as on SQLite: a row the
    /// user changed since it was read (status or URL) is left for the next turn.
    pub async fn record_admissions(
        &self,
        decisions: &[(&NewJob, Result<Admitted, String>)],
    ) -> Result<Admissions, StoreError> {
        const DOING: &str = "admitting new jobs";
        let mut counts = Admissions::default();
        if decisions.is_empty() {
            return Ok(counts);
        }
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for (job, decision) in decisions {
            match decision {
                Ok(a) => admitted.push(serde_json::json!({
                    "id": job.id.0, "url": job.url, "host": a.host,
                    "canonical_url": a.canonical_url,
                })),
                Err(reason) => refused.push(serde_json::json!({
                    "id": job.id.0, "url": job.url, "reason": reason,
                })),
            }
        }
        // Rows are found through `id = ANY (…)`, an index probe each: joined to the JSON,
        // the planner (guessing 100 rows for it) would hash all of `jobs`.
        let mut tx = self.pool.begin().await.doing(DOING)?;
        if !admitted.is_empty() {
            let admitted = json(&admitted);
            // A URL already in its crawl (a seed added to an existing crawl, or two such
            // seeds in one batch) is not admitted twice: the first by id is, the others
            // are marked skipped below. A seed added to an existing crawl (root_id given)
            // is scoped from that crawl's first URL, like the rest of the crawl.
            let joined: Vec<(i64, i64)> = sqlx::query_as(
                "WITH d AS (
                     SELECT * FROM jsonb_to_recordset($1::jsonb)
                         AS d(id bigint, url text, host text, canonical_url text)),
                 candidate AS MATERIALIZED (
                     SELECT DISTINCT ON (COALESCE(j.root_id, j.id), d.canonical_url)
                            j.id, d.url, d.host, d.canonical_url,
                            COALESCE(j.root_id, j.id) AS root_id,
                            COALESCE(j.crawl_host,
                                     (SELECT r.crawl_host FROM jobs r WHERE r.id = j.root_id),
                                     d.host) AS crawl_host
                       FROM d JOIN jobs j ON j.id = d.id
                      WHERE j.id = ANY (ARRAY(SELECT id FROM d))
                        AND j.url = d.url AND j.status = 'queued' AND j.host IS NULL
                        AND NOT EXISTS (SELECT 1 FROM jobs dup
                                         WHERE dup.root_id = COALESCE(j.root_id, j.id)
                                           AND dup.canonical_url = d.canonical_url)
                      ORDER BY COALESCE(j.root_id, j.id), d.canonical_url, j.id)
                 UPDATE jobs
                    SET host = c.host, canonical_url = c.canonical_url, root_id = c.root_id,
                        crawl_host = c.crawl_host, updated_at = now()
                   FROM candidate c
                  -- The guard again, on the row as it is when locked: under READ COMMITTED
                  -- an edit committed while this waited is checked here, not in the CTE.
                  WHERE jobs.id = c.id AND jobs.url = c.url
                    AND jobs.status = 'queued' AND jobs.host IS NULL
              RETURNING jobs.id, jobs.root_id",
            )
            .bind(&admitted)
            .fetch_all(&mut *tx)
            .await
            .doing(DOING)?;
            // Seeds joining another job's crawl count toward that crawl's size.
            let mut joining: HashMap<i64, i64> = HashMap::new();
            for (id, root) in &joined {
                if id != root {
                    *joining.entry(*root).or_default() += 1;
                }
            }
            if !joining.is_empty() {
                let (roots, added): (Vec<i64>, Vec<i64>) = joining.into_iter().unzip();
                sqlx::query(
                    "UPDATE jobs SET crawl_size = crawl_size + g.added
                       FROM unnest($1::bigint[], $2::bigint[]) AS g(id, added)
                      WHERE jobs.id = g.id",
                )
                .bind(&roots)
                .bind(&added)
                .execute(&mut *tx)
                .await
                .doing(DOING)?;
            }
            let skipped = sqlx::query(
                "UPDATE jobs
                    SET status = 'skipped', finished_at = now(), updated_at = now(),
                        error = 'already in this crawl as job ' || dup.id
                   FROM jsonb_to_recordset($1::jsonb)
                            AS d(id bigint, url text, host text, canonical_url text)
                  CROSS JOIN LATERAL (
                        SELECT x.id FROM jobs x, jobs j
                         WHERE j.id = d.id
                           AND x.root_id = COALESCE(j.root_id, j.id)
                           AND x.canonical_url = d.canonical_url
                         ORDER BY x.id LIMIT 1) dup
                  WHERE jobs.id = ANY (ARRAY(SELECT (e ->> 'id')::bigint
                                               FROM jsonb_array_elements($1::jsonb) AS e))
                    AND jobs.id = d.id AND jobs.url = d.url
                    AND jobs.status = 'queued' AND jobs.host IS NULL",
            )
            .bind(&admitted)
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
            counts.skipped = skipped.rows_affected();
        }
        if !refused.is_empty() {
            let failed = sqlx::query(
                "UPDATE jobs
                    SET status = 'failed', error = d.reason, finished_at = now(), updated_at = now()
                   FROM jsonb_to_recordset($1::jsonb) AS d(id bigint, url text, reason text)
                  WHERE jobs.id = ANY (ARRAY(SELECT (e ->> 'id')::bigint
                                               FROM jsonb_array_elements($1::jsonb) AS e))
                    AND jobs.id = d.id AND jobs.url = d.url
                    AND jobs.status = 'queued' AND jobs.host IS NULL",
            )
            .bind(json(&refused))
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
            counts.refused = failed.rows_affected();
        }
        tx.commit().await.doing(DOING)?;
        Ok(counts)
    }
}
