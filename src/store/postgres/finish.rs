//! Finishing: a batch of attempts stored in one transaction: each job's new status, checked
//! against its lease, and what hangs off a fetched page (its `results` row, body,
//! validators, a redirect target, the links it queues, a host pause). Each batch that
//! stored results sends one NOTIFY on `crawlq_results` (payload: how many), delivered at
//! commit, so consumers can LISTEN instead of polling.

use std::collections::HashSet;
use std::time::Duration;

use super::{json, text, PostgresStore, RESULTS_CHANNEL};
use crate::follow::Child;
use crate::job::{Attempt, ClaimedJob, PageRecord, RedirectTarget, Verdict};
use crate::store::error::Doing;
use crate::store::finish_steps::{self, FinishSteps};
use crate::store::known_links::KnownLinks;
use crate::store::{decisions, FinishReport, StoreError};

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// The lease check shared by every change to a running job: $1 id, $2 lease token,
/// $3 attempt.
macro_rules! while_leased {
    () => {
        " WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND attempts = $3"
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
                 finished_at = now(), updated_at = now(),
                 lease_owner = NULL, lease_expires_at = NULL"
        )
    };
}

const FINISH_DONE: &str = concat!(fetch_finished!("done"), ", error = NULL", while_leased!());

/// Back to the queue with the attempt not counted (crawlq's own fault, or a wait for an
/// origin's robots.txt that another job found unreachable).
const FINISH_REQUEUE: &str = concat!(
    "UPDATE jobs SET status = 'queued', error = $4, attempts = GREATEST(0, attempts - 1),
                     run_after = ",
    now_plus!("$5"),
    ", updated_at = now(), lease_owner = NULL, lease_expires_at = NULL",
    while_leased!()
);

const FINISH_RETRY: &str = concat!(
    "UPDATE jobs SET status = 'queued', error = $4, run_after = ",
    now_plus!("$5"),
    ", updated_at = now(), lease_owner = NULL, lease_expires_at = NULL",
    while_leased!()
);

const FINISH_FAILED: &str = concat!(fetch_finished!("failed"), ", error = $4", while_leased!());

/// Like a finished fetch: a recrawled job is tried again at its next recrawl.
const FINISH_SKIPPED: &str = concat!(fetch_finished!("skipped"), ", error = $4", while_leased!());

/// A job of the crawl queued for the page a redirect of job $1 fetched (crawl $2, canonical
/// URL $3), which the redirect target's row met. Queued after that redirect asked whether
/// the crawl had the page (a link found meanwhile), it has not started (it would have
/// given way to the hold, see `crawl::ClaimedTargets`), and would fetch the page again:
/// it ends as a job that gives way does (skipped; recrawled, it comes back at its next
/// recrawl).
const SKIP_QUEUED_TWIN: &str = concat!(
    fetch_finished!("skipped"),
    ", error = 'fetched as the redirect target of job ' || $1::bigint",
    " WHERE root_id = $2 AND canonical_url = $3 AND status = 'queued' AND id <> $1::bigint"
);

