//! Connecting to the server, migrating, the daemon's advisory lock, and LISTEN for new
//! jobs.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::PostgresStore;
use crate::runtime::{self, AsyncMutex};
use crate::settings::DatabaseSettings;
use crate::store::error::Doing;
use crate::store::{StoreError, WorkerIdentity};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Pooled connections: the scheduler's one at a time, the crawl's lookups (robots.txt, a
/// redirect target's job) from many tasks, and room for a slow one.
const CONNECTIONS: u32 = 6;
/// How long an operation waits for a pooled connection (or for the server, when it is
/// down) before it fails and the daemon tries again.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The channel the `jobs_inserted` trigger notifies (see migrations/postgres).
pub(super) const NEW_JOBS_CHANNEL: &str = "crawlq_jobs";
/// How long a starting daemon asks for the advisory lock before it says another daemon
/// holds it.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);
/// The key of the advisory lock a daemon holds (`hashtext('crawlq daemon')` would do as
/// well; a constant reads better in `pg_locks`).
const DAEMON_LOCK_KEY: i64 = 0x6372_6177_6c71; // "crawlq"

impl PostgresStore {
    /// Connects and applies the migrations (sqlx serialises them between daemons with an
    /// advisory lock of its own).
    pub async fn open(url: &str, settings: &DatabaseSettings) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(url, settings, true).await
    }

    /// Connects to a database that must hold crawlq's tables already.
    pub async fn open_existing(
        url: &str,
        settings: &DatabaseSettings,
    ) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(url, settings, false).await
    }

    /// Takes the daemon's advisory lock (one daemon per database until the fleet shares
    /// the per-host limits), then connects and migrates.
    pub async fn open_for_daemon(
        url: &str,
        settings: &DatabaseSettings,
        me: &WorkerIdentity,
    ) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::connect(url, settings, true).await?;
        store.lock.take(&store, me).await?;
        // LISTEN before the daemon's first look at the queue, so that no INSERT falls
        // between that look and the first wait.
        store.listener.connect().await;
        Ok(store)
    }

    async fn connect(
        url: &str,
        settings: &DatabaseSettings,
        create: bool,
    ) -> Result<PostgresStore, StoreError> {
        let name = settings.name();
        let open_error = |source| StoreError::Open {
            path: name.clone(),
            source,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(open_error)?
            .application_name("crawlq")
            // The server's durability settings stand (synchronous_commit included): a
            // commit crawlq was told of is one a crash keeps. See the README for what a
            // DBA may trade for speed.
            // A row lock held by a user's open transaction fails the statement after
            // database.busy_timeout_ms, as SQLite's busy timeout does, and the daemon tries
            // again: waiting for ever would stall the scheduler, heartbeats included.
            .options([(
                "lock_timeout",
                format!("{}ms", settings.busy_timeout.as_millis()),
            )])
            // Statements are logged by crawlq's own spans; sqlx's slow-statement warning
            // would print the SQL of every claim that waited on a lock.
            .disable_statement_logging();
        // One connection first, alone: a refused connection or a wrong password is then
        // reported as such, where the pool would only say that it timed out.
        PgConnection::connect_with(&options)
            .await
            .map_err(open_error)?
            .close()
            .await
            .map_err(open_error)?;
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // No ping before every operation (a round trip each): a connection the server
            // dropped fails its next statement, and the daemon retries that operation.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let has_tables: bool = sqlx::query_scalar("SELECT to_regclass('jobs') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .map_err(open_error)?;
        if !has_tables && !create {
            pool.close().await;
            return Err(StoreError::NotSetUp { database: name });
        }
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: name.clone(),
                source,
            })?;
        Ok(PostgresStore {
            listener: Arc::new(NewJobsListener::new(pool.clone())),
            lock: Arc::new(AdvisoryLock::default()),
            pool,
            name,
            created: !has_tables,
        })
    }

    pub fn created(&self) -> bool {
        self.created
    }

    /// Nothing to check: a server's database cannot be swapped under an open connection
    /// the way a file can.
    pub fn check_same_database(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Never called on PostgreSQL (see [`PostgresStore::check_same_database`]); closes.
    pub async fn abandon_gone_database(&self) {
        self.close().await;
    }

    /// Closes the pool and the listener, then lets go of the advisory lock.
    pub async fn close(&self) {
        self.listener.close().await;
        self.lock.release().await;
        self.pool.close().await;
    }

    /// Whether a write transaction can be started (the server is up, the database not in
    /// recovery or read-only). Nothing is written.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        const DOING: &str = "checking the database is writable";
        let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&self.pool)
            .await
            .doing(DOING)?;
        if read_only == "on" {
            return Err(StoreError::ReadOnly {
                database: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Returns when a new job may be waiting: a NOTIFY on `crawlq_jobs` arrived. While the
    /// listener cannot connect, it returns every few seconds so the caller looks anyway
    /// (polling is the fallback, and stays on).
    pub async fn wait_for_new_jobs(&self) {
        self.listener.wait().await
    }
}

/// `LISTEN crawlq_jobs` on a connection it keeps (taken from the pool: one of the pool's
/// connections is the listener's while a daemon runs), opened before the daemon's first
/// look at the queue and again after it was lost. Notifications sent while it was lost are
/// gone: the daemon's polling finds those jobs.
#[derive(Debug)]
pub(super) struct NewJobsListener {
    pool: sqlx::postgres::PgPool,
    listener: AsyncMutex<Option<PgListener>>,
}

/// How long a listener that cannot connect waits before it lets the caller look anyway.
const LISTENER_RETRY: Duration = Duration::from_secs(2);

impl NewJobsListener {
    fn new(pool: sqlx::postgres::PgPool) -> NewJobsListener {
        NewJobsListener {
            pool,
            listener: AsyncMutex::new(None),
        }
    }

    /// Opens the listening connection and LISTENs, unless that is done already.
    async fn connect(&self) {
        let mut held = self.listener.lock().await;
        if held.is_some() {
            return;
        }
        match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(NEW_JOBS_CHANNEL).await {
                Ok(()) => *held = Some(listener),
                Err(e) => tracing::debug!(error = %e, "LISTEN crawlq_jobs failed; polling"),
            },
            Err(e) => {
                tracing::debug!(error = %e, "could not open the LISTEN connection; polling")
            }
        }
    }

    async fn wait(&self) {
        self.connect().await;
        let mut held = self.listener.lock().await;
        let Some(listener) = held.as_mut() else {
            drop(held);
            runtime::sleep(LISTENER_RETRY).await;
            return;
        };
        // A dropped wait (another event came first) loses no notification: reading the
        // socket is cancel-safe, and one not read yet is read by the next call.
        match listener.recv().await {
            // Many INSERTs in a row are one reason to look: read what came with it.
            Ok(_) => while listener.next_buffered().is_some() {},
            Err(e) => {
                tracing::debug!(error = %e, "the LISTEN connection was lost; polling until it is back");
                *held = None;
                drop(held);
                runtime::sleep(LISTENER_RETRY).await;
            }
        }
    }

    async fn close(&self) {
        if let Some(mut listener) = self.listener.lock().await.take() {
            let _ = listener.unlisten_all().await;
        }
    }
}

/// A session-level advisory lock held by a daemon on a connection of its own, so that a
/// second daemon on the same database refuses to start (each would apply the per-host
/// limits, doubling the load on every host). The server lets go of it when the connection
/// ends, however the daemon ends.
#[derive(Debug, Default)]
pub(super) struct AdvisoryLock(AsyncMutex<Option<PgConnection>>);

impl AdvisoryLock {
    async fn take(&self, store: &PostgresStore, me: &WorkerIdentity) -> Result<(), StoreError> {
        const DOING: &str = "taking the daemon's advisory lock";
        let mut connection = store.pool.acquire().await.doing(DOING)?.detach();
        // A daemon killed a moment ago still holds the lock until the server has noticed
        // its connection is gone: ask again for a few seconds before refusing.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let taken = loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(DAEMON_LOCK_KEY)
                .fetch_one(&mut connection)
                .await
                .doing(DOING)?;
            if taken || std::time::Instant::now() >= deadline {
                break taken;
            }
            runtime::sleep(Duration::from_millis(200)).await;
        };
        if !taken {
            let _ = connection.close().await;
            let holder: Option<(String, i64, String)> = sqlx::query_as(
                "SELECT id, pid, hostname FROM worker_status
                  WHERE state = 'running' AND id <> $1
                  ORDER BY heartbeat_at DESC LIMIT 1",
            )
            .bind(&me.id)
            .fetch_optional(&store.pool)
            .await
            .doing(DOING)?;
            return Err(StoreError::InUse {
                database: store.name.clone(),
                lock: format!("PostgreSQL advisory lock {DAEMON_LOCK_KEY}"),
                holder: holder
                    .map(|(id, pid, host)| format!("{id}, pid {pid} on {host}"))
                    .unwrap_or_else(|| "a daemon that has not registered yet".to_owned()),
            });
        }
        *self.0.lock().await = Some(connection);
        Ok(())
    }

    /// At each heartbeat: if the lock's connection was lost (a server restart, a dropped
    /// connection), the server let go of the lock; take it again. If another daemon took
    /// it meanwhile, say so loudly at every heartbeat: two daemons now apply the limits.
    pub(super) async fn keep(&self, store: &PostgresStore) {
        let mut held = self.0.lock().await;
        let Some(connection) = held.as_mut() else {
            return; // not a daemon's store
        };
        if connection.ping().await.is_ok() {
            return;
        }
        let Ok(pooled) = store.pool.acquire().await else {
            return; // the server is still away: next heartbeat
        };
        let mut fresh = pooled.detach();
        match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(DAEMON_LOCK_KEY)
            .fetch_one(&mut fresh)
            .await
        {
            Ok(true) => {
                tracing::info!(
                    "the daemon's advisory lock was lost with its connection; taken again"
                );
                *held = Some(fresh);
            }
            Ok(false) => tracing::error!(
                database = %store.name,
                "another daemon took this database's advisory lock while this one's connection \
                 was down: two daemons now apply the per-host limits; stop one of them"
            ),
            Err(e) => tracing::debug!(error = %e, "could not take the advisory lock again yet"),
        }
    }

    async fn release(&self) {
        if let Some(connection) = self.0.lock().await.take() {
            // Closing the session lets go of the lock.
            let _ = connection.close().await;
        }
    }
}
