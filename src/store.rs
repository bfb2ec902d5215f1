//! The database: every SQL statement crawlq runs lives in this module, and it is the only
//! one that names `sqlx`. The rest of the code speaks in domain types.
//!
//! Concurrency rules (users write to the same file with their own SQLite clients):
//! - WAL mode, a busy timeout, and short write transactions that start with their write.
//! - Claiming a job *is* taking its lease: one `UPDATE … RETURNING` moves queued jobs to
//!   running with a lease token (daemon id + claim number) and an expiry, and bumps
//!   `attempts`.
//! - Every later change to a running job checks in its `WHERE` that the lease is still
//!   ours (token + attempt); zero rows changed means the lease was lost (the user cancelled
//!   the job or edited its URL, or the lease expired) and the result is dropped.
//! - A job's result and its new status are written in one transaction, and a batch of
//!   finished jobs shares one transaction (group commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use crate::fetch::Validators;
use crate::follow::CrawlSpec;
use crate::job::{
    Admitted, Attempt, ClaimedJob, JobId, KnownVersion, PageRecord, RedirectTarget, Status, Verdict,
};
use crate::robots::{FetchedRobots, RobotsAnswer};
use crate::runtime::{AsyncMutex, AsyncMutexGuard};
use crate::settings::DatabaseSettings;

/// All timestamps are UTC ISO-8601 text written by SQLite, so comparisons use one clock.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}

/// `now` plus a bound number of seconds (fractional allowed).
macro_rules! now_plus {
    ($param:literal) => {
        concat!(
            "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ",
            $param,
            " || ' seconds')"
        )
    };
}

/// The admission guard shared by every decision on a new job: ?1 id, ?2 the URL bytes as
/// read. A row the user changed since (status or URL) is left for the next turn.
macro_rules! still_unadmitted {
    () => {
        " WHERE id = ?1 AND CAST(url AS BLOB) = ?2 AND status = 'queued' AND host IS NULL"
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Hosts picked for more than one job, per claim statement (each is a term of a compound
/// SELECT, and SQLite allows 500).
const CLAIM_HOSTS_PER_STATEMENT: usize = 200;

/// The `lease_owner` a claim writes: the daemon's id and the claim's number. Unique per
/// claim, so an attempt that outlived its lease (the user re-queued the job) can never
/// match the lease of a later claim, whatever the user did to `attempts`.
pub fn lease_token(owner: &str, claim: u64) -> String {
    format!("{owner}/{claim}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: could not create its directory: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database {path}: could not read the file's metadata: {source}")]
    Inspect {
        path: String,
        source: std::io::Error,
    },
    #[error("database {path}: could not open: {source}{}", advice(.source))]
    Open { path: String, source: sqlx::Error },
    #[error("database {path}: could not apply migrations: {source}{}", migrate_advice(.source))]
    Migrate {
        path: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}{}", advice(.source))]
    Query {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "database {path} {what} while the daemon was using it; stopping, since its writes \
         would go to a file nobody can see (restart the daemon to open the database again)"
    )]
    FileGone { path: String, what: &'static str },
}

/// What an operator should do about a database error, for the errors that come from the
/// machine rather than from crawlq (SQLite's own messages say what, not why).
fn advice(error: &sqlx::Error) -> &'static str {
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok());
    // Extended result codes carry the primary code in their low byte.
    match code.map(|code| code & 0xff) {
        Some(5 | 6) => {
            " (another connection held the database locked for longer than \
             database.busy_timeout_ms: is a client keeping a transaction open?)"
        }
        Some(8) => {
            " (the daemon's user cannot write the database: check the permissions of the \
             file, its -wal and -shm files and its directory, and that the file system is \
             not mounted read-only)"
        }
        Some(10) => {
            " (a read or write of the disk failed: is the disk full, or the file over a \
             quota or file size limit? Free space and the daemon resumes by itself)"
        }
        Some(11 | 26) => {
            " (the file is damaged or not a database: run PRAGMA integrity_check and \
             restore a backup)"
        }
        Some(13) => " (the disk is full: free space and the daemon resumes by itself)",
        Some(14) => {
            " (the file or its directory cannot be opened: deleted, moved, or its \
             permissions changed?)"
        }
        _ => "",
    }
}

fn migrate_advice(error: &sqlx::migrate::MigrateError) -> &'static str {
    match error {
        sqlx::migrate::MigrateError::Execute(e)
        | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => advice(e),
        _ => "",
    }
}

trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { doing, source })
    }
}