impl FinishSteps for Tx<'_> {
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
                query = query.bind(text(reason)).bind(after.as_secs_f64());
            }
            Verdict::Failed { reason } | Verdict::Skipped { reason } => {
                query = query.bind(text(reason))
            }
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
        let inserted = sqlx::query(
            "INSERT INTO jobs (url, status, host, canonical_url, error, parent_id, root_id, depth,
                               max_depth, scope, crawl_host, finished_at)
             SELECT $2, 'skipped', $3, $4, 'fetched as the redirect target of job ' || p.id, p.id,
                    $5, p.depth, p.max_depth, p.scope, COALESCE(p.crawl_host, p.host), now()
               FROM jobs p WHERE p.id = $1
             ON CONFLICT (root_id, canonical_url)
                 WHERE root_id IS NOT NULL AND canonical_url IS NOT NULL DO NOTHING",
        )
        .bind(job.id.0)
        .bind(text(&page.final_url))
        .bind(&target.host)
        .bind(text(&target.canonical_url))
        .bind(job.root_id)
        .execute(&mut **self)
        .await
        .doing("recording a redirect target")?
        .rows_affected();
        if inserted == 0 {
            sqlx::query(SKIP_QUEUED_TWIN)
                .bind(job.id.0)
                .bind(job.root_id)
                .bind(text(&target.canonical_url))
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
        sqlx::query(concat!(
            "INSERT INTO hosts (host, paused_until, pause_reason, updated_at)
             VALUES ($1, ",
            now_plus!("$2"),
            ", $3, now())
             ON CONFLICT (host) DO UPDATE SET
                 paused_until = GREATEST(hosts.paused_until, excluded.paused_until),
                 pause_reason = excluded.pause_reason,
                 updated_at = excluded.updated_at"
        ))
        .bind(host)
        .bind(how_long.as_secs_f64())
        .bind(text(decisions::pause_reason(verdict)))
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
        let links = (!copied).then(|| json(&page.links));
        let data = (!copied).then(|| json(&page.data));
        sqlx::query_scalar(concat!(
            insert_result!(),
            "SELECT $1, $2, $3, $4, $5, COALESCE($6, old.content_type), COALESCE($7, old.title),
                    COALESCE($8, old.description), COALESCE($9::jsonb, old.links, '[]'),
                    COALESCE($10::jsonb, old.data, '{}'), $11, $12, $13, now(),
                    -- A 304 of a 304 confirms the full fetch the first one confirmed.
                    COALESCE(old.confirms_result_id, old.id)
               FROM (SELECT 1) AS one LEFT JOIN results old ON old.id = $14",
            result_replaces_earlier_attempt!(),
            " RETURNING id"
        ))
        .bind(job.id.0)
        .bind(job.fetch_no)
        .bind(text(&page.url))
        .bind(text(&page.final_url))
        .bind(i64::from(page.http_status))
        .bind(page.content_type.as_deref().map(text))
        .bind(page.title.as_deref().map(text))
        .bind(page.description.as_deref().map(text))
        .bind(links)
        .bind(data)
        .bind(page.bytes as i64)
        .bind(page.elapsed.as_millis() as i64)
        .bind(i64::from(copied))
        .bind(page.unchanged_since)
        .fetch_one(&mut **self)
        .await
        .doing("storing results")
    }

    async fn forget_replaced_result(&mut self, result_id: i64) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM bodies WHERE result_id = $1",
            "DELETE FROM validators WHERE result_id = $1",
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
            "INSERT INTO bodies (result_id, body) VALUES ($1, $2)
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
            let keep: Vec<_> = keep
                .iter()
                .map(|(url, etag, last_modified, result_id)| {
                    serde_json::json!({"url": url, "etag": etag, "last_modified": last_modified,
                                       "result_id": result_id})
                })
                .collect();
            sqlx::query(
                "INSERT INTO validators (url, etag, last_modified, result_id)
                 SELECT v.url, v.etag, v.last_modified, v.result_id
                   FROM jsonb_to_recordset($1::jsonb)
                        AS v(url text, etag text, last_modified text, result_id bigint)
                 ON CONFLICT (url) DO UPDATE SET
                     etag = excluded.etag, last_modified = excluded.last_modified,
                     result_id = excluded.result_id",
            )
            .bind(json(&keep))
            .execute(&mut **self)
            .await
            .doing("remembering validators")?;
        }
        if !forget.is_empty() {
            let forget: Vec<String> = forget.iter().map(|url| text(url).into_owned()).collect();
            sqlx::query("DELETE FROM validators WHERE url = ANY($1::text[])")
                .bind(&forget)
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
        let (urls, lastmods): (Vec<&str>, Vec<Option<&str>>) = listed
            .iter()
            .map(|c| (c.url.as_str(), c.lastmod.as_deref()))
            .unzip();
        let again = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_after = now(), attempts = 0, error = NULL,
                    fetch_no = fetch_no + 1, lastmod = c.lastmod, updated_at = now()
               FROM unnest($2::text[], $3::text[]) AS c(url, lastmod)
              WHERE jobs.root_id = $1 AND jobs.canonical_url = c.url
                AND jobs.kind = 'page' AND jobs.status IN ('done', 'failed')
                AND (c.lastmod IS NULL OR jobs.lastmod IS DISTINCT FROM c.lastmod)",
        )
        .bind(job.root_id)
        .bind(&urls)
        .bind(&lastmods)
        .execute(&mut **self)
        .await
        .doing("queueing pages whose lastmod changed")?
        .rows_affected();
        Ok(again)
    }

    async fn queue_children(
        &mut self,
        pages: &[&Attempt],
        known: &KnownLinks,
        report: &mut FinishReport,
    ) -> Result<(), StoreError> {
        let links = decisions::links_to_queue(pages, known);
        for slice in links.chunks(LINKS_PER_STATEMENT) {
            let queued = queue_children_batch(self, slice).await?;
            report
                .queued_links
                .extend(queued.iter().map(|(root, url)| known.key(*root, url)));
        }
        Ok(())
    }
}

