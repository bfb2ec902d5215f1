//! Shared test helpers: start crawlq the way `main` does (in-process or the built binary)
//! on a fresh database (a SQLite file in a temp dir, or a database of its own on the
//! throwaway PostgreSQL server), talk to it with plain SQL from a second connection
//! ([`UserSql`]), and wait on conditions with deadlines. [`on_both_backends!`] runs a test
//! once per backend.

pub mod postgres;
pub mod proxy;
pub mod server;
mod sql;
pub mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crawlq::daemon::{Daemon, RunOptions, RunReport};
use crawlq::runtime::{self, JoinHandle};
use crawlq::settings::{DatabaseLocation, Settings};
use crawlq::shutdown::{self, ShutdownTrigger};

pub use sql::{JobRow, ResultRow, UserSql};

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each `async fn NAME(backend: Backend)` of the module once per backend, as the tests
/// `MODULE::sqlite::NAME` and `MODULE::postgres::NAME` (once per module). Where the machine
/// has no PostgreSQL server and this is not CI, the PostgreSQL one says loudly that it was
/// skipped (see [`postgres::shared`]), so that the test bodies need not.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                crawlq::runtime::block_on(super::$name($crate::common::Backend::Sqlite));
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if $crate::common::postgres::shared().is_none() {
                    return;
                }
                crawlq::runtime::block_on(super::$name($crate::common::Backend::Postgres));
            })*
        }
    };
}
pub(crate) use on_both_backends;

/// A spawned process (a daemon) that is killed if its test panics before stopping it, so
/// that none outlives its test, eating CPU or holding the harness's output pipe open.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for a spawned process to exit; after `limit`, kills it and fails the test.
pub async fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not exit within {limit:?}");
        }
        runtime::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `count` daemons have registered in `workers` (see
/// [`UserSql::wait_for_workers`]).
pub async fn wait_for_workers(sql: &SqlitePool, count: i64) {
    UserSql::Sqlite(sql.clone()).wait_for_workers(count).await;
}

/// The built `crawlq` binary, run in `dir` (so the default `data/crawlq.db` lands there)
/// with fast polling and retries; the caller adds the subcommand.
pub fn crawlq(dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_crawlq"));
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("CRAWLQ__DAEMON__POLL_INTERVAL_MS", "20")
        .env("CRAWLQ__RETRY__BACKOFF_INITIAL_MS", "50")
        .stdin(std::process::Stdio::null());
    command
}

/// `crawlq run` in `dir` (see [`crawlq`]), stdout dropped, stderr as asked; killed if the
/// test ends first.
pub fn spawn_daemon(dir: &Path, stderr: std::process::Stdio) -> KillOnDrop {
    KillOnDrop(
        crawlq(dir)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("crawlq starts"),
    )
}

/// Sends SIGTERM, as `docker stop` and systemd do.
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Everything an exited child wrote to its piped stderr.
pub fn stderr_of(child: &mut std::process::Child) -> String {
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr is piped"), &mut log)
        .unwrap();
    log
}

/// Waits until the daemon has created the database at `path` and applied every migration.
pub async fn wait_for_database(path: &Path) {
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count() as i64;
    wait_until("the daemon to create and migrate the database", || async {
        if !path.exists() {
            return false;
        }
        let sql = user_connection(path).await;
        let migrated =
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&sql)
                .await
                .is_ok_and(|n| n == migrations);
        sql.close().await;
        migrated
    })
    .await;
}

/// A size for a test run from the environment (soak runs raise them), else `default`.
pub fn size_from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Test settings: fast polling and backoff, limits high enough to stay out of the way
/// unless a test lowers them, and robots.txt off (so request counts and spacing are the
/// pages' own) except in the tests about it. Logs go to stderr only when TEST_LOG is set.
pub fn test_settings(database: &Path) -> Settings {
    let mut settings = Settings::load_from_str(
        r#"
        [daemon]
        poll_interval_ms = 20
        stats_interval_secs = 0
        shutdown_grace_secs = 5
        [retry]
        backoff_initial_ms = 50
        backoff_max_secs = 1
        [limits]
        per_host_rps = 1000.0
        per_host_in_flight = 8
        [fetch]
        timeout_secs = 5
        connect_timeout_secs = 2
        [crawl]
        obey_robots = false
        "#,
    )
    .expect("test settings are valid");
    settings.database.location = DatabaseLocation::File(database.to_owned());
    if std::env::var_os("TEST_LOG").is_some() {
        settings.log.level = "crawlq=debug".to_owned();
        crawlq::telemetry::init(&settings.log).expect("valid log level");
    }
    settings
}

