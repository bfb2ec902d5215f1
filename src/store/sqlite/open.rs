//! The database file: opening (creating it and its directory), migrating, the connections,
//! the daemon's lock file, and noticing the file being deleted or replaced under us.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::SqliteStore;
use crate::runtime::{AsyncMutex, AsyncMutexGuard};
use crate::settings::DatabaseSettings;
use crate::store::error::Doing;
use crate::store::{StoreError, WorkerIdentity};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connections for the crawl's lookups, and their page cache each (`-N` is N KiB).
const READER_CONNECTIONS: u32 = 2;
const READER_CACHE: &str = "-1024";
/// The writer's page cache: big enough for the indexes a crawl of 200 000 pages writes
/// to at random (its URLs, its validators).
const WRITER_CACHE: &str = "-8192";

/// An operation that holds the writer connection this long is worth telling the user
/// about: it was most likely waiting for another connection's write lock. sqlx's own
/// warning is off (see [`SqliteStore::open`]): it printed the SQL over many lines.
const SLOW_OPERATION: Duration = Duration::from_secs(1);
/// Said once, then again only after this long, so a lock held for minutes is one line.
const SLOW_NOTICE_EVERY: Duration = Duration::from_secs(3600);

/// The scheduler's connection (see [`SqliteStore`]), opened again after it was given up.
#[derive(Debug)]
pub(super) struct Writer {
    options: SqliteConnectOptions,
    connection: AsyncMutex<Option<SqliteConnection>>,
    /// When a slow operation was last reported.
    slow_noticed: std::sync::Mutex<Option<Instant>>,
}

impl Writer {
    fn took(&self, elapsed: Duration) {
        if elapsed < SLOW_OPERATION {
            return;
        }
        let mut noticed = self.slow_noticed.lock().unwrap_or_else(|e| e.into_inner());
        if noticed.is_some_and(|at| at.elapsed() < SLOW_NOTICE_EVERY) {
            return;
        }
        *noticed = Some(Instant::now());
        tracing::warn!(
            took_secs = elapsed.as_secs_f64(),
            "the database took {:.1} s to answer: another connection probably held its write \
             lock (a transaction left open in a client?), or its disk is slow; crawlq waits up \
             to database.busy_timeout_ms, then retries (said at most once an hour)",
            elapsed.as_secs_f64()
        );
    }
}

/// The writer connection, held for one operation.
pub(super) struct WriterGuard<'a> {
    connection: AsyncMutexGuard<'a, Option<SqliteConnection>>,
    writer: &'a Writer,
    since: Instant,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.connection
            .as_ref()
            .expect("a WriterGuard always holds a connection")
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.connection
            .as_mut()
            .expect("a WriterGuard always holds a connection")
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.writer.took(self.since.elapsed());
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
pub(super) struct DatabaseFile {
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

impl SqliteStore {
    /// Opens (creating it and its directory if needed) and migrates the database.
    pub async fn open(path: &Path, settings: &DatabaseSettings) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_locked(path, settings, LockFile::default()).await
    }

