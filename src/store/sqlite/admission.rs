//! Admission: new rows read leniently, then given their host and canonical URL, failed
//! with a reason, or skipped as already in their crawl.

use sqlx::{Connection, Row};

use super::{lossy_text, SqliteStore};
use crate::follow::CrawlSpec;
use crate::job::{Admitted, JobId, JobKind};
use crate::store::error::Doing;
use crate::store::{Admissions, NewJob, StoreError};

/// The admission guard shared by every decision on a new job: ?1 id, ?2 the URL bytes as
/// read. A row the user changed since (status or URL) is left for the next turn.
macro_rules! still_unadmitted {
    () => {
        " WHERE id = ?1 AND CAST(url AS BLOB) = ?2 AND status = 'queued' AND host IS NULL"
    };
}

impl SqliteStore {
    // ---- Adding jobs (the `add` command; users usually INSERT themselves). ----

    pub async fn insert_job(
        &self,
        url: &str,
        priority: i64,
        selectors: Option<&str>,
        kind: JobKind,
    ) -> Result<JobId, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (url, priority, selectors, kind) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )
        .bind(url)
        .bind(priority)
        .bind(selectors)
        .bind(kind.as_str())
        .fetch_one(&mut *self.writer().await.doing("adding a job")?)
        .await
        .doing("adding a job")?;
        Ok(JobId(id))
    }

    // ---- Admission: validate new rows and fill in their host. ----

    pub async fn unadmitted(&self, limit: usize) -> Result<Vec<NewJob>, StoreError> {
        let rows = sqlx::query(
            // CAST: SQLite lets users store any type in any column; a number or blob in
            // `url` must become a readable failure, not a decoding error that stalls us.
            // INDEXED BY here and below: without statistics SQLite may pick jobs_status and
            // scan every queued row; these are the indexes the queries were written for.
            "SELECT id, CAST(url AS BLOB) AS url, CAST(selectors AS TEXT) AS selectors,
                    CAST(scope AS TEXT) AS scope, CAST(allow AS TEXT) AS allow,
                    CAST(deny AS TEXT) AS deny
               FROM jobs INDEXED BY jobs_unadmitted
              WHERE status = 'queued' AND host IS NULL
              ORDER BY id LIMIT ?1",
        )
        .bind(limit as i64)
        .fetch_all(&mut *self.writer().await.doing("reading new jobs")?)
        .await
        .doing("reading new jobs")?;
        rows.iter()
            .map(|row| {
                let url_bytes: Option<Vec<u8>> = row.try_get("url")?;
                let url_bytes = url_bytes.unwrap_or_default();
                Ok(NewJob {
                    id: JobId(row.try_get("id")?),
                    url: String::from_utf8_lossy(&url_bytes).into_owned(),
                    url_bytes,
                    selectors: lossy_text(row, "selectors")?,
                    crawl: CrawlSpec {
                        scope: lossy_text(row, "scope")?.unwrap_or_default(),
                        allow: lossy_text(row, "allow")?,
                        deny: lossy_text(row, "deny")?,
                        ..CrawlSpec::default()
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading new jobs")
    }

    /// Records admission decisions: a host for good jobs, `failed` with the reason for bad
    /// ones. Rows the user changed meanwhile (status or URL) are left for the next turn.
    pub async fn record_admissions(
        &self,
        decisions: &[(&NewJob, Result<Admitted, String>)],
    ) -> Result<Admissions, StoreError> {
        let mut counts = Admissions::default();
        if decisions.is_empty() {
            return Ok(counts);
        }
        let mut writer = self.writer().await.doing("admitting new jobs")?;
        let mut tx = writer.begin().await.doing("admitting new jobs")?;
        for (job, decision) in decisions {
            let query = match decision {
                // OR IGNORE: a URL already in the same crawl (a user added a seed to an
                // existing crawl) is not admitted twice; it is marked skipped below.
                Ok(admitted) => sqlx::query(concat!(
                    // A seed added to an existing crawl (root_id given) is scoped from
                    // that crawl's first URL, like the rest of the crawl.
                    "UPDATE OR IGNORE jobs
                        SET host = ?3, canonical_url = ?4, root_id = COALESCE(root_id, id),
                            crawl_host = COALESCE(crawl_host,
                                                  (SELECT r.crawl_host FROM jobs r
                                                    WHERE r.id = jobs.root_id),
                                                  ?3),
                            updated_at = ",
                    now!(),
                    still_unadmitted!()
                ))
                .bind(job.id.0)
                .bind(job.url_bytes.as_slice())
                .bind(&admitted.host)
                .bind(&admitted.canonical_url),
                Err(reason) => sqlx::query(concat!(
                    "UPDATE jobs SET status = 'failed', error = ?3, finished_at = ",
                    now!(),
                    ", updated_at = ",
                    now!(),
                    still_unadmitted!()
                ))
                .bind(job.id.0)
                .bind(job.url_bytes.as_slice())
                .bind(reason),
            };
            let changed = query
                .execute(&mut *tx)
                .await
                .doing("admitting new jobs")?
                .rows_affected();
            if let (1, Err(_)) = (changed, decision) {
                counts.refused += 1;
            }
            if let (1, Ok(_)) = (changed, decision) {
                // A seed joining another job's crawl counts toward that crawl's size.
                sqlx::query(
                    "UPDATE jobs SET crawl_size = crawl_size + 1
                      WHERE id = (SELECT root_id FROM jobs WHERE id = ?1) AND id <> ?1",
                )
                .bind(job.id.0)
                .execute(&mut *tx)
                .await
                .doing("admitting new jobs")?;
            }
            if let (0, Ok(admitted)) = (changed, decision) {
                let skipped = sqlx::query(concat!(
                    "UPDATE jobs
                        SET status = 'skipped', finished_at = ",
                    now!(),
                    ", updated_at = ",
                    now!(),
                    ", error = 'already in this crawl as job '
                                || (SELECT d.id FROM jobs d
                                     WHERE d.root_id = COALESCE(jobs.root_id, jobs.id)
                                       AND d.canonical_url = ?3)",
                    still_unadmitted!(),
                    " AND EXISTS (SELECT 1 FROM jobs d
                                   WHERE d.root_id = COALESCE(jobs.root_id, jobs.id)
                                     AND d.canonical_url = ?3)"
                ))
                .bind(job.id.0)
                .bind(job.url_bytes.as_slice())
                .bind(&admitted.canonical_url)
                .execute(&mut *tx)
                .await
                .doing("admitting new jobs")?;
                counts.skipped += skipped.rows_affected();
            }
        }
        tx.commit().await.doing("admitting new jobs")?;
        Ok(counts)
    }
}
