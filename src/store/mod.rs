//! The database. The rest of crawlq uses [`Store`] and the types here, never `sqlx` (this
//! folder is the only code that names it) and never a backend.
//!
//! Map of the folder:
//! - `mod.rs`       — [`Store`], the façade: opening, and one method per operation, each
//!   handing the call to the backend the database URL chose.
//! - `types.rs`     — what the operations take and return besides `job`'s domain types.
//! - `error.rs`     — [`StoreError`]: what failed, while doing what, and what to check.
//! - `decisions.rs` — what is decided in Rust rather than SQL (which attempts of a batch
//!   take the fast path, which validators to keep, which links to queue,
//!   how a claim's hosts are split): shared by the backends, unit-tested.
//! - `finish_steps.rs` — the steps of finishing one attempt and their order, written once:
//!   each backend supplies the steps (its SQL) on its transaction.
//! - `known_links.rs` — the links this daemon saw queued, so a link to a page the crawl
//!   has is dropped before it costs a lookup in the finish transaction.
//! - `sqlite/`      — SQLite, the embedded default: one file per concern (`open`,
//!   `admission`, `claim`, `finish`, `lookups`, `workers`, `reports`), each holding that
//!   concern's SQL.
//! - `postgres/`    — PostgreSQL, with the same file and method names, so "how does a
//!   claim work on PostgreSQL" is answered by opening `postgres/claim.rs`.
//!
//! Why a façade over an enum of backends, and not a trait object or `sqlx::Any`: each
//! backend keeps its own types (rows, connections, placeholders, dialect) and its own
//! statement text, checked per backend; the calls are static, with no boxed futures on
//! the hot path (a claim, a finished batch); and what a backend must offer is simply the
//! list of methods below, which the compiler checks arm by arm. `Any` would lose the
//! column types and the dialect, as seafowl found.

// SQL text both backends write the same way (defined before the backends' modules, which
// use them).

/// The start of an INSERT of one fetch's `results` row (a SELECT follows).
macro_rules! insert_result {
    () => {
        "INSERT INTO results (job_id, fetch_no, url, final_url, http_status, content_type,
                              title, description, links, data, bytes, elapsed_ms,
                              not_modified, fetched_at, confirms_result_id) "
    };
}

/// A retried fetch rewrites the row an earlier attempt of the same fetch left.
macro_rules! result_replaces_earlier_attempt {
    () => {
        " ON CONFLICT (job_id, fetch_no) DO UPDATE SET
             url = excluded.url, final_url = excluded.final_url,
             http_status = excluded.http_status, content_type = excluded.content_type,
             title = excluded.title, description = excluded.description,
             links = excluded.links, data = excluded.data, bytes = excluded.bytes,
             elapsed_ms = excluded.elapsed_ms, not_modified = excluded.not_modified,
             fetched_at = excluded.fetched_at, confirms_result_id = excluded.confirms_result_id"
    };
}

mod decisions;
mod error;
mod finish_steps;
mod known_links;
mod postgres;
mod sqlite;
mod types;

use std::sync::Arc;
use std::time::Duration;

pub use decisions::lease_token;
pub use error::StoreError;
pub use types::*;

use crate::job::{Admitted, Attempt, ClaimedJob, JobId, JobKind};
use crate::settings::{DatabaseLocation, DatabaseSettings};

use known_links::KnownLinks;
use postgres::PostgresStore;
pub use postgres::RESULTS_CHANNEL;
use sqlite::SqliteStore;

/// The database crawlq was started on, whichever backend holds it.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Shared by the clones: each finish teaches it what it queued.
    known_links: Arc<KnownLinks>,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Hands a call to the backend in use: `on_backend!(self, db => db.claim(…).await)`.
macro_rules! on_backend {
    ($store:expr, $db:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sqlite($db) => $call,
            Backend::Postgres($db) => $call,
        }
    };
}

impl Store {
    // ---- Opening and closing. ----