/// A job row nobody has validated yet.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    /// The URL as text; bytes that are not UTF-8 become U+FFFD.
    pub url: String,
    /// The URL exactly as stored, so a decision is only recorded if the user has not
    /// edited the row since it was read.
    url_bytes: Vec<u8>,
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

const COUNT_BY_STATUS: &str = "SELECT status, COUNT(*) FROM jobs GROUP BY status";

impl StatusCounts {
    /// From `(status, count)` rows; a status the daemon does not know is left out.
    fn from_rows(rows: Vec<(String, i64)>) -> StatusCounts {
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

#[derive(Clone, Debug)]
pub struct Store {
    /// For the crawl's own reads and writes (robots.txt, a redirect target's job), from
    /// many tasks at once, and for the migrations.
    pool: SqlitePool,
    /// One connection for everything the scheduler and the command line do. A connection
    /// must drop its page cache whenever another connection has written, so when the
    /// scheduler's statements went to whichever pooled connection was free, each one
    /// started cold and re-read its index pages from the file (11 reads per page stored).
    /// On one connection the cache stays warm, and the single writer is what SQLite
    /// allows anyway. It is held outside a pool because a pool pings a connection each
    /// time it is given back, a round trip to SQLite's thread per statement.
    writer: Arc<Writer>,
    file: Arc<DatabaseFile>,
}

/// Connections for the crawl's lookups, and their page cache each (`-N` is N KiB).
const READER_CONNECTIONS: u32 = 2;
const READER_CACHE: &str = "-1024";
/// The writer's page cache: big enough for the indexes a crawl of 200 000 pages writes
/// to at random (its URLs, its validators).
const WRITER_CACHE: &str = "-8192";

/// The scheduler's connection (see [`Store`]), opened again after it was given up.
#[derive(Debug)]
struct Writer {
    options: SqliteConnectOptions,
    connection: AsyncMutex<Option<SqliteConnection>>,
}

/// The writer connection, held for one operation.
struct WriterGuard<'a>(AsyncMutexGuard<'a, Option<SqliteConnection>>);

impl std::ops::Deref for WriterGuard<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.0
            .as_ref()
            .expect("a WriterGuard always holds a connection")
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.0
            .as_mut()
            .expect("a WriterGuard always holds a connection")
    }
}

/// A pool of at most `connections`, guarded against a transaction SQLite ended by itself.
fn pool_options(connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(connections)
        // SQLite rolls a transaction back by itself when a write fails for want of room
        // (SQLITE_FULL, SQLITE_IOERR). sqlx does not notice: its ROLLBACK then fails
        // ("no transaction is active"), it goes on counting the transaction as open,
        // and the connection's next `begin()` becomes a SAVEPOINT that starts a real
        // transaction nothing ever commits. That connection holds the write lock for
        // good, sees its own writes that nobody else sees, and every other writer
        // gets "database is locked". A connection in that state is closed, not reused
        // (its close rolls back whatever it holds). By the time it is acquired again,
        // the queued ROLLBACK and the pool's release ping have run, so the count is
        // settled.
        .before_acquire(|conn, _| {
            Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
        })
}

/// The database file as it was opened, to notice it being deleted or replaced.
#[derive(Debug)]
struct DatabaseFile {
    path: PathBuf,
    /// Device and inode.
    identity: (u64, u64),
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| (0, 0))
    }
}