/// [`FINISH_DONE`] for a batch: $1 is a JSON array of {id, lease, attempt}. Returns the
/// ids whose lease still held. The rows are found through `id = ANY (…)`, an index probe
/// each: joined to the JSON instead, they were found by hashing all of `jobs`.
const FINISH_DONE_BATCH: &str = concat!(
    "WITH b AS MATERIALIZED (
         SELECT * FROM jsonb_to_recordset($1::jsonb) AS b(id bigint, lease text, attempt bigint)) ",
    fetch_finished!("done"),
    ", error = NULL
       FROM b
      WHERE jobs.id = ANY (ARRAY(SELECT id FROM b)) AND jobs.id = b.id
        AND jobs.status = 'running' AND jobs.lease_owner = b.lease AND jobs.attempts = b.attempt
     RETURNING jobs.id"
);

/// Links per statement when queueing a batch's links (a few MB of JSON at most).
const LINKS_PER_STATEMENT: usize = 20_000;

impl PostgresStore {
    /// Stores a batch of finished attempts in one transaction. Nothing is acknowledged
    /// before commit.
    pub async fn finish(
        &self,
        attempts: &[Attempt],
        known: &KnownLinks,
    ) -> Result<FinishReport, StoreError> {
        const DOING: &str = "storing results";
        let mut report = FinishReport::default();
        if attempts.is_empty() {
            return Ok(report);
        }
        let mut tx = self.pool.begin().await.doing(DOING)?;
        let (plain, others) = decisions::split_batch(attempts);
        let mut results = finish_plain_batch(&mut tx, &plain, known, &mut report).await?;
        for attempt in others {
            if finish_steps::finish_one(&mut tx, attempt, known, &mut report).await? {
                results += 1;
            }
        }
        if results > 0 {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(RESULTS_CHANNEL)
                .bind(results.to_string())
                .execute(&mut *tx)
                .await
                .doing(DOING)?;
        }
        tx.commit().await.doing(DOING)?;
        Ok(report)
    }
}

/// Stores a batch of plain first fetches (see [`decisions::is_plain_first_fetch`]) in a
/// few statements, whatever its size; the same rows as the one-attempt path. Returns how
/// many results it wrote.
async fn finish_plain_batch(
    tx: &mut Tx<'_>,
    attempts: &[&Attempt],
    known: &KnownLinks,
    report: &mut FinishReport,
) -> Result<usize, StoreError> {
    const DOING: &str = "storing results";
    if attempts.is_empty() {
        return Ok(0);
    }
    let leases: Vec<_> = attempts
        .iter()
        .map(|a| serde_json::json!({"id": a.job.id.0, "lease": a.job.lease, "attempt": a.job.attempt}))
        .collect();
    let finished: HashSet<i64> = sqlx::query_scalar(FINISH_DONE_BATCH)
        .bind(json(&leases))
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
        return Ok(0);
    }
    let rows: Vec<_> = stored
        .iter()
        .map(|a| {
            let p = decisions::plain_page(a);
            serde_json::json!({
                "job": a.job.id.0, "fetch_no": a.job.fetch_no, "url": p.url,
                "final_url": p.final_url, "status": p.http_status, "content_type": p.content_type,
                "title": p.title, "description": p.description, "links": p.links,
                "data": p.data, "bytes": p.bytes, "ms": p.elapsed.as_millis() as u64,
            })
        })
        .collect();
    let result_ids: std::collections::HashMap<i64, i64> = sqlx::query_as(concat!(
        insert_result!(),
        "SELECT r.job, r.fetch_no, r.url, r.final_url, r.status, r.content_type, r.title,
                r.description, r.links, r.data, r.bytes, r.ms, 0, now(), NULL::bigint
           FROM jsonb_to_recordset($1::jsonb)
                AS r(job bigint, fetch_no bigint, url text, final_url text, status bigint,
                     content_type text, title text, description text, links jsonb,
                     data jsonb, bytes bigint, ms bigint)",
        result_replaces_earlier_attempt!(),
        " RETURNING job_id, id"
    ))
    .bind(json(&rows))
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
    Ok(stored.len())
}