    /// Opens the database, creating it if it does not exist, and applies the migrations.
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        Ok(match &settings.location {
            DatabaseLocation::File(path) => SqliteStore::open(path, settings).await?.into(),
            DatabaseLocation::Postgres(url) => PostgresStore::open(url, settings).await?.into(),
        })
    }

    /// Opens a database that must exist already (for commands that read what a daemon
    /// wrote: a mistyped path must say so, not look like an empty queue).
    pub async fn open_existing(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        Ok(match &settings.location {
            DatabaseLocation::File(path) => {
                SqliteStore::open_existing(path, settings).await?.into()
            }
            DatabaseLocation::Postgres(url) => {
                PostgresStore::open_existing(url, settings).await?.into()
            }
        })
    }

    /// Opens the database for a daemon: makes sure no other daemon runs on it (two would
    /// each apply the rate limits; a SQLite lock file, a PostgreSQL advisory lock), and
    /// opens it. `me` is named in the refusal another daemon gets.
    pub async fn open_for_daemon(
        settings: &DatabaseSettings,
        me: &WorkerIdentity,
    ) -> Result<Store, StoreError> {
        Ok(match &settings.location {
            DatabaseLocation::File(path) => SqliteStore::open_for_daemon(path, settings, me)
                .await?
                .into(),
            DatabaseLocation::Postgres(url) => PostgresStore::open_for_daemon(url, settings, me)
                .await?
                .into(),
        })
    }

    /// Returns when new jobs may have been inserted (PostgreSQL: a NOTIFY from the
    /// `jobs_inserted` trigger), so the daemon looks for them at once rather than at its
    /// next poll. On SQLite, which has no such signal, it never returns: polling is all.
    pub async fn wait_for_new_jobs(&self) {
        match &self.backend {
            Backend::Sqlite(_) => std::future::pending().await,
            Backend::Postgres(db) => db.wait_for_new_jobs().await,
        }
    }

    /// Whether opening this store created the database.
    pub fn created(&self) -> bool {
        on_backend!(self, db => db.created())
    }

    /// Fails with [`StoreError::Gone`] if the database is no longer the one that was opened
    /// (its file deleted or replaced, e.g. by a restore): writes would go nowhere anyone
    /// can see. Cheap; the daemon asks every few seconds.
    pub fn check_same_database(&self) -> Result<(), StoreError> {
        on_backend!(self, db => db.check_same_database())
    }

    /// After [`StoreError::Gone`]: lets go of the database without writing anything more
    /// where it used to be, and closes the store.
    pub async fn abandon_gone_database(&self) {
        on_backend!(self, db => db.abandon_gone_database().await)
    }

    /// Closes the connections (and, for a daemon, lets another one start).
    pub async fn close(&self) {
        on_backend!(self, db => db.close().await)
    }

    /// Whether a write transaction can be started (not read-only, not locked for longer
    /// than the busy timeout). Nothing is written.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        on_backend!(self, db => db.check_writable().await)
    }

    // ---- Adding and admitting jobs. ----

    /// Adds a job (the `add` command; users usually INSERT themselves).
    pub async fn insert_job(
        &self,
        url: &str,
        priority: i64,
        selectors: Option<&str>,
        kind: JobKind,
    ) -> Result<JobId, StoreError> {
        on_backend!(self, db => db.insert_job(url, priority, selectors, kind).await)
    }

    /// Up to `limit` queued rows nobody has validated yet, oldest first.
    pub async fn unadmitted(&self, limit: usize) -> Result<Vec<NewJob>, StoreError> {
        let new = on_backend!(self, db => db.unadmitted(limit).await)?;
        // Before any of them can start a crawl under an id the link memory has seen.
        self.known_links
            .forget_if_reused(new.iter().map(|job| job.id.0));
        Ok(new)
    }

    /// Records admission decisions: a host for good jobs, `failed` with the reason for bad
    /// ones. Rows the user changed meanwhile (status or URL) are left for the next turn.
    pub async fn record_admissions(
        &self,
        decisions: &[(&NewJob, Result<Admitted, String>)],
    ) -> Result<Admissions, StoreError> {
        on_backend!(self, db => db.record_admissions(decisions).await)
    }

    // ---- Claiming and leases. ----

    /// Hosts that have admitted, queued jobs due now and are not paused, in host order
    /// starting after `after` and going round up to `after` itself, at most `limit`.
    pub async fn hosts_with_due_jobs(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        on_backend!(self, db => db.hosts_with_due_jobs(after, limit).await)
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
        on_backend!(self, db => db.claim(lease_token, lease, picks, conditional_get).await)
    }

    /// Pushes back the expiry of the leases we hold (only those), so anything the
    /// scheduler lost track of expires and comes back. Returns the leases of `held` that
    /// are no longer ours (job id and lease token): the user cancelled the job or edited
    /// its URL, or the lease expired and was taken back. Nothing those attempts bring
    /// back can be stored, so they can stop.
    pub async fn renew_leases(
        &self,
        lease: Duration,
        held: &[&ClaimedJob],
    ) -> Result<Vec<(JobId, String)>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let renewed = on_backend!(self, db => db.renew_leases(lease, held).await)?;
        Ok(decisions::leases_lost(held, &renewed))
    }

    /// Jobs whose lease ran out go back to `queued`, or to `failed` after their last
    /// attempt.
    pub async fn requeue_expired(&self, default_max_attempts: u32) -> Result<u64, StoreError> {
        on_backend!(self, db => db.requeue_expired(default_max_attempts).await)
    }

    /// On shutdown: hands every job `owner` still holds back to the queue, the interrupted
    /// attempt not counted.
    pub async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        on_backend!(self, db => db.release(owner).await)
    }

    // ---- Finishing. ----

    /// Stores a batch of finished attempts in one transaction: each job's new status (if
    /// its lease still holds) and what its fetch brought back. Nothing is acknowledged
    /// before commit.
    pub async fn finish(&self, attempts: &[Attempt]) -> Result<FinishReport, StoreError> {
        let mut report = on_backend!(self, db => db.finish(attempts, &self.known_links).await)?;
        // Committed: the links it queued are in `jobs` now.
        self.known_links.remember(report.queued_links.drain(..));
        Ok(report)
    }

    // ---- What the crawl looks up. ----

    /// `crawlq unpause HOST`: see [`Unpaused`].
    pub async fn unpause(&self, host: &str) -> Result<Unpaused, StoreError> {
        on_backend!(self, db => db.unpause(host).await)
    }

    /// Hosts `crawlq unpause` lifted within the last `within`, each with when (an opaque
    /// text that differs for each unpause): a running daemon lifts what it holds in
    /// memory for them, once per unpause.
    pub async fn lifted_pauses(
        &self,
        within: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        on_backend!(self, db => db.lifted_pauses(within).await)
    }

    /// Hosts still paused (Retry-After), with how long is left.
    pub async fn active_pauses(&self) -> Result<Vec<(String, Duration)>, StoreError> {
        on_backend!(self, db => db.active_pauses().await)
    }

    /// The job of `asking`'s crawl whose URL is `canonical_url`, other than `asking` and
    /// what it left behind.
    pub async fn crawl_job_for(
        &self,
        asking: &ClaimedJob,
        canonical_url: &str,
    ) -> Result<Option<JobId>, StoreError> {
        on_backend!(self, db => db.crawl_job_for(asking, canonical_url).await)
    }

    /// The stored robots.txt answer for `origin` while it is fresh, with how long it
    /// still holds.
    pub async fn robots(
        &self,
        origin: &str,
    ) -> Result<Option<(RobotsAnswer, Duration)>, StoreError> {
        on_backend!(self, db => db.robots(origin).await)
    }

    /// Keeps robots.txt answers, each for its `fresh_for`, replacing older ones.
    pub async fn save_robots(&self, answers: &[FetchedRobots]) -> Result<(), StoreError> {
        on_backend!(self, db => db.save_robots(answers).await)
    }

    /// For a `304 Not Modified` result, the result holding the version it confirmed
    /// (`confirms_result_id`). None for any other result.
    pub async fn confirmed_version(&self, result_id: i64) -> Result<Option<i64>, StoreError> {
        on_backend!(self, db => db.confirmed_version(result_id).await)
    }

    /// A stored body (`fetch.store_body`) as kept: gzip bytes. None if there is none.
    pub async fn gzipped_body(&self, result_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        on_backend!(self, db => db.gzipped_body(result_id).await)
    }

    // ---- Workers: one row per daemon process. ----

    pub async fn register_worker(&self, me: &WorkerIdentity) -> Result<(), StoreError> {
        on_backend!(self, db => db.register_worker(me).await)
    }

    /// Refreshes a worker's heartbeat and counters; `stopped` marks a clean exit.
    pub async fn heartbeat(
        &self,
        id: &str,
        counters: &WorkerCounters,
        stopped: bool,
    ) -> Result<(), StoreError> {
        on_backend!(self, db => db.heartbeat(id, counters, stopped).await)
    }

    /// The newest daemon that registered from `hostname` (in a container: this one).
    pub async fn newest_worker_on(
        &self,
        hostname: &str,
    ) -> Result<Option<WorkerHealth>, StoreError> {
        on_backend!(self, db => db.newest_worker_on(hostname).await)
    }

    // ---- Reports. ----

    /// Whether any job is running or waiting (a job only waiting for its next recrawl does
    /// not count).
    pub async fn has_unfinished_jobs(&self) -> Result<bool, StoreError> {
        on_backend!(self, db => db.has_unfinished_jobs().await)
    }

    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        on_backend!(self, db => db.status_counts().await)
    }

    /// What `crawlq status` reports, read at one point in time.
    pub async fn status_report(&self, limits: StatusLimits) -> Result<StatusReport, StoreError> {
        on_backend!(self, db => db.status_report(limits).await)
    }
}

impl From<SqliteStore> for Store {
    fn from(db: SqliteStore) -> Store {
        Store {
            backend: Backend::Sqlite(db),
            known_links: Arc::default(),
        }
    }
}

impl From<PostgresStore> for Store {
    fn from(db: PostgresStore) -> Store {
        Store {
            backend: Backend::Postgres(db),
            known_links: Arc::default(),
        }
    }
}