impl Store {
    /// Opens (creating it and its directory if needed) and migrates the database.
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let path = settings.path.display().to_string();
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("static options parse")
            .filename(&settings.path)
            // WAL lets users read while we write, and their inserts wait on the busy
            // timeout instead of failing. NORMAL sync is durable against a crash of this
            // process (only an OS crash can lose the last commits).
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true);
        // The file is created here, once. The pool's connections never create it, so a
        // database deleted under the daemon is an error rather than a new, empty file.
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // Kept open until the pool is up and migrated: the last connection to close
        // checkpoints the write-ahead log into the file and deletes it, syncing the disk
        // while it holds the write lock, so a user's insert could wait on that for nothing.
        let first = options
            .clone()
            .create_if_missing(true)
            .connect()
            .await
            .map_err(open_error)?;
        let options = options.create_if_missing(false);
        let pool = pool_options(READER_CONNECTIONS)
            .connect_with(options.clone().pragma("cache_size", READER_CACHE))
            .await
            .map_err(open_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        let writer_options = options.pragma("cache_size", WRITER_CACHE);
        let writer = Writer {
            connection: AsyncMutex::new(Some(writer_options.connect().await.map_err(open_error)?)),
            options: writer_options,
        };
        first.close().await.map_err(open_error)?;
        let file = DatabaseFile {
            path: settings.path.clone(),
            identity: file_identity(&settings.path).map_err(|source| StoreError::Inspect {
                path: path.clone(),
                source,
            })?,
        };
        Ok(Store {
            pool,
            writer: Arc::new(writer),
            file: Arc::new(file),
        })
    }

    /// The writer connection, for one operation. SQLite rolls a transaction back by itself
    /// when a write fails for want of room, and sqlx may then go on counting it as open
    /// (see [`pool_options`]); such a connection is closed and a new one opened.
    async fn writer(&self) -> Result<WriterGuard<'_>, sqlx::Error> {
        let mut held = self.writer.connection.lock().await;
        if let Some(connection) = held.as_mut() {
            if connection.is_in_transaction() {
                // A dropped transaction's ROLLBACK may still be queued: let it run first.
                let _ = connection.ping().await;
            }
        }
        if held.as_ref().is_some_and(|c| c.is_in_transaction()) {
            if let Some(stuck) = held.take() {
                let _ = stuck.close().await;
            }
        }
        if held.is_none() {
            *held = Some(self.writer.options.connect().await?);
        }
        Ok(WriterGuard(held))
    }

    /// Fails if the database file was deleted or replaced (e.g. by a restore) since it was
    /// opened. SQLite would carry on writing to the open, now invisible, file.
    pub fn check_file(&self) -> Result<(), StoreError> {
        let gone = |what| StoreError::FileGone {
            path: self.file.path.display().to_string(),
            what,
        };
        match file_identity(&self.file.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone("was deleted")),
            Ok(now) if now != self.file.identity => Err(gone("was replaced by another file")),
            _ => Ok(()),
        }
    }

    /// After [`Store::check_file`] failed: moves what the write-ahead log holds into the
    /// file we have open (deleted or replaced) and empties the log. The log is shared by
    /// path, so left as it is, the next program to open a restored file would replay our
    /// writes over it.
    pub async fn release_gone_file(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(
                &mut *self
                    .writer()
                    .await
                    .doing("emptying the write-ahead log of a deleted or replaced database")?,
            )
            .await
            .doing("emptying the write-ahead log of a deleted or replaced database")?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(connection) = self.writer.connection.lock().await.take() {
            let _ = connection.close().await;
        }
        self.pool.close().await;
    }

    // ---- Adding jobs (the `add` command; users usually INSERT themselves). ----

    pub async fn insert_job(
        &self,
        url: &str,
        priority: i64,
        selectors: Option<&str>,
    ) -> Result<JobId, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (url, priority, selectors) VALUES (?1, ?2, ?3) RETURNING id",
        )
        .bind(url)
        .bind(priority)
        .bind(selectors)
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

    // ---- Claiming. ----

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
        let (single, several): (Vec<&HostPick>, Vec<&HostPick>) =
            picks.iter().partition(|pick| pick.jobs == 1);
        let single = serde_json::to_string(
            &single
                .iter()
                .map(|pick| pick.host.as_str())
                .collect::<Vec<_>>(),
        )
        .expect("host names serialize");
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
    pub async fn renew_leases(
        &self,
        lease: Duration,
        held: &[&ClaimedJob],
    ) -> Result<u64, StoreError> {
        if held.is_empty() {
            return Ok(0);
        }
        let leases: Vec<(i64, &str)> = held.iter().map(|j| (j.id.0, j.lease.as_str())).collect();
        let leases = serde_json::to_string(&leases).expect("ids and strings serialize");
        let done = sqlx::query(concat!(
            "UPDATE jobs SET lease_expires_at = ",
            now_plus!("?1"),
            " WHERE status = 'running'
                AND (id, lease_owner) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?2))"
        ))
        .bind(lease.as_secs_f64())
        .bind(leases)
        .execute(&mut *self.writer().await.doing("renewing leases")?)
        .await
        .doing("renewing leases")?;
        Ok(done.rows_affected())
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

    // ---- Finishing. ----

    /// Stores a batch of finished attempts in one transaction: each job's new status and,
    /// if a response came back, its `results` row. Nothing is acknowledged before commit.
    pub async fn finish(&self, attempts: &[Attempt]) -> Result<FinishReport, StoreError> {
        let mut report = FinishReport::default();
        if attempts.is_empty() {
            return Ok(report);
        }
        let mut writer = self.writer().await.doing("storing results")?;
        let mut tx = writer.begin().await.doing("storing results")?;
        // The common case, a page fetched and parsed on the first try, is stored for the
        // whole batch in a few statements: each statement is a round trip to SQLite's
        // worker thread, and those trips, not SQLite, were most of a page's cost.
        let mut seen = std::collections::HashSet::new();
        let (plain, others): (Vec<&Attempt>, Vec<&Attempt>) = attempts
            .iter()
            .partition(|a| is_plain_first_fetch(a) && seen.insert(a.job.id));
        finish_plain_batch(&mut tx, &plain, &mut report).await?;
        for attempt in others {
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
                Verdict::Failed { reason } | Verdict::Skipped { reason } => {
                    query = query.bind(reason)
                }
            }
            let changed = query
                .execute(&mut *tx)
                .await
                .doing("storing results")?
                .rows_affected();
            // The host's request to wait stands even if this job's lease was lost.
            if let Some((host, how_long)) = &attempt.pause {
                pause_host(&mut tx, host, *how_long, &attempt.verdict).await?;
            }
            if changed == 0 {
                report.lost.push((job.id, job.attempt));
                tracing::warn!(
                    job.id = %job.id,
                    url = %job.url,
                    "lease lost before the result was stored (job cancelled, edited or expired); result dropped"
                );
                continue;
            }
            if let Some(page) = &attempt.page {
                let result_id = upsert_result(&mut tx, job, page).await?;
                if job.attempt > 1 {
                    // A retry may have replaced an earlier attempt's row: drop what hung
                    // off it before attaching this answer's.
                    forget_replaced_result(&mut tx, result_id).await?;
                }
                if page.gzipped_body.is_some() {
                    store_body(&mut tx, result_id, page).await?;
                }
                if let Some(url) = &job.canonical_url {
                    update_validators(&mut tx, &[(url.as_str(), page, result_id)]).await?;
                }
            }
            if let (Verdict::Done, Some(page)) = (&attempt.verdict, &attempt.page) {
                if let Some(target) = &page.redirect_target {
                    mark_redirect_target(&mut tx, job, page, target).await?;
                }
            }
            if attempt.verdict == Verdict::Done && !attempt.children.is_empty() {
                queue_children(&mut tx, &[attempt]).await?;
            }

            report.stored += 1;
        }
        tx.commit().await.doing("storing results")?;
        Ok(report)
    }

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

    // ---- Workers: one row per daemon process. ----

    /// Adds this daemon's row. (Only one daemon runs per database: see the lock file in
    /// `daemon`.)
    pub async fn register_worker(&self, me: &WorkerIdentity) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, hostname, pid, version, heartbeat_every_secs)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&me.id)
        .bind(&me.hostname)
        .bind(i64::from(me.pid))
        .bind(&me.version)
        .bind(me.heartbeat_every.as_secs_f64())
        .execute(
            &mut *self
                .writer()
                .await
                .doing("registering this daemon in workers")?,
        )
        .await
        .doing("registering this daemon in workers")?;
        Ok(())
    }

    /// Refreshes a worker's heartbeat and counters; `stopped` marks a clean exit.
    pub async fn heartbeat(
        &self,
        id: &str,
        counters: &WorkerCounters,
        stopped: bool,
    ) -> Result<(), StoreError> {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(concat!(
            "UPDATE workers SET heartbeat_at = ",
            now!(),
            ", stopped_at = CASE WHEN ?9 THEN ",
            now!(),
            " END,
                claimed = ?2, done = ?3, failed = ?4, retried = ?5, skipped = ?6,
                bytes = ?7, in_flight = ?8
              WHERE id = ?1"
        ))
        .bind(id)
        .bind(clamp(counters.claimed))
        .bind(clamp(counters.done))
        .bind(clamp(counters.failed))
        .bind(clamp(counters.retried))
        .bind(clamp(counters.skipped))
        .bind(clamp(counters.bytes))
        .bind(clamp(counters.in_flight))
        .bind(stopped)
        .execute(
            &mut *self
                .writer()
                .await
                .doing("writing this daemon's heartbeat")?,
        )
        .await
        .doing("writing this daemon's heartbeat")?;
        Ok(())
    }

    /// The newest daemon that registered from `hostname` (in a container: this one).
    pub async fn newest_worker_on(
        &self,
        hostname: &str,
    ) -> Result<Option<WorkerHealth>, StoreError> {
        let row: Option<(String, i64, String, f64)> = sqlx::query_as(
            "SELECT id, pid, state, heartbeat_age_secs FROM worker_status
              WHERE hostname = ?1 ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .bind(hostname)
        .fetch_optional(&mut *self.writer().await.doing("reading workers")?)
        .await
        .doing("reading workers")?;
        Ok(row.map(|(id, pid, state, age)| WorkerHealth {
            id,
            pid,
            state,
            heartbeat_age: Duration::from_secs_f64(age.max(0.0)),
        }))
    }

    /// Whether a write transaction can be started (not read-only, not locked for longer
    /// than the busy timeout). Nothing is written.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        // Dropped without a commit, the transaction rolls back.
        let _tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("checking the database is writable")?;
        Ok(())
    }

    // ---- robots.txt answers, per origin. ----

    /// The stored robots.txt answer for `origin` while it is fresh, with how long it
    /// still holds.
    pub async fn robots(
        &self,
        origin: &str,
    ) -> Result<Option<(RobotsAnswer, Duration)>, StoreError> {
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
                    // NotAsked never reaches here (it is not kept); stored, it reads as Failed.
                    RobotsAnswer::Failed(reason) | RobotsAnswer::NotAsked(reason) => {
                        (None, None, Some(reason.as_str()))
                    }
                };
                serde_json::json!([
                    fetched.origin,
                    status,
                    body,
                    error,
                    fetched.fresh_for.as_secs_f64()
                ])
            })
            .collect();
        let rows = serde_json::Value::Array(rows).to_string();
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

    // ---- Reading state. ----

    /// A stored body (`fetch.store_body`) as kept: gzip bytes. None if there is none.
    pub async fn gzipped_body(&self, result_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT body FROM bodies WHERE result_id = ?1")
            .bind(result_id)
            .fetch_optional(&mut *self.writer().await.doing("reading a stored body")?)
            .await
            .doing("reading a stored body")
    }

    /// Whether any job is running or waiting; a job only waiting for its next recrawl
    /// does not count (so `run --exit-when-idle` ends after one round of a recrawl).
    pub async fn has_unfinished_jobs(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM jobs
                             WHERE status = 'running'
                                OR (status = 'queued'
                                    AND NOT (fetch_no > 1 AND attempts = 0 AND run_after > ",
            now!(),
            ")))"
        ))
        .fetch_one(&mut *self.writer().await.doing("checking for unfinished jobs")?)
        .await
        .doing("checking for unfinished jobs")
    }

    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_BY_STATUS)
            .fetch_all(&mut *self.writer().await.doing("counting jobs")?)
            .await
            .doing("counting jobs")?;
        Ok(StatusCounts::from_rows(rows))
    }

    /// What `crawlq status` reports, read in one transaction so that its parts agree:
    /// the `limits.top_hosts` hosts by queue depth, the errors of the last hour grouped by
    /// reason (at most `limits.error_groups`), and workers running, stale or stopped within
    /// the last day (at most `limits.workers`).
    pub async fn status_report(&self, limits: StatusLimits) -> Result<StatusReport, StoreError> {
        const DOING: &str = "reading the status report";
        let mut writer = self.writer().await.doing(DOING)?;
        let mut tx = writer.begin().await.doing(DOING)?;
        let jobs = StatusCounts::from_rows(
            sqlx::query_as(COUNT_BY_STATUS)
                .fetch_all(&mut *tx)
                .await
                .doing(DOING)?,
        );
        // The oldest due job by id walks the status index in order and stops early.
        let (not_yet_admitted, oldest_due_created_at): (i64, Option<String>) =
            sqlx::query_as(concat!(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND host IS NULL),
                        (SELECT created_at FROM jobs INDEXED BY jobs_status
                          WHERE status = 'queued' AND run_after <= ",
                now!(),
                " ORDER BY id LIMIT 1)"
            ))
            .fetch_one(&mut *tx)
            .await
            .doing(DOING)?;
        let (fetched_last_minute, fetched_last_hour): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(fetched_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-60 seconds')), 0),
                    COUNT(*)
               FROM results
              WHERE fetched_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')",
        )
        .fetch_one(&mut *tx)
        .await
        .doing(DOING)?;
        let top_hosts: Vec<HostQueue> = sqlx::query_as(concat!(
            "SELECT q.host, q.queued, q.due,
                    (SELECT COUNT(*) FROM jobs r
                      WHERE r.status = 'running' AND r.host = q.host) AS running,
                    CASE WHEN h.paused_until > ",
            now!(),
            " THEN h.paused_until END AS paused_until,
                    CASE WHEN h.paused_until > ",
            now!(),
            " THEN h.pause_reason END AS pause_reason
               FROM (SELECT host, COUNT(*) AS queued, SUM(run_after <= ",
            now!(),
            ") AS due
                       FROM jobs WHERE status = 'queued' AND host IS NOT NULL
                      GROUP BY host ORDER BY queued DESC, host LIMIT ?1) q
               LEFT JOIN hosts h ON h.host = q.host
              ORDER BY q.queued DESC, q.host"
        ))
        .bind(limits.top_hosts)
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        // Failed jobs by when they finished; jobs waiting for a retry (attempts > 0: a
        // recrawl waiting for its next fetch has 0) by when they were put back. Retry
        // messages end in "(attempt N of M; retrying in X s)" and final ones in "(gave up
        // after N attempts)": that is cut off so that one cause is one group.
        let recent_errors: Vec<ErrorGroup> = sqlx::query_as(
            "SELECT status, reason, COUNT(*) AS jobs, MAX(at) AS last_seen
               FROM (SELECT status, at,
                            CASE WHEN instr(error, ' (attempt ') > 0
                                     THEN substr(error, 1, instr(error, ' (attempt ') - 1)
                                 WHEN instr(error, ' (gave up after ') > 0
                                     THEN substr(error, 1, instr(error, ' (gave up after ') - 1)
                                 ELSE IFNULL(error, '') END AS reason
                       FROM (SELECT status, finished_at AS at, error
                               FROM jobs INDEXED BY jobs_finished_at
                              WHERE finished_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')
                                AND status = 'failed'
                             UNION ALL
                             SELECT status, updated_at, error
                               FROM jobs INDEXED BY jobs_retrying
                              WHERE status = 'queued' AND error IS NOT NULL AND attempts > 0
                                AND updated_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')))
              GROUP BY status, reason
              ORDER BY jobs DESC, reason
              LIMIT ?1",
        )
        .bind(limits.error_groups)
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        let workers: Vec<WorkerSummary> = sqlx::query_as(
            "SELECT id, hostname, pid, version, state, started_at, heartbeat_age_secs,
                    claimed, done, failed, in_flight
               FROM worker_status
              WHERE state = 'running'
                 OR heartbeat_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')
              ORDER BY started_at DESC, id
              LIMIT ?1",
        )
        .bind(limits.workers)
        .fetch_all(&mut *tx)
        .await
        .doing(DOING)?;
        tx.commit().await.doing(DOING)?;
        Ok(StatusReport {
            jobs,
            not_yet_admitted,
            oldest_due_created_at,
            fetched_last_minute,
            fetched_last_hour,
            top_hosts,
            recent_errors,
            workers,
        })
    }
}

/// The lease check shared by every change to a running job: ?1 id, ?2 lease token, ?3 attempt.
/// The start of an INSERT of one fetch's `results` row (a SELECT follows).
macro_rules! insert_result {
    () => {
        "INSERT INTO results (job_id, fetch_no, url, final_url, http_status, content_type,
                              title, description, links, data, bytes, elapsed_ms,
                              not_modified, fetched_at) "
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
             fetched_at = excluded.fetched_at"
    };
}

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

/// Back to the queue with the attempt not counted (crawlq's own fault).
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
                    CAST(canonical_url AS BLOB) AS canonical_url,
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
    Ok(ClaimedJob {
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
    }
    .with_known_version(row.try_get("known_version").ok().flatten()))
}

