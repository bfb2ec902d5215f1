//! Finishing: a batch of attempts stored in one transaction (group commit): each job's new
//! status, checked against its lease, and what hangs off a fetched page (its `results` row,
//! body, validators, a redirect target, the links it queues, a host pause).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Connection;

use super::SqliteStore;
use crate::follow::Child;
use crate::job::{Attempt, ClaimedJob, PageRecord, RedirectTarget, Verdict};
use crate::store::error::Doing;
use crate::store::finish_steps::{self, FinishSteps};
use crate::store::known_links::KnownLinks;
use crate::store::{decisions, FinishReport, StoreError};

/// The lease check shared by every change to a running job: ?1 id, ?2 lease token, ?3 attempt.
macro_rules! while_leased {
    () => {
        " WHERE id = ?1 AND status = 'running' AND lease_owner = ?2 AND attempts = ?3"
    };
}

/// A finished fetch: the job ends with `$status`, or, with `recrawl_every`, goes back to
/// the queue that many seconds from now as its next fetch, with fresh attempts.
macro_rules! fetch_finished {
    ($status:literal) => {
        concat!(
            "UPDATE jobs SET
                 status = CASE WHEN recrawl_every >= 1 THEN 'queued' ELSE '",
            $status,
            "' END,
                 run_after = CASE WHEN recrawl_every >= 1 THEN ",
            now_plus!("recrawl_every"),
            " ELSE run_after END,
                 attempts = CASE WHEN recrawl_every >= 1 THEN 0 ELSE attempts END,
                 fetch_no = CASE WHEN recrawl_every >= 1 THEN fetch_no + 1 ELSE fetch_no END,
                 finished_at = ",
            now!(),
            ", updated_at = ",
            now!(),
            ", lease_owner = NULL, lease_expires_at = NULL"
        )
    };
}

const FINISH_DONE: &str = concat!(fetch_finished!("done"), ", error = NULL", while_leased!());

/// Back to the queue with the attempt not counted (crawlq's own fault, or a wait for an
/// origin's robots.txt that another job found unreachable).
const FINISH_REQUEUE: &str = concat!(
    "UPDATE jobs SET status = 'queued', error = ?4, attempts = MAX(0, attempts - 1), run_after = ",
    now_plus!("?5"),
    ", updated_at = ",
    now!(),
    ", lease_owner = NULL, lease_expires_at = NULL",
    while_leased!()
);

const FINISH_RETRY: &str = concat!(
    "UPDATE jobs SET status = 'queued', error = ?4, run_after = ",
    now_plus!("?5"),
    ", updated_at = ",
    now!(),
    ", lease_owner = NULL, lease_expires_at = NULL",
    while_leased!()
);

const FINISH_FAILED: &str = concat!(fetch_finished!("failed"), ", error = ?4", while_leased!());

/// Like a finished fetch: a recrawled job is tried again at its next recrawl (a robots.txt
/// rule may be lifted by then).
const FINISH_SKIPPED: &str = concat!(fetch_finished!("skipped"), ", error = ?4", while_leased!());

/// A job of the crawl queued for the page a redirect of job ?1 fetched (crawl ?2, canonical
/// URL ?3), which the redirect target's row met. Queued after that redirect asked whether
/// the crawl had the page (a link found meanwhile), it has not started (it would have
/// given way to the hold, see `crawl::ClaimedTargets`), and would fetch the page again:
/// it ends as a job that gives way does (skipped; recrawled, it comes back at its next
/// recrawl).
const SKIP_QUEUED_TWIN: &str = concat!(
    fetch_finished!("skipped"),
    ", error = 'fetched as the redirect target of job ' || ?1",
    " WHERE root_id = ?2 AND canonical_url = ?3 AND status = 'queued' AND id <> ?1"
);