/// One statement of `queue_children`: each link becomes a job of the parent's crawl unless
/// the crawl has the URL already, within each crawl's page budget (`max_pages`, kept on
/// its root job), counted in link order across the slice. The crawls' root rows are
/// locked first (in id order, so two daemons cannot deadlock on them): PostgreSQL does
/// not serialise writers as SQLite does, and two transactions counting the same budget
/// at once would both see room for the last page.
/// Returns the (root id, canonical URL) of each job it queued.
async fn queue_children_batch(
    tx: &mut Tx<'_>,
    links: &[decisions::Link<'_>],
) -> Result<Vec<(i64, String)>, StoreError> {
    const DOING: &str = "queueing links";
    let runs = decisions::link_runs(links);
    let mut roots: Vec<i64> = runs.iter().map(|run| run.1).collect();
    roots.sort_unstable();
    roots.dedup();
    sqlx::query("SELECT id FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE")
        .bind(&roots)
        .execute(&mut **tx)
        .await
        .doing(DOING)?;
    let queued: Vec<(i64, String)> = sqlx::query_as(
        // The LATERAL subqueries with LIMIT keep each lookup an index probe: as joins, the
        // planner (which guesses 100 rows for any JSON array) hashed the whole `jobs`
        // table for every batch, and a crawl got slower with every page it stored.
        "WITH run AS MATERIALIZED (
              SELECT x.ord AS position, (x.r ->> 1)::bigint AS root_id, x.r ->> 2 AS host,
                     x.r -> 3 AS urls, x.r ->> 4 AS kind, x.r -> 5 AS lastmods, p.*
                FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS x(r, ord)
               CROSS JOIN LATERAL (
                     SELECT p.id AS parent_id, p.priority, p.selectors, p.max_attempts,
                            p.max_depth, p.scope, p.allow, p.deny, p.max_pages,
                            -- A link is one hop further; a sitemap, and what a sitemap
                            -- lists, are where a crawl starts: no hop (README, Sitemaps).
                            p.depth + CASE WHEN p.kind = 'page' AND x.r ->> 4 = 'page'
                                           THEN 1 ELSE 0 END AS depth,
                            COALESCE(p.crawl_host, p.host) AS crawl_host,
                            -- A sitemap's pages are fetched again when a re-read of it
                            -- finds their lastmod moved, not on a clock of their own.
                            CASE WHEN p.kind = 'sitemap' AND x.r ->> 4 = 'page' THEN NULL
                                 ELSE p.recrawl_every END AS recrawl_every
                       FROM jobs p WHERE p.id = (x.r ->> 0)::bigint LIMIT 1) p),
          link AS MATERIALIZED (
              -- Not r.*: that would copy the run's whole URL array into every link's
              -- row (a 20 000-URL sitemap took minutes).
              SELECT r.position, r.root_id, r.host, r.kind, r.parent_id, r.priority,
                     r.selectors, r.max_attempts, r.max_depth, r.scope, r.allow, r.deny,
                     r.max_pages, r.depth, r.crawl_host, r.recrawl_every,
                     u.ord AS n_in_run, u.url, r.lastmods ->> (u.ord - 1)::int AS lastmod
                FROM run r
               CROSS JOIN LATERAL jsonb_array_elements_text(r.urls) WITH ORDINALITY AS u(url, ord)
                LEFT JOIN LATERAL (SELECT 1 AS found FROM jobs d
                                    WHERE d.root_id = r.root_id AND d.canonical_url = u.url
                                    LIMIT 1) known ON true
               WHERE known.found IS NULL),
          room AS MATERIALIZED (
              -- No root row (deleted by the user) or no budget: no limit (NULL).
              SELECT roots.root_id, budget.room
                FROM (SELECT DISTINCT root_id FROM link) AS roots
                LEFT JOIN LATERAL (SELECT GREATEST(0, r.max_pages - r.crawl_size) AS room
                                     FROM jobs r
                                    WHERE r.id = roots.root_id AND r.max_pages IS NOT NULL
                                    LIMIT 1) budget ON true)
         INSERT INTO jobs (url, host, canonical_url, priority, selectors, max_attempts,
                           max_depth, scope, allow, deny, max_pages, parent_id, root_id,
                           depth, crawl_host, recrawl_every, kind, lastmod)
         SELECT url, host, url, priority, selectors, max_attempts, max_depth, scope, allow,
                deny, max_pages, parent_id, root_id, depth, crawl_host, recrawl_every, kind,
                lastmod
           FROM (SELECT l.*, room.room,
                        ROW_NUMBER() OVER (PARTITION BY l.root_id
                                               ORDER BY l.position, l.n_in_run) AS n
                   FROM link l JOIN room ON room.root_id = l.root_id) AS candidate
          WHERE room IS NULL OR n <= room
          ORDER BY position, n_in_run
         ON CONFLICT (root_id, canonical_url)
                 WHERE root_id IS NOT NULL AND canonical_url IS NOT NULL DO NOTHING
         RETURNING root_id, canonical_url",
    )
    .bind(json(&runs))
    .fetch_all(&mut **tx)
    .await
    .doing(DOING)?;
    if queued.is_empty() {
        return Ok(queued);
    }
    let roots: Vec<i64> = queued.iter().map(|(root, _)| *root).collect();
    let (ids, added): (Vec<i64>, Vec<i64>) = decisions::count_per_root(&roots).into_iter().unzip();
    sqlx::query(
        "UPDATE jobs SET crawl_size = crawl_size + q.added
           FROM unnest($1::bigint[], $2::bigint[]) AS q(id, added)
          WHERE jobs.id = q.id",
    )
    .bind(&ids)
    .bind(&added)
    .execute(&mut **tx)
    .await
    .doing(DOING)?;
    Ok(queued)
}