impl ClaimedJob {
    /// The stored version from a claim's `known_version` column, kept only if its result
    /// was parsed with this job's selectors: a 304 copies that result's `data`. A version
    /// that does not decode means a plain GET, which is always right.
    fn with_known_version(mut self, known: Option<Vec<u8>>) -> ClaimedJob {
        type Version = (Option<String>, Option<String>, i64, Option<String>);
        let known = known.and_then(|json| serde_json::from_slice::<Version>(&json).ok());
        if let Some((etag, last_modified, result_id, selectors)) = known {
            if selectors == self.selectors {
                self.known_version = Some(KnownVersion {
                    validators: Validators {
                        etag,
                        last_modified,
                    },
                    result_id,
                });
            }
        }
        self
    }
}

/// Bytes as lower-case hex, for SQLite's `unhex()`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// A user-written text column read without trusting it to be UTF-8 (SQLite does not check).
fn lossy_text(row: &SqliteRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Records where a crawl's redirect led as a `skipped` row of the crawl, so the unique
/// (root, canonical URL) index keeps links to that page from being fetched again.
async fn mark_redirect_target(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: &ClaimedJob,
    page: &PageRecord,
    target: &RedirectTarget,
) -> Result<(), StoreError> {
    sqlx::query(concat!(
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
    .execute(&mut **tx)
    .await
    .doing("recording a redirect target")?;
    Ok(())
}

/// Records a host's pause (a longer one already recorded wins).
async fn pause_host(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    host: &str,
    how_long: Duration,
    verdict: &Verdict,
) -> Result<(), StoreError> {
    let reason = match verdict {
        Verdict::Retry { reason, .. }
        | Verdict::Requeue { reason, .. }
        | Verdict::Failed { reason }
        | Verdict::Skipped { reason } => reason.as_str(),
        Verdict::Done => "Retry-After",
    };
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
    .execute(&mut **tx)
    .await
    .doing("recording a host pause")?;
    Ok(())
}

/// Writes the `results` row of this fetch (a retry of the same fetch replaces it) and
/// returns its id. A 304 copies the content of the result it confirmed.
async fn upsert_result(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: &ClaimedJob,
    page: &PageRecord,
) -> Result<i64, StoreError> {
    let copied = page.unchanged_since.is_some();
    let links = (!copied).then(|| serde_json::to_string(&page.links).expect("strings serialize"));
    let data = (!copied).then(|| serde_json::to_string(&page.data).expect("strings serialize"));
    sqlx::query_scalar(concat!(
        insert_result!(),
        "SELECT ?1, ?2, ?3, ?4, ?5, COALESCE(?6, old.content_type), COALESCE(?7, old.title),
                COALESCE(?8, old.description), COALESCE(?9, old.links, '[]'),
                COALESCE(?10, old.data, '{}'), ?11, ?12, ?13, ",
        now!(),
        "
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
    .fetch_one(&mut **tx)
    .await
    .doing("storing results")
}

/// A retried fetch rewrote result `result_id`: a body or validators stored for the
/// earlier attempt's answer no longer describe it.
async fn forget_replaced_result(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    result_id: i64,
) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM bodies WHERE result_id = ?1",
        "DELETE FROM validators WHERE result_id = ?1",
    ] {
        sqlx::query(sql)
            .bind(result_id)
            .execute(&mut **tx)
            .await
            .doing("storing results")?;
    }
    Ok(())
}

async fn store_body(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    result_id: i64,
    page: &PageRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO bodies (result_id, body) VALUES (?1, ?2)
         ON CONFLICT (result_id) DO UPDATE SET body = excluded.body",
    )
    .bind(result_id)
    .bind(page.gzipped_body.as_deref())
    .execute(&mut **tx)
    .await
    .doing("storing a body")?;
    Ok(())
}

/// A done first fetch with nothing but a result, validators and links to store: no body,
/// no 304 copy, no redirect to record, no host pause, no earlier attempt's row to replace.
fn is_plain_first_fetch(attempt: &Attempt) -> bool {
    let Some(page) = &attempt.page else {
        return false;
    };
    attempt.verdict == Verdict::Done
        && attempt.pause.is_none()
        && attempt.job.attempt == 1
        && page.unchanged_since.is_none()
        && page.gzipped_body.is_none()
        && page.redirect_target.is_none()
}

fn plain_page(attempt: &Attempt) -> &PageRecord {
    attempt.page.as_ref().expect("plain fetches have a page")
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

/// Stores a batch of plain first fetches (see [`is_plain_first_fetch`]) in five statements
/// at most, whatever its size; the same rows as the one-attempt path.
async fn finish_plain_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    attempts: &[&Attempt],
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
        report.lost.push((attempt.job.id, attempt.job.attempt));
        tracing::warn!(
            job.id = %attempt.job.id,
            url = %attempt.job.url,
            "lease lost before the result was stored (job cancelled, edited or expired); result dropped"
        );
    }
    if stored.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = stored
        .iter()
        .map(|a| {
            let p = plain_page(a);
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
        "
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
            Some((url, plain_page(a), result_id))
        })
        .collect();
    update_validators(tx, &answers).await?;
    queue_children(tx, &stored).await?;
    report.stored += stored.len();
    Ok(())
}

/// Keeps the validators of 2xx pages fetched without redirects (they describe their URL),
/// so the next fetch of a URL can be conditional, and forgets them when a new version came
/// without any. A 304 (its stored version still holds) and other statuses change nothing.
/// Each answer is (canonical URL, page, result id); per URL the last answer decides, as one
/// after another would.
async fn update_validators(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    answers: &[(&str, &PageRecord, i64)],
) -> Result<(), StoreError> {
    let mut decided: HashMap<&str, Option<(&Validators, i64)>> = HashMap::new();
    for &(url, page, result_id) in answers {
        if page.unchanged_since.is_some() || !(200..300).contains(&page.http_status) {
            continue;
        }
        let keep = !page.validators.is_empty() && page.final_url == page.url;
        decided.insert(url, keep.then_some((&page.validators, result_id)));
    }
    let mut keep = Vec::new();
    let mut forget = Vec::new();
    for (url, decision) in decided {
        match decision {
            Some((validators, result_id)) => {
                keep.push((url, &validators.etag, &validators.last_modified, result_id))
            }
            None => forget.push(url),
        }
    }
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
        .execute(&mut **tx)
        .await
        .doing("remembering validators")?;
    }
    if !forget.is_empty() {
        sqlx::query("DELETE FROM validators WHERE url IN (SELECT value FROM json_each(?1))")
            .bind(serde_json::to_string(&forget).expect("values serialize"))
            .execute(&mut **tx)
            .await
            .doing("remembering validators")?;
    }

    Ok(())
}