impl SqliteStore {
    /// Stores a batch of finished attempts in one transaction: each job's new status and,
    /// if a response came back, its `results` row. Nothing is acknowledged before commit.
    pub async fn finish(
        &self,
        attempts: &[Attempt],
        known: &KnownLinks,
    ) -> Result<FinishReport, StoreError> {
        let mut report = FinishReport::default();
        if attempts.is_empty() {
            return Ok(report);
        }
        let mut writer = self.writer().await.doing("storing results")?;
        let mut tx = writer.begin().await.doing("storing results")?;
        // The common case, a page fetched and parsed on the first try, is stored for the
        // whole batch in a few statements: each statement is a round trip to SQLite's
        // worker thread, and those trips, not SQLite, were most of a page's cost.
        let (plain, others) = decisions::split_batch(attempts);
        finish_plain_batch(&mut tx, &plain, known, &mut report).await?;
        for attempt in others {
            finish_steps::finish_one(&mut tx, attempt, known, &mut report).await?;
        }
        tx.commit().await.doing("storing results")?;
        Ok(report)
    }
}

impl FinishSteps for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn set_status(&mut self, attempt: &Attempt) -> Result<bool, StoreError> {
        let job = &attempt.job;
        let sql = match attempt.verdict {
            Verdict::Done => FINISH_DONE,
            Verdict::Retry { .. } => FINISH_RETRY,
            Verdict::Requeue { .. } => FINISH_REQUEUE,
            Verdict::Failed { .. } => FINISH_FAILED,
            Verdict::Skipped { .. } => FINISH_SKIPPED,
        };
        let mut query = sqlx::query(sql)
            .bind(job.id.0)
            .bind(job.lease.as_str())
            .bind(job.attempt);
        match &attempt.verdict {
            Verdict::Done => {}
            Verdict::Retry { after, reason } | Verdict::Requeue { after, reason } => {
                query = query.bind(reason).bind(after.as_secs_f64());
            }
            Verdict::Failed { reason } | Verdict::Skipped { reason } => query = query.bind(reason),
        }
        let changed = query
            .execute(&mut **self)
            .await
            .doing("storing results")?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn mark_redirect_target(
        &mut self,
        job: &ClaimedJob,
        page: &PageRecord,
        target: &RedirectTarget,
    ) -> Result<(), StoreError> {
        let inserted = sqlx::query(concat!(
            "INSERT INTO jobs (url, status, host, canonical_url, error, parent_id, root_id, depth,
                               max_depth, scope, crawl_host, finished_at)
             SELECT ?2, 'skipped', ?3, ?4, 'fetched as the redirect target of job ' || p.id, p.id,
                    ?5, p.depth, p.max_depth, p.scope, COALESCE(p.crawl_host, p.host), ",
            now!(),
            "
               FROM jobs p WHERE p.id = ?1
             ON CONFLICT DO NOTHING"
        ))
        .bind(job.id.0)
        .bind(&page.final_url)
        .bind(&target.host)
        .bind(&target.canonical_url)
        .bind(job.root_id)
        .execute(&mut **self)
        .await
        .doing("recording a redirect target")?
        .rows_affected();
        if inserted == 0 {
            sqlx::query(SKIP_QUEUED_TWIN)
                .bind(job.id.0)
                .bind(job.root_id)
                .bind(&target.canonical_url)
                .execute(&mut **self)
                .await
                .doing("recording a redirect target")?;
        }
        Ok(())
    }

    async fn pause_host(
        &mut self,
        host: &str,
        how_long: Duration,
        verdict: &Verdict,
    ) -> Result<(), StoreError> {
        let reason = decisions::pause_reason(verdict);
        sqlx::query(concat!(
            "INSERT INTO hosts (host, paused_until, pause_reason, updated_at)
             VALUES (?1, ",
            now_plus!("?2"),
            ", ?3, ",
            now!(),
            ")
             ON CONFLICT (host) DO UPDATE SET
                 paused_until = MAX(COALESCE(hosts.paused_until, ''), excluded.paused_until),
                 pause_reason = excluded.pause_reason,
                 updated_at = excluded.updated_at"
        ))
        .bind(host)
        .bind(how_long.as_secs_f64())
        .bind(reason)
        .execute(&mut **self)
        .await
        .doing("recording a host pause")?;
        Ok(())
    }

    async fn upsert_result(
        &mut self,
        job: &ClaimedJob,
        page: &PageRecord,
    ) -> Result<i64, StoreError> {
        let copied = page.unchanged_since.is_some();
        let links =
            (!copied).then(|| serde_json::to_string(&page.links).expect("strings serialize"));
        let data = (!copied).then(|| serde_json::to_string(&page.data).expect("strings serialize"));
        sqlx::query_scalar(concat!(
            insert_result!(),
            "SELECT ?1, ?2, ?3, ?4, ?5, COALESCE(?6, old.content_type), COALESCE(?7, old.title),
                    COALESCE(?8, old.description), COALESCE(?9, old.links, '[]'),
                    COALESCE(?10, old.data, '{}'), ?11, ?12, ?13, ",
            now!(),
            ",
                    -- A 304 of a 304 confirms the full fetch the first one confirmed.
                    COALESCE(old.confirms_result_id, old.id)
               FROM (SELECT 1) LEFT JOIN results old ON old.id = ?14
              WHERE true",
            result_replaces_earlier_attempt!(),
            " RETURNING id"
        ))
        .bind(job.id.0)
        .bind(job.fetch_no)
        .bind(&page.url)
        .bind(&page.final_url)
        .bind(page.http_status)
        .bind(&page.content_type)
        .bind(&page.title)
        .bind(&page.description)
        .bind(links)
        .bind(data)
        .bind(page.bytes as i64)
        .bind(page.elapsed.as_millis() as i64)
        .bind(copied)
        .bind(page.unchanged_since)
        .fetch_one(&mut **self)
        .await
        .doing("storing results")
    }

    async fn forget_replaced_result(&mut self, result_id: i64) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM bodies WHERE result_id = ?1",
            "DELETE FROM validators WHERE result_id = ?1",
        ] {
            sqlx::query(sql)
                .bind(result_id)
                .execute(&mut **self)
                .await
                .doing("storing results")?;
        }
        Ok(())
    }

    async fn store_body(&mut self, result_id: i64, page: &PageRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO bodies (result_id, body) VALUES (?1, ?2)
             ON CONFLICT (result_id) DO UPDATE SET body = excluded.body",
        )
        .bind(result_id)
        .bind(page.gzipped_body.as_deref())
        .execute(&mut **self)
        .await
        .doing("storing a body")?;
        Ok(())
    }

    async fn update_validators(
        &mut self,
        answers: &[(&str, &PageRecord, i64)],
    ) -> Result<(), StoreError> {
        let decisions::ValidatorChanges { keep, forget } = decisions::validator_changes(answers);
        if !keep.is_empty() {
            sqlx::query(
                "INSERT INTO validators (url, etag, last_modified, result_id)
                 SELECT v.value ->> 0, v.value ->> 1, v.value ->> 2, v.value ->> 3
                   FROM json_each(?1) AS v
                  WHERE true
                 ON CONFLICT (url) DO UPDATE SET
                     etag = excluded.etag, last_modified = excluded.last_modified,
                     result_id = excluded.result_id",
            )
            .bind(serde_json::to_string(&keep).expect("values serialize"))
            .execute(&mut **self)
            .await
            .doing("remembering validators")?;
        }
        if !forget.is_empty() {
            sqlx::query("DELETE FROM validators WHERE url IN (SELECT value FROM json_each(?1))")
                .bind(serde_json::to_string(&forget).expect("values serialize"))
                .execute(&mut **self)
                .await
                .doing("remembering validators")?;
        }

        Ok(())
    }

    async fn queue_changed_again(
        &mut self,
        job: &ClaimedJob,
        listed: &[Child],
    ) -> Result<u64, StoreError> {
        let listed: Vec<(&str, Option<&str>)> = listed
            .iter()
            .map(|c| (c.url.as_str(), c.lastmod.as_deref()))
            .collect();
        let mut again = 0;
        for slice in listed.chunks(LINKS_PER_STATEMENT) {
            again += sqlx::query(concat!(
                "UPDATE jobs SET status = 'queued', run_after = ",
                now!(),
                ", attempts = 0, error = NULL, fetch_no = fetch_no + 1,
                     lastmod = c.value ->> 1, updated_at = ",
                now!(),
                "
                   FROM json_each(?2) AS c
                  WHERE jobs.root_id = ?1 AND jobs.canonical_url = c.value ->> 0
                    AND jobs.kind = 'page' AND jobs.status IN ('done', 'failed')
                    AND (c.value ->> 1 IS NULL OR jobs.lastmod IS NOT c.value ->> 1)"
            ))
            .bind(job.root_id)
            .bind(serde_json::to_string(slice).expect("strings serialize"))
            .execute(&mut **self)
            .await
            .doing("queueing pages whose lastmod changed")?
            .rows_affected();
        }
        Ok(again)
    }

    async fn queue_children(
        &mut self,
        pages: &[&Attempt],
        known: &KnownLinks,
        report: &mut FinishReport,
    ) -> Result<(), StoreError> {
        let links = decisions::links_to_queue(pages, known);
        // In slices, so that pages with huge numbers of links cannot make one statement's
        // text too big for SQLite; each slice sees the crawl sizes the previous one left.
        for slice in links.chunks(LINKS_PER_STATEMENT) {
            let queued = queue_children_batch(self, slice).await?;
            report
                .queued_links
                .extend(queued.iter().map(|(root, url)| known.key(*root, url)));
        }
        Ok(())
    }
}