/// A fresh database for one test: a SQLite file in a temp dir, or a database of its own
/// on the shared throwaway PostgreSQL server (with a temp dir all the same, where a daemon
/// run as a process has its working directory). Removed when dropped (the PostgreSQL
/// database goes with the server, at the end of the test program).
pub struct TempDb {
    pub dir: tempfile::TempDir,
    /// The SQLite file (on PostgreSQL, nothing is written there).
    pub path: PathBuf,
    /// On PostgreSQL, the test's database.
    pub postgres_url: Option<String>,
}

impl TempDb {
    /// A SQLite file, not yet created.
    pub fn new() -> TempDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("crawlq.db");
        TempDb {
            dir,
            path,
            postgres_url: None,
        }
    }

    /// A fresh database on `backend`: on PostgreSQL an empty database on the shared server,
    /// for a test that [`on_both_backends!`] started (it skips where there is no server).
    pub async fn on(backend: Backend) -> TempDb {
        let mut db = TempDb::new();
        if backend == Backend::Postgres {
            let server = postgres::shared().expect("the test was skipped without a server");
            db.postgres_url = Some(server.database().await.url);
        }
        db
    }

    /// What `crawlq --database` takes for this database.
    pub fn arg(&self) -> String {
        match &self.postgres_url {
            Some(url) => url.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// [`test_settings`] on this database.
    pub fn settings(&self) -> Settings {
        let mut settings = test_settings(&self.path);
        if let Some(url) = &self.postgres_url {
            settings.database.location = DatabaseLocation::Postgres(url.clone());
        }
        settings
    }

    /// The user's connection, once a daemon has created the database (the SQLite file, or
    /// the tables on PostgreSQL).
    pub async fn user(&self) -> UserSql {
        match &self.postgres_url {
            Some(url) => UserSql::postgres(url).await,
            None => UserSql::Sqlite(user_connection(&self.path).await),
        }
    }

    /// Waits until a daemon started as a process has created and migrated the database and
    /// registered in `workers`, and returns the user's connection.
    pub async fn wait_for_daemon(&self) -> UserSql {
        if self.postgres_url.is_none() {
            wait_for_database(&self.path).await;
        }
        let sql = self.user().await;
        sql.wait_for_workers(1).await;
        sql
    }
}

/// A second connection to the daemon's database, as a user's SQLite client would be.
pub async fn user_connection(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::from_str("sqlite:")
        .unwrap()
        .filename(path)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open the test's own connection")
}

/// The daemon running in-process on a task, with a user connection beside it.
pub struct RunningDaemon {
    pub db: TempDb,
    pub sql: UserSql,
    trigger: ShutdownTrigger,
    handle: Option<JoinHandle<Result<RunReport, crawlq::daemon::DaemonError>>>,
}

impl RunningDaemon {
    /// Starts a daemon on a fresh SQLite file; `adjust` changes settings first.
    pub async fn start(adjust: impl FnOnce(&mut Settings)) -> RunningDaemon {
        RunningDaemon::start_on(TempDb::new(), adjust, |_| async {}).await
    }

    /// Starts a daemon on a fresh database on `backend`; `adjust` changes settings first.
    pub async fn on(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> RunningDaemon {
        RunningDaemon::start_on(TempDb::on(backend).await, adjust, |_| async {}).await
    }

    /// Like `start`, but on `db`, and `before` runs SQL on the migrated database before the
    /// daemon's loop begins (to set up rows the daemon must find at start-up).
    pub async fn start_on<F, Fut>(
        db: TempDb,
        adjust: impl FnOnce(&mut Settings),
        before: F,
    ) -> RunningDaemon
    where
        F: FnOnce(UserSql) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut settings = db.settings();
        adjust(&mut settings);
        let daemon = Daemon::build(settings).await.expect("daemon builds");
        let sql = db.user().await;
        before(sql.clone()).await;
        let (trigger, shutdown) = shutdown::channel();
        let handle = runtime::spawn(daemon.run_until_stopped(shutdown, RunOptions::default()));
        RunningDaemon {
            db,
            sql,
            trigger,
            handle: Some(handle),
        }
    }

    pub async fn insert(&self, url: &str) -> i64 {
        self.sql.insert(url).await
    }

    /// Stops the daemon as SIGTERM would and returns its report.
    pub async fn stop(mut self) -> RunReport {
        self.trigger.fire();
        let handle = self.handle.take().expect("not stopped twice");
        runtime::timeout(DEADLINE, handle)
            .await
            .expect("daemon stops within the deadline")
            .expect("daemon ran without error")
    }

    /// Stops the daemon and hands back its database, to start another daemon on it.
    pub async fn stop_keeping_db(mut self) -> TempDb {
        let db = std::mem::replace(&mut self.db, TempDb::new());
        self.stop().await;
        db
    }

    pub async fn job(&self, id: i64) -> JobRow {
        self.sql.job(id).await
    }

    pub async fn result(&self, id: i64) -> Option<ResultRow> {
        self.sql.result(id).await
    }

    /// Waits until job `id` reaches a final status (done, failed, cancelled, skipped).
    pub async fn wait_finished(&self, id: i64) -> JobRow {
        wait_until(&format!("job {id} to finish"), || async move {
            let row = self.sql.job(id).await;
            !matches!(row.status.as_str(), "queued" | "running")
        })
        .await;
        self.job(id).await
    }

    /// Waits until no job of crawl `root` is queued or running.
    pub async fn wait_crawl_settled(&self, root: i64) {
        wait_until("the crawl to settle", || async {
            let open = self
                .sql
                .query(
                    "SELECT COUNT(*) FROM jobs
                      WHERE COALESCE(root_id, id) = $1 AND status IN ('queued', 'running')",
                )
                .bind(root)
                .int()
                .await;
            open == 0
        })
        .await;
    }

    /// Waits for each job in `ids` to finish and asserts it ended `done`.
    pub async fn wait_all_done(&self, ids: &[i64]) {
        for &id in ids {
            let job = self.wait_finished(id).await;
            assert_eq!(job.status, "done", "job {id}: {:?}", job.error);
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        // A failed assertion must not leave the daemon running into the next test.
        self.trigger.fire();
    }
}

// Shorthands for the SQLite-only tests, which hold a plain pool.

pub async fn insert_job(sql: &SqlitePool, url: &str) -> i64 {
    UserSql::Sqlite(sql.clone()).insert(url).await
}

/// Runs one statement from the user's side.
pub async fn execute(sql: &SqlitePool, statement: &'static str) {
    UserSql::Sqlite(sql.clone()).execute(statement).await;
}

pub async fn job_row(sql: &SqlitePool, id: i64) -> JobRow {
    UserSql::Sqlite(sql.clone()).job(id).await
}

/// Holds the database's write lock for `how_long`, as a user's long transaction would.
pub async fn hold_write_lock(path: &Path, how_long: Duration) {
    let mut locker = user_connection(path)
        .await
        .acquire()
        .await
        .expect("a connection")
        .detach();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .expect("take the write lock");
    runtime::sleep(how_long).await;
    sqlx::query("COMMIT")
        .execute(&mut locker)
        .await
        .expect("release the write lock");
}

/// Polls `check` until it holds; fails the test with `what` once `DEADLINE` passes.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        runtime::sleep(Duration::from_millis(20)).await;
    }
}

/// Gaps between consecutive arrival times.
pub fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Asserts that requests arriving at `times` kept to one per `period`. The limiter's
/// schedule is exact, but arrival times also carry connection set-up and scheduling delay
/// (a loaded machine adds tens of ms to one request and not the next), so each gap may
/// fall short by that jitter while the series as a whole must not run ahead of the quota.
pub fn assert_spaced(times: &[Instant], period: Duration) -> Vec<Duration> {
    let jitter = Duration::from_millis(40);
    let gaps = gaps(times);
    let smallest = *gaps.iter().min().expect("at least two requests");
    assert!(
        smallest + jitter >= period,
        "gap {smallest:?} < {period:?}: {gaps:?}"
    );
    let span = *times.last().unwrap() - times[0];
    let ideal = period * (times.len() as u32 - 1);
    assert!(
        span + Duration::from_millis(10) >= ideal,
        "{span:?} < {ideal:?}: {gaps:?}"
    );
    gaps
}
