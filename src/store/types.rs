//! The types the store speaks in, shared by every backend: what it is given and what it
//! returns besides the domain types of `job`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::follow::CrawlSpec;
use crate::job::{ClaimedJob, JobId, Status};

/// A job row nobody has validated yet.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    /// The URL as text; bytes that are not UTF-8 become U+FFFD.
    pub url: String,
    /// The URL exactly as stored, so a decision is only recorded if the user has not
    /// edited the row since it was read.
    pub(super) url_bytes: Vec<u8>,
    pub selectors: Option<String>,
    /// Its crawl rules (scope, allow, deny), checked at admission.
    pub crawl: CrawlSpec,
}

/// How many jobs a host should be given in one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPick {
    pub host: String,
    pub jobs: usize,
}

/// What `finish` did with a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FinishReport {
    pub stored: usize,
    /// Attempts (job, attempt number) whose lease was gone by the time they finished;
    /// their results were dropped.
    pub lost: Vec<(JobId, i64)>,
    /// The links the batch queued as new jobs, for [`super::KnownLinks`] once committed.
    pub(super) queued_links: Vec<super::known_links::LinkKey>,
}

impl FinishReport {
    /// Records that `job`'s lease was gone when its attempt came to be stored (the user
    /// cancelled or edited it, or the lease expired): its result is dropped.
    pub(super) fn lease_lost(&mut self, job: &ClaimedJob) {
        self.lost.push((job.id, job.attempt));
        tracing::warn!(
            job.id = %job.id,
            url = %job.url,
            "lease lost before the result was stored (job cancelled, edited or expired); result dropped"
        );
    }
}

/// Jobs per status, for stats lines and `crawlq status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub skipped: i64,
}

impl StatusCounts {
    /// From `(status, count)` rows; a status the daemon does not know is left out.
    pub(super) fn from_rows(rows: Vec<(String, i64)>) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for (status, n) in rows {
            match status.as_str() {
                "queued" => counts.queued = n,
                "running" => counts.running = n,
                "done" => counts.done = n,
                "failed" => counts.failed = n,
                "cancelled" => counts.cancelled = n,
                "skipped" => counts.skipped = n,
                _ => {}
            }
        }
        counts
    }

    pub fn get(&self, status: Status) -> i64 {
        match status {
            Status::Queued => self.queued,
            Status::Running => self.running,
            Status::Done => self.done,
            Status::Failed => self.failed,
            Status::Cancelled => self.cancelled,
            Status::Skipped => self.skipped,
        }
    }
}

/// Who a daemon is, for its `workers` row.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    pub heartbeat_every: Duration,
}

/// A daemon's counters since it started, as its heartbeat writes them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerCounters {
    pub claimed: u64,
    pub done: u64,
    pub failed: u64,
    pub retried: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub in_flight: u64,
}

/// What `crawlq healthcheck` needs to know about a daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerHealth {
    pub id: String,
    pub pid: i64,
    /// `running`, `stale` or `stopped` (the `worker_status` view's rule).
    pub state: String,
    pub heartbeat_age: Duration,
}

/// Everything `crawlq status` shows (and prints as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub jobs: StatusCounts,
    /// Queued jobs the daemon has not validated yet (`host` still NULL).
    pub not_yet_admitted: i64,
    /// When the oldest queued job whose `run_after` has come was inserted (its host may
    /// still be paused or at its rate limit).
    pub oldest_due_created_at: Option<String>,
    /// Pages fetched (rows added to `results`) in the last minute and hour.
    pub fetched_last_minute: i64,
    pub fetched_last_hour: i64,
    pub top_hosts: Vec<HostQueue>,
    pub recent_errors: Vec<ErrorGroup>,
    pub workers: Vec<WorkerSummary>,
}

/// What admission did besides admitting: jobs refused (failed: a bad URL or selectors)
/// and jobs skipped (already in their crawl).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Admissions {
    pub refused: u64,
    pub skipped: u64,
}

/// How long the lists in a [`StatusReport`] may get.
#[derive(Debug, Clone, Copy)]
pub struct StatusLimits {
    pub top_hosts: u32,
    pub error_groups: u32,
    pub workers: u32,
}

/// One host's waiting work.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct HostQueue {
    pub host: String,
    pub queued: i64,
    /// Queued jobs whose `run_after` has come (the rest wait for a retry or a recrawl).
    pub due: i64,
    pub running: i64,
    pub paused_until: Option<String>,
    pub pause_reason: Option<String>,
}

/// Jobs whose last error, in the last hour, had the same reason.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ErrorGroup {
    /// `failed`, or `queued` for a job waiting to be retried.
    pub status: String,
    /// The error without its retry bookkeeping ("(attempt 1 of 3; retrying in 2.0 s)").
    pub reason: String,
    pub jobs: i64,
    pub last_seen: String,
}

/// A row of the `worker_status` view.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerSummary {
    pub id: String,
    pub hostname: String,
    pub pid: i64,
    pub version: String,
    pub state: String,
    pub started_at: String,
    pub heartbeat_age_secs: f64,
    pub claimed: i64,
    pub done: i64,
    pub failed: i64,
    pub in_flight: i64,
}

/// What `crawlq unpause HOST` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpaused {
    /// A Retry-After pause was in force and is lifted.
    pub pause_lifted: bool,
    /// Failed robots.txt answers forgotten, one per origin (scheme and port) of the host:
    /// robots.txt is asked again by the next job there.
    pub robots_forgotten: u64,
    /// Queued jobs of the host that were waiting for a retry and are due now.
    pub jobs_due_now: u64,
}

/// What the `hosts` table says after `crawlq unpause`, for daemons to lift a pause they
/// hold in memory: `paused_until` NULL with this reason.
pub const UNPAUSED_REASON: &str = "lifted by crawlq unpause";

/// What fetching an origin's robots.txt came to (redirects already followed), as the
/// `robots` table keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum RobotsAnswer {
    /// The final status and (for 2xx) up to `robots::MAX_ROBOTS_BYTES` of the body.
    Fetched { status: u16, body: Vec<u8> },
    /// No answer: network error, timeout, or a redirect that could not be followed.
    Failed(String),
    /// Not asked, through a fault of crawlq's own (see `robots::Permission::NotAsked`);
    /// never cached or stored.
    NotAsked(String),
    /// Nothing to ask: the host name does not resolve or no connection could be made.
    /// The job fails (or retries) as any request that cannot connect; never cached or
    /// stored, so a site that comes up is asked at once.
    NoConnection(String),
    /// An answer retrying cannot change (the site's TLS certificate was not accepted): the
    /// job fails with it. Never cached or stored: a fixed certificate is seen at once.
    Fatal(String),
}

/// A robots.txt answer to be stored (see `robots::Robots::take_unsaved`).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedRobots {
    pub origin: String,
    pub answer: RobotsAnswer,
    /// When the answer stops holding: its fetch plus how long it is trusted, the same
    /// moment the copy in memory expires.
    pub expires: Instant,
}

impl FetchedRobots {
    /// How long the answer still holds, for the stored copy. Measured from the fetch, not
    /// from the save (a turn later): a stored copy that outlived the one in memory would be
    /// read back as fresh by the retry it was meant to wait for, and use up an attempt
    /// without asking the site again.
    pub fn fresh_for(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }
}