/// [`FINISH_DONE`] for a batch: ?1 is a JSON array of [id, lease, attempt]. Returns the
/// ids whose lease still held (each job appears once in a batch).
const FINISH_DONE_BATCH: &str = concat!(
    fetch_finished!("done"),
    ", error = NULL
       FROM json_each(?1) AS b
      WHERE jobs.id = b.value ->> 0
        -- `+` keeps SQLite from scanning jobs_status (every running job) once per batch
        -- row instead of looking each job up by id.
        AND +jobs.status = 'running'
        AND jobs.lease_owner = b.value ->> 1 AND jobs.attempts = b.value ->> 2
     RETURNING jobs.id"
);

/// Links per statement when queueing a batch's links (a few MB of JSON at most).
const LINKS_PER_STATEMENT: usize = 20_000;

/// Stores a batch of plain first fetches (see [`decisions::is_plain_first_fetch`]) in five statements
/// at most, whatever its size; the same rows as the one-attempt path.
async fn finish_plain_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    attempts: &[&Attempt],
    known: &KnownLinks,
    report: &mut FinishReport,
) -> Result<(), StoreError> {
    const DOING: &str = "storing results";
    if attempts.is_empty() {
        return Ok(());
    }
    let leases: Vec<_> = attempts
        .iter()
        .map(|a| (a.job.id.0, a.job.lease.as_str(), a.job.attempt))
        .collect();
    let finished: std::collections::HashSet<i64> = sqlx::query_scalar(FINISH_DONE_BATCH)
        .bind(serde_json::to_string(&leases).expect("values serialize"))
        .fetch_all(&mut **tx)
        .await
        .doing(DOING)?
        .into_iter()
        .collect();
    let (stored, lost): (Vec<&Attempt>, Vec<&Attempt>) = attempts
        .iter()
        .partition(|a| finished.contains(&a.job.id.0));
    for attempt in lost {
        report.lease_lost(&attempt.job);
    }
    if stored.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = stored
        .iter()
        .map(|a| {
            let p = decisions::plain_page(a);
            serde_json::json!({
                "job": a.job.id.0, "fetch_no": a.job.fetch_no, "url": p.url,
                "final_url": p.final_url, "status": p.http_status, "type": p.content_type,
                "title": p.title, "description": p.description, "links": p.links,
                "data": p.data, "bytes": p.bytes, "ms": p.elapsed.as_millis() as u64,
            })
        })
        .collect();
    let result_ids: HashMap<i64, i64> = sqlx::query_as(concat!(
        insert_result!(),
        "SELECT r.value ->> 'job', r.value ->> 'fetch_no', r.value ->> 'url',
                r.value ->> 'final_url', r.value ->> 'status', r.value ->> 'type',
                r.value ->> 'title', r.value ->> 'description', r.value ->> 'links',
                r.value ->> 'data', r.value ->> 'bytes', r.value ->> 'ms', 0, ",
        now!(),
        ", NULL
           FROM json_each(?1) AS r
          WHERE true",
        result_replaces_earlier_attempt!(),
        " RETURNING job_id, id"
    ))
    .bind(serde_json::to_string(&rows).expect("values serialize"))
    .fetch_all(&mut **tx)
    .await
    .doing(DOING)?
    .into_iter()
    .collect();

    let answers: Vec<_> = stored
        .iter()
        .filter_map(|a| {
            let url = a.job.canonical_url.as_deref()?;
            let result_id = *result_ids.get(&a.job.id.0)?;
            Some((url, decisions::plain_page(a), result_id))
        })
        .collect();
    tx.update_validators(&answers).await?;
    tx.queue_children(&stored, known, report).await?;
    report.stored += stored.len();
    Ok(())
}