/// Queues the links of done pages as child jobs of their crawls, in page order.
async fn queue_children(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    pages: &[&Attempt],
) -> Result<(), StoreError> {
    // A URL linked from two pages of one crawl is queued once, by the first: a second copy
    // would take a place in the crawl's budget and then lose to the unique index, leaving
    // the crawl short of `max_pages`.
    let mut linked = std::collections::HashSet::new();
    let links: Vec<_> = pages
        .iter()
        .flat_map(|a| {
            a.children
                .iter()
                .map(|c| (a.job.id.0, a.job.root_id, c.url.as_str(), c.host.as_str()))
        })
        .filter(|(_, root, url, _)| linked.insert((*root, *url)))
        .collect();
    // In slices, so that pages with huge numbers of links cannot make one statement's
    // text too big for SQLite; each slice sees the crawl sizes the previous one left.
    for slice in links.chunks(LINKS_PER_STATEMENT) {
        queue_children_batch(tx, slice).await?;
    }
    Ok(())
}

/// One statement of `queue_children`: each (parent id, root id, URL, host) becomes a job of
/// the parent's crawl unless the crawl has the URL already, within each crawl's page budget
/// (`max_pages`, kept on its root job), counted in link order across the slice.
async fn queue_children_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    links: &[(i64, i64, &str, &str)],
) -> Result<(), StoreError> {
    // Sent as runs of links that share a parent, a crawl and a host, each run's URLs a
    // plain JSON array: SQLite then reads each URL as it walks the array, where taking four
    // fields out of one small JSON array per link cost more than the duplicate lookup.
    let mut runs: Vec<(i64, i64, &str, Vec<&str>)> = Vec::new();
    for &(parent, root, url, host) in links {
        match runs.last_mut() {
            Some((p, r, h, urls)) if (*p, *r, *h) == (parent, root, host) => urls.push(url),
            _ => runs.push((parent, root, host, vec![url])),
        }
    }
    let roots: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (url, host, canonical_url, priority, selectors, max_attempts,
                           max_depth, scope, allow, deny, max_pages, parent_id, root_id,
                           depth, crawl_host, recrawl_every)
         WITH run AS MATERIALIZED (
                  SELECT key AS position, value ->> 0 AS parent_id, value ->> 1 AS root_id,
                         value ->> 2 AS host, value -> 3 AS urls
                    FROM json_each(?1)),
              link AS MATERIALIZED (
                  SELECT r.position, u.key AS n_in_run, r.parent_id, r.root_id, r.host,
                         u.value AS url
                    FROM run r JOIN json_each(r.urls) AS u
                   WHERE NOT EXISTS (SELECT 1 FROM jobs d
                                      WHERE d.root_id = r.root_id AND d.canonical_url = u.value))
         SELECT url, host, url, priority, selectors, max_attempts, max_depth, scope, allow,
                deny, max_pages, parent_id, root_id, depth, crawl_host, recrawl_every
           FROM (SELECT l.url, l.host, p.priority, p.selectors, p.max_attempts, p.max_depth,
                        p.scope, p.allow, p.deny, p.max_pages, p.id AS parent_id, l.root_id,
                        CAST(p.depth AS INTEGER) + 1 AS depth,
                        COALESCE(p.crawl_host, p.host) AS crawl_host, p.recrawl_every,
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
         RETURNING root_id",
    )
    .bind(serde_json::to_string(&runs).expect("values serialize"))
    .fetch_all(&mut **tx)
    .await
    .doing("queueing links")?;
    if roots.is_empty() {
        return Ok(());
    }
    let mut queued: HashMap<i64, i64> = HashMap::new();
    for root in roots {
        *queued.entry(root).or_default() += 1;
    }
    let queued: Vec<(i64, i64)> = queued.into_iter().collect();
    sqlx::query(
        "UPDATE jobs SET crawl_size = crawl_size + (q.value ->> 1)
           FROM json_each(?1) AS q
          WHERE jobs.id = q.value ->> 0",
    )
    .bind(serde_json::to_string(&queued).expect("values serialize"))
    .execute(&mut **tx)
    .await
    .doing("queueing links")?;
    Ok(())
}
