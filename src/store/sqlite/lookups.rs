//! What the crawl asks while it runs: paused hosts (and lifting a pause), a URL in a crawl,
//! robots.txt answers (read and kept), a stored body.

use std::time::Duration;

use futures_lite::StreamExt;
use sqlx::sqlite::SqlitePool;
use sqlx::{Connection, Row};

use super::{lossy_text, SqliteStore};
use crate::job::{ClaimedJob, JobId};
use crate::store::decisions;
use crate::store::decisions::hex;
use crate::store::error::Doing;
use crate::store::{FetchedRobots, RobotsAnswer, StoreError, Unpaused, UNPAUSED_REASON};

impl SqliteStore {
    /// Hosts still paused (Retry-After), with how long is left: the limiter is told at
    /// start-up, so a restart does not forget a host's request to wait.
    pub async fn active_pauses(&self) -> Result<Vec<(String, Duration)>, StoreError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(concat!(
            "SELECT host, (julianday(paused_until) - julianday('now')) * 86400.0 FROM hosts
              WHERE paused_until > ",
            now!()
        ))
        .fetch_all(&mut *self.writer().await.doing("reading paused hosts")?)
        .await
        .doing("reading paused hosts")?;
        Ok(rows
            .into_iter()
            .map(|(host, secs)| (host, Duration::from_secs_f64(secs.max(0.0))))
            .collect())
    }

    /// `crawlq unpause HOST`: lifts the host's Retry-After pause, forgets the failed
    /// robots.txt answers of its origins, and makes its jobs waiting for a retry due now.
    /// The `hosts` row is left saying so ([`UNPAUSED_REASON`]), for running daemons.
    pub async fn unpause(&self, host: &str) -> Result<Unpaused, StoreError> {
        const DOING: &str = "lifting a pause";
        let mut writer = self.writer().await.doing(DOING)?;
        let mut tx = writer.begin().await.doing(DOING)?;
        let paused: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM hosts WHERE host = ?1 AND paused_until > ",
            now!()
        ))
        .bind(host)
        .fetch_one(&mut *tx)
        .await
        .doing(DOING)?;
        sqlx::query(concat!(
            "INSERT INTO hosts (host, paused_until, pause_reason, updated_at)
             VALUES (?1, NULL, ?2, ",
            now!(),
            ") ON CONFLICT (host) DO UPDATE SET paused_until = NULL,
                 pause_reason = excluded.pause_reason, updated_at = excluded.updated_at"
        ))
        .bind(host)
        .bind(UNPAUSED_REASON)
        .execute(&mut *tx)
        .await
        .doing(DOING)?;
        let failed: Vec<String> = sqlx::query_scalar(
            "SELECT origin FROM robots
              WHERE http_status IS NULL OR http_status >= 500 OR http_status = 429",
        )
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        let origins = decisions::origins_of_host(failed, host);
        let robots_forgotten =
            sqlx::query("DELETE FROM robots WHERE origin IN (SELECT value FROM json_each(?1))")
                .bind(serde_json::to_string(&origins).expect("strings serialize"))
                .execute(&mut *tx)
                .await
                .doing(DOING)?
                .rows_affected();
        let jobs_due_now = sqlx::query(concat!(
            "UPDATE jobs SET run_after = ",
            now!(),
            // A retry's wait, not a recrawl's next fetch (its attempts start again at 0).
            " WHERE status = 'queued' AND host = ?1 AND error IS NOT NULL
                AND (attempts > 0 OR recrawl_every IS NULL) AND run_after > ",
            now!()
        ))
        .bind(host)
        .execute(&mut *tx)
        .await
        .doing(DOING)?
        .rows_affected();
        tx.commit().await.doing(DOING)?;
        Ok(Unpaused {
            pause_lifted: paused > 0,
            robots_forgotten,
            jobs_due_now,
        })
    }

    /// Hosts `crawlq unpause` lifted within the last `within`, each with when.
    pub async fn lifted_pauses(
        &self,
        within: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT host, updated_at FROM hosts
              WHERE paused_until IS NULL AND pause_reason = ?1
                AND updated_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ?2 || ' seconds')",
        )
        .bind(UNPAUSED_REASON)
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .doing("reading lifted pauses")
    }

    /// The job of `asking`'s crawl whose URL is `canonical_url`, if it has one other than
    /// `asking` itself and the rows `asking` left behind (its redirect target from an
    /// earlier fetch, when it is recrawled).
    pub async fn crawl_job_for(
        &self,
        asking: &ClaimedJob,
        canonical_url: &str,
    ) -> Result<Option<JobId>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs
              WHERE root_id = ?1 AND canonical_url = ?2 AND id <> ?3
                AND NOT (parent_id IS ?3 AND status = 'skipped')
              ORDER BY id LIMIT 1",
        )
        .bind(asking.root_id)
        .bind(canonical_url)
        .bind(asking.id.0)
        .fetch_optional(&self.pool)
        .await
        .doing("looking up a URL in a crawl")?;
        Ok(id.map(JobId))
    }

    // ---- robots.txt answers, per origin. ----

    /// The origins with a fresh robots.txt answer in the table, read when a daemon opens
    /// the database (see [`super::robots_origins`]).
    pub(super) async fn robots_origins(
        pool: &SqlitePool,
    ) -> Result<super::robots_origins::RobotsOrigins, StoreError> {
        const DOING: &str = "reading which origins have a robots.txt answer";
        let origins = super::robots_origins::RobotsOrigins::default();
        let mut rows = sqlx::query_scalar::<_, Option<Vec<u8>>>(concat!(
            "SELECT CAST(origin AS BLOB) FROM robots WHERE expires_at > ",
            now!()
        ))
        .fetch(pool);
        while let Some(origin) = rows.next().await {
            if let Some(origin) = origin.doing(DOING)? {
                origins.insert(&String::from_utf8_lossy(&origin));
            }
        }
        Ok(origins)
    }

    /// The stored robots.txt answer for `origin` while it is fresh, with how long it
    /// still holds.
    pub async fn robots(
        &self,
        origin: &str,
    ) -> Result<Option<(RobotsAnswer, Duration)>, StoreError> {
        if let Some(origins) = &self.robots_origins {
            if !origins.may_hold(origin) {
                return Ok(None);
            }
        }
        let row = sqlx::query(concat!(
            "SELECT http_status, CAST(body AS BLOB) AS body, error,
                    (julianday(expires_at) - julianday('now')) * 86400.0 AS fresh_secs
               FROM robots WHERE origin = ?1 AND expires_at > ",
            now!()
        ))
        .bind(origin)
        .fetch_optional(&self.pool)
        .await
        .doing("reading a cached robots.txt")?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> Result<(RobotsAnswer, Duration), sqlx::Error> {
            let status: Option<i64> = row.try_get("http_status")?;
            let answer = match status {
                Some(status) => RobotsAnswer::Fetched {
                    status: u16::try_from(status).unwrap_or(0),
                    body: row
                        .try_get::<Option<Vec<u8>>, _>("body")?
                        .unwrap_or_default(),
                },
                None => RobotsAnswer::Failed(
                    lossy_text(&row, "error")?.unwrap_or_else(|| "no answer".to_owned()),
                ),
            };
            let fresh: f64 = row.try_get("fresh_secs")?;
            Ok((answer, Duration::from_secs_f64(fresh.max(0.0))))
        };
        read().map(Some).doing("reading a cached robots.txt")
    }

    /// Keeps robots.txt answers, each for its `fresh_for` (replacing older ones), in one
    /// statement: when many origins are new at once, their answers do not queue for the
    /// database one by one.
    pub async fn save_robots(&self, answers: &[FetchedRobots]) -> Result<(), StoreError> {
        const DOING: &str = "storing robots.txt answers";
        if answers.is_empty() {
            return Ok(());
        }
        // [origin, status, body as hex, error, seconds fresh]: bodies are bytes, and JSON
        // carries them as hex.
        let rows: Vec<serde_json::Value> = answers
            .iter()
            .map(|fetched| {
                let (status, body, error) = match &fetched.answer {
                    RobotsAnswer::Fetched { status, body } => {
                        (Some(*status), Some(hex(body)), None)
                    }
                    // NotAsked and NoConnection never reach here (they are not kept);
                    // stored, they would read as Failed.
                    RobotsAnswer::Failed(reason)
                    | RobotsAnswer::NotAsked(reason)
                    | RobotsAnswer::NoConnection(reason)
                    | RobotsAnswer::Fatal(reason) => (None, None, Some(reason.as_str())),
                };
                serde_json::json!([
                    fetched.origin,
                    status,
                    body,
                    error,
                    fetched.fresh_for().as_secs_f64()
                ])
            })
            .collect();
        let rows = serde_json::Value::Array(rows).to_string();
        // Before the rows exist, so that no look-up misses them.
        if let Some(origins) = &self.robots_origins {
            for fetched in answers {
                origins.insert(&fetched.origin);
            }
        }
        sqlx::query(concat!(
            "INSERT INTO robots (origin, http_status, body, error, fetched_at, expires_at)
             SELECT value ->> 0, value ->> 1, unhex(value ->> 2), value ->> 3, ",
            now!(),
            ", ",
            now_plus!("(value ->> 4)"),
            "  FROM json_each(?1) WHERE true
             ON CONFLICT (origin) DO UPDATE SET
                 http_status = excluded.http_status, body = excluded.body,
                 error = excluded.error, fetched_at = excluded.fetched_at,
                 expires_at = excluded.expires_at"
        ))
        .bind(rows)
        .execute(&mut *self.writer().await.doing(DOING)?)
        .await
        .doing(DOING)?;
        Ok(())
    }

    /// For a `304 Not Modified` result, the result holding the version it confirmed
    /// (`confirms_result_id`). None for any other result.
    pub async fn confirmed_version(&self, result_id: i64) -> Result<Option<i64>, StoreError> {
        let version: Option<Option<i64>> = sqlx::query_scalar(
            // Rows stored before `confirms_result_id` existed: the newest full fetch of the
            // same URL before it, where the validators it sent came from.
            "SELECT COALESCE(r.confirms_result_id,
                            (SELECT v.id FROM results v
                              WHERE v.url = r.url AND v.id < r.id AND v.not_modified = 0
                                AND v.http_status BETWEEN 200 AND 299
                              ORDER BY v.id DESC LIMIT 1))
               FROM results r WHERE r.id = ?1 AND r.not_modified = 1",
        )
        .bind(result_id)
        .fetch_optional(
            &mut *self
                .writer()
                .await
                .doing("looking up the version a 304 confirmed")?,
        )
        .await
        .doing("looking up the version a 304 confirmed")?;
        Ok(version.flatten())
    }

    /// A stored body (`fetch.store_body`) as kept: gzip bytes. None if there is none.
    pub async fn gzipped_body(&self, result_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT body FROM bodies WHERE result_id = ?1")
            .bind(result_id)
            .fetch_optional(&mut *self.writer().await.doing("reading a stored body")?)
            .await
            .doing("reading a stored body")
    }
}