/// One statement of `queue_children`: each (parent id, root id, URL, host) becomes a job of
/// the parent's crawl unless the crawl has the URL already, within each crawl's page budget
/// (`max_pages`, kept on its root job), counted in link order across the slice. Returns
/// the (root id, canonical URL) of each job it queued.
async fn queue_children_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    links: &[decisions::Link<'_>],
) -> Result<Vec<(i64, String)>, StoreError> {
    // Sent as runs of links that share a parent, a crawl and a host, each run's URLs a
    // plain JSON array: SQLite then reads each URL as it walks the array, where taking four
    // fields out of one small JSON array per link cost more than the duplicate lookup.
    let runs = decisions::link_runs(links);
    let queued: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO jobs (url, host, canonical_url, priority, selectors, max_attempts,
                           max_depth, scope, allow, deny, max_pages, parent_id, root_id,
                           depth, crawl_host, recrawl_every, kind, lastmod)
         WITH run AS MATERIALIZED (
                  SELECT key AS position, value ->> 0 AS parent_id, value ->> 1 AS root_id,
                         value ->> 2 AS host, value -> 3 AS urls, value ->> 4 AS kind,
                         value -> 5 AS lastmods
                    FROM json_each(?1)),
              link AS MATERIALIZED (
                  SELECT r.position, u.key AS n_in_run, r.parent_id, r.root_id, r.host,
                         u.value AS url, r.kind, r.lastmods ->> u.key AS lastmod
                    FROM run r JOIN json_each(r.urls) AS u
                   WHERE NOT EXISTS (SELECT 1 FROM jobs d
                                      WHERE d.root_id = r.root_id AND d.canonical_url = u.value))
         SELECT url, host, url, priority, selectors, max_attempts, max_depth, scope, allow,
                deny, max_pages, parent_id, root_id, depth, crawl_host, recrawl_every, kind,
                lastmod
           FROM (SELECT l.url, l.host, p.priority, p.selectors, p.max_attempts, p.max_depth,
                        p.scope, p.allow, p.deny, p.max_pages, p.id AS parent_id, l.root_id,
                        -- A link is one hop further; a sitemap, and what a sitemap lists,
                        -- are where a crawl starts: no hop (README, Sitemaps).
                        CAST(p.depth AS INTEGER)
                            + (p.kind = 'page' AND l.kind = 'page') AS depth,
                        COALESCE(p.crawl_host, p.host) AS crawl_host,
                        -- A sitemap's pages are fetched again when a re-read of it finds
                        -- their lastmod moved, not on a clock of their own.
                        CASE WHEN p.kind = 'sitemap' AND l.kind = 'page' THEN NULL
                             ELSE p.recrawl_every END AS recrawl_every,
                        l.kind, l.lastmod,
                        l.position, l.n_in_run,
                        ROW_NUMBER() OVER (PARTITION BY l.root_id
                                               ORDER BY l.position, l.n_in_run) AS n,
                        -- No root row (deleted by the user) or no budget: no limit.
                        (SELECT MAX(0, CAST(r.max_pages AS INTEGER) - r.crawl_size)
                           FROM jobs r WHERE r.id = l.root_id) AS room
                   FROM link l JOIN jobs p ON p.id = l.parent_id)
          WHERE room IS NULL OR n <= room
          ORDER BY position, n_in_run
         ON CONFLICT DO NOTHING
         RETURNING root_id, canonical_url",
    )
    .bind(serde_json::to_string(&runs).expect("values serialize"))
    .fetch_all(&mut **tx)
    .await
    .doing("queueing links")?;
    if queued.is_empty() {
        return Ok(queued);
    }
    let roots: Vec<i64> = queued.iter().map(|(root, _)| *root).collect();
    let added = decisions::count_per_root(&roots);
    sqlx::query(
        "UPDATE jobs SET crawl_size = crawl_size + (q.value ->> 1)
           FROM json_each(?1) AS q
          WHERE jobs.id = q.value ->> 0",
    )
    .bind(serde_json::to_string(&added).expect("values serialize"))
    .execute(&mut **tx)
    .await
    .doing("queueing links")?;
    Ok(queued)
}