    /// Opens a database file that must exist already.
    pub async fn open_existing(
        path: &Path,
        settings: &DatabaseSettings,
    ) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                database: path.display().to_string(),
            });
        }
        SqliteStore::open(path, settings).await
    }

    /// Takes the daemon's lock file (see [`lock`]), then opens the database: the lock comes
    /// before the database is touched, migrations included.
    pub async fn open_for_daemon(
        path: &Path,
        settings: &DatabaseSettings,
        me: &WorkerIdentity,
    ) -> Result<SqliteStore, StoreError> {
        let lock = lock(path, me)?;
        SqliteStore::open_locked(path, settings, lock).await
    }

    async fn open_locked(
        path: &Path,
        settings: &DatabaseSettings,
        lock: LockFile,
    ) -> Result<SqliteStore, StoreError> {
        let created = !path.exists();
        let name = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: name.clone(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("static options parse")
            .filename(path)
            // WAL lets users read while we write, and their inserts wait on the busy
            // timeout instead of failing. NORMAL sync is durable against a crash of this
            // process (only an OS crash can lose the last commits).
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true)
            // sqlx's slow-statement warning printed the statement's SQL over many lines,
            // each time; the writer says it once, in words (see [`Writer::took`]).
            .disable_statement_logging();
        // The file is created here, once. The pool's connections never create it, so a
        // database deleted under the daemon is an error rather than a new, empty file.
        let open_error = |source| StoreError::Open {
            path: name.clone(),
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
                path: name.clone(),
                source,
            })?;
        let robots_origins = if lock.is_held() {
            Some(Arc::new(SqliteStore::robots_origins(&pool).await?))
        } else {
            None
        };
        let writer_options = options.pragma("cache_size", WRITER_CACHE);
        let writer = Writer {
            connection: AsyncMutex::new(Some(writer_options.connect().await.map_err(open_error)?)),
            options: writer_options,
            slow_noticed: std::sync::Mutex::new(None),
        };
        first.close().await.map_err(open_error)?;
        let file = DatabaseFile {
            path: path.to_owned(),
            identity: file_identity(path).map_err(|source| StoreError::Inspect {
                path: name.clone(),
                source,
            })?,
        };
        Ok(SqliteStore {
            pool,
            writer: Arc::new(writer),
            file: Arc::new(file),
            lock: Arc::new(lock),
            created,
            robots_origins,
        })
    }

    pub fn created(&self) -> bool {
        self.created
    }

    /// The writer connection, for one operation. SQLite rolls a transaction back by itself
    /// when a write fails for want of room, and sqlx may then go on counting it as open
    /// (see [`pool_options`]); such a connection is closed and a new one opened.
    pub(super) async fn writer(&self) -> Result<WriterGuard<'_>, sqlx::Error> {
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
        Ok(WriterGuard {
            connection: held,
            writer: &self.writer,
            since: Instant::now(),
        })
    }

    /// Fails if the database file was deleted or replaced (e.g. by a restore) since it was
    /// opened. SQLite would carry on writing to the open, now invisible, file.
    pub fn check_same_database(&self) -> Result<(), StoreError> {
        let gone = |what| StoreError::Gone {
            database: self.file.path.display().to_string(),
            what,
        };
        match file_identity(&self.file.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone("was deleted")),
            Ok(now) if now != self.file.identity => Err(gone("was replaced by another file")),
            _ => Ok(()),
        }
    }

    /// After [`SqliteStore::check_same_database`] failed: moves what the write-ahead log holds into
    /// the file we have open (deleted or replaced), empties the log, and closes. The log is
    /// shared by path, so left as it is, the next program to open a restored file would
    /// replay our writes over it.
    pub async fn abandon_gone_database(&self) {
        const DOING: &str = "emptying the write-ahead log of a deleted or replaced database";
        let emptied = async {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut *self.writer().await.doing(DOING)?)
                .await
                .doing(DOING)
        };
        if let Err(e) = emptied.await {
            tracing::error!(
                error = %e,
                "could not empty the write-ahead log; delete {0}-wal and {0}-shm before starting again",
                self.file.path.display()
            );
        }
        self.close().await;
    }

    /// Closes the connections, then lets go of the daemon's lock file (if this store holds
    /// it), so that a daemon started next finds the database closed.
    pub async fn close(&self) {
        if let Some(connection) = self.writer.connection.lock().await.take() {
            let _ = connection.close().await;
        }
        self.pool.close().await;
        self.lock.release();
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
}

/// `<database>.lock`, held by a daemon from before it opens the database until it closes
/// it. Empty for the other commands, which may run beside a daemon.
#[derive(Debug, Default)]
pub(super) struct LockFile(std::sync::Mutex<Option<std::fs::File>>);

impl LockFile {
    /// Whether this store is a daemon's (it holds the lock).
    fn is_held(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn release(&self) {
        // Closing the file lets go of the lock.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Takes `<database>.lock` for the life of the store, or says which daemon holds it. The
/// operating system lets go of it when the process ends, however it ends (kill -9
/// included), and the lock is seen from every container sharing the file on this machine.
/// That covers every daemon that can share the database: SQLite's WAL mode needs all its
/// users on one machine (no network file systems).
fn lock(database: &Path, me: &WorkerIdentity) -> Result<LockFile, StoreError> {
    use std::io::{Read, Seek, Write};

    let path = PathBuf::from(format!("{}.lock", database.display()));
    let io_error = |e: std::io::Error| StoreError::Lock {
        lock: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message a second daemon prints.
            file.set_len(0).map_err(io_error)?;
            file.rewind().map_err(io_error)?;
            writeln!(file, "pid {} on {}", me.pid, me.hostname).map_err(io_error)?;
            Ok(LockFile(std::sync::Mutex::new(Some(file))))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(StoreError::InUse {
                database: database.display().to_string(),
                lock: path.display().to_string(),
                holder: holder.trim().to_owned(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(e)),
    }
}
