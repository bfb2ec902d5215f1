//! Finishing one attempt that is not a plain first fetch (a retry, a failure, a 304, a
//! redirect, a body to keep...), written once for both backends: which steps its verdict
//! and page call for, and in which order. Each backend supplies the steps, its SQL, by
//! implementing [`FinishSteps`] on its transaction (`sqlite/finish.rs`,
//! `postgres/finish.rs`); plain first fetches take the batch path there instead.

use std::time::Duration;

use super::known_links::KnownLinks;
use super::{FinishReport, StoreError};
use crate::follow::Child;
use crate::job::{Attempt, ClaimedJob, JobKind, PageRecord, RedirectTarget, Verdict};

/// The statements a finish is made of, inside one transaction.
pub(super) trait FinishSteps {
    /// The job's new status from its verdict, checked against its lease (id, token,
    /// attempt). False if the lease was gone: nothing else of the attempt is kept.
    async fn set_status(&mut self, attempt: &Attempt) -> Result<bool, StoreError>;

    /// Records a host's pause (a longer one already recorded wins).
    async fn pause_host(
        &mut self,
        host: &str,
        how_long: Duration,
        verdict: &Verdict,
    ) -> Result<(), StoreError>;

    /// Writes the `results` row of this fetch (a retry of the same fetch replaces it) and
    /// returns its id. A 304 copies the content of the result it confirmed.
    async fn upsert_result(
        &mut self,
        job: &ClaimedJob,
        page: &PageRecord,
    ) -> Result<i64, StoreError>;

    /// A retried fetch rewrote result `result_id`: a body or validators stored for the
    /// earlier attempt's answer no longer describe it.
    async fn forget_replaced_result(&mut self, result_id: i64) -> Result<(), StoreError>;

    /// Keeps the page's gzipped body (`fetch.store_body`) for result `result_id`.
    async fn store_body(&mut self, result_id: i64, page: &PageRecord) -> Result<(), StoreError>;

    /// Keeps or forgets validators as the answers decide (see
    /// [`super::decisions::validator_changes`]); each answer is (canonical URL, page,
    /// result id).
    async fn update_validators(
        &mut self,
        answers: &[(&str, &PageRecord, i64)],
    ) -> Result<(), StoreError>;

    /// Records where a crawl's redirect led as a `skipped` row of the crawl, so the unique
    /// (root, canonical URL) index keeps links to that page from being fetched again.
    async fn mark_redirect_target(
        &mut self,
        job: &ClaimedJob,
        page: &PageRecord,
        target: &RedirectTarget,
    ) -> Result<(), StoreError>;

    /// A re-read sitemap (see [`ClaimedJob::is_sitemap_reread`]): the pages of its crawl
    /// it lists that were fetched already (`done` or `failed`) go back to the queue as a
    /// new fetch if their lastmod changed (or the sitemap gives none), with the new
    /// lastmod. Returns how many.
    async fn queue_changed_again(
        &mut self,
        job: &ClaimedJob,
        listed: &[Child],
    ) -> Result<u64, StoreError>;

    /// Queues the links of done pages as child jobs of their crawls, in page order; the
    /// report lists those queued.
    async fn queue_children(
        &mut self,
        pages: &[&Attempt],
        known: &KnownLinks,
        report: &mut FinishReport,
    ) -> Result<(), StoreError>;
}

/// Stores one attempt with `steps`; returns whether it wrote a `results` row.
pub(super) async fn finish_one(
    steps: &mut impl FinishSteps,
    attempt: &Attempt,
    known: &KnownLinks,
    report: &mut FinishReport,
) -> Result<bool, StoreError> {
    let job = &attempt.job;
    let leased = steps.set_status(attempt).await?;
    // The host's request to wait stands even if this job's lease was lost.
    if let Some((host, how_long)) = &attempt.pause {
        steps.pause_host(host, *how_long, &attempt.verdict).await?;
    }
    if !leased {
        report.lease_lost(job);
        return Ok(false);
    }
    if let Some(page) = &attempt.page {
        let result_id = steps.upsert_result(job, page).await?;
        if job.attempt > 1 {
            // A retry may have replaced an earlier attempt's row: drop what hung off it
            // before attaching this answer's.
            steps.forget_replaced_result(result_id).await?;
        }
        if page.gzipped_body.is_some() {
            steps.store_body(result_id, page).await?;
        }
        if let Some(url) = &job.canonical_url {
            steps
                .update_validators(&[(url.as_str(), page, result_id)])
                .await?;
        }
    }
    if let (Verdict::Done, Some(page)) = (&attempt.verdict, &attempt.page) {
        if let Some(target) = &page.redirect_target {
            steps.mark_redirect_target(job, page, target).await?;
        }
    }
    if attempt.verdict == Verdict::Done && !attempt.children.is_empty() {
        steps.queue_children(&[attempt], known, report).await?;
        if job.is_sitemap_reread() {
            let pages: Vec<Child> = attempt
                .children
                .iter()
                .filter(|c| c.kind == JobKind::Page)
                .cloned()
                .collect();
            let again = steps.queue_changed_again(job, &pages).await?;
            tracing::debug!(job = %job.id, again, "pages whose lastmod moved queued again");
        }
    }
    report.stored += 1;
    Ok(attempt.page.is_some())
}
