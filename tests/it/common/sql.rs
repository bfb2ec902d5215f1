//! The user's side of the database, on either backend: what a test inserts and reads with
//! plain SQL, as a user's own client would, beside a daemon.
//!
//! Tests write one statement for both backends: placeholders as `$1` (sqlx's SQLite accepts
//! them as it does `?1`), timestamps as ISO text literals (`'2000-01-01T00:00:00.000Z'`,
//! which PostgreSQL reads as a `timestamptz`), and no booleans or timestamps in what they
//! read back (a count or `CAST(x AS TEXT)` reads the same on both). What cannot be written
//! the same way (the rows below, JSON functions, time arithmetic) is written here, per
//! backend, or in the one test that needs it, under a `match` on [`UserSql::backend`].

use sqlx::postgres::{PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{Decode, FromRow, Row, Type};

use super::{wait_until, Backend};

/// A connection to the test's database, as a user's client would have.
#[derive(Clone, Debug)]
pub enum UserSql {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A value read back from either backend.
pub trait Value:
    for<'r> Decode<'r, Sqlite>
    + Type<Sqlite>
    + for<'r> Decode<'r, Postgres>
    + Type<Postgres>
    + Send
    + Unpin
{
}

impl<T> Value for T where
    T: for<'r> Decode<'r, Sqlite>
        + Type<Sqlite>
        + for<'r> Decode<'r, Postgres>
        + Type<Postgres>
        + Send
        + Unpin
{
}

/// A row (a tuple of values) read back from either backend.
pub trait Rows: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

impl<T> Rows for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

/// A value bound to a `$N` placeholder.
#[derive(Clone, Debug)]
pub enum Bind {
    Int(i64),
    Text(String),
}

impl From<i64> for Bind {
    fn from(value: i64) -> Bind {
        Bind::Int(value)
    }
}

impl From<&str> for Bind {
    fn from(value: &str) -> Bind {
        Bind::Text(value.to_owned())
    }
}

impl From<String> for Bind {
    fn from(value: String) -> Bind {
        Bind::Text(value)
    }
}

impl From<&String> for Bind {
    fn from(value: &String) -> Bind {
        Bind::Text(value.clone())
    }
}

/// One statement and its bound values, run by one of the methods that say what it returns.
#[must_use = "a query runs only when one of its fetch methods is awaited"]
pub struct Query<'a> {
    sql: &'a UserSql,
    text: String,
    binds: Vec<Bind>,
}

/// `$make` (a `sqlx::query` or `query_as`) with each of `$binds` bound in turn.
macro_rules! bound {
    ($make:expr, $binds:expr) => {{
        let mut query = $make;
        for bind in $binds {
            query = match bind {
                Bind::Int(value) => query.bind(*value),
                Bind::Text(value) => query.bind(value.clone()),
            };
        }
        query
    }};
}

impl Query<'_> {
    pub fn bind(mut self, value: impl Into<Bind>) -> Self {
        self.binds.push(value.into());
        self
    }

    /// Runs the statement; returns the rows it changed.
    pub async fn execute(self) -> u64 {
        self.try_execute().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the statement, or returns the error (with the statement) for a test that
    /// expects one.
    pub async fn try_execute(self) -> Result<u64, String> {
        let text = sqlx::AssertSqlSafe(self.text.clone());
        let done = match self.sql {
            UserSql::Sqlite(pool) => bound!(sqlx::query(text), &self.binds)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            UserSql::Postgres(pool) => bound!(sqlx::query(text), &self.binds)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        };
        done.map_err(|e| format!("{}: {e}", self.text))
    }

    /// Every row.
    pub async fn all<R: Rows>(self) -> Vec<R> {
        self.try_all().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every row, or the error (with the statement) for a test that expects one.
    pub async fn try_all<R: Rows>(self) -> Result<Vec<R>, String> {
        let text = sqlx::AssertSqlSafe(self.text.clone());
        let rows = match self.sql {
            UserSql::Sqlite(pool) => {
                bound!(sqlx::query_as::<_, R>(text), &self.binds)
                    .fetch_all(pool)
                    .await
            }
            UserSql::Postgres(pool) => {
                bound!(sqlx::query_as::<_, R>(text), &self.binds)
                    .fetch_all(pool)
                    .await
            }
        };
        rows.map_err(|e| format!("{}: {e}", self.text))
    }

    /// The one row there must be.
    pub async fn one<R: Rows>(self) -> R {
        let text = self.text.clone();
        let mut rows = self.all::<R>().await;
        assert_eq!(rows.len(), 1, "{text}: one row");
        rows.pop().unwrap()
    }

    /// The row there may be.
    pub async fn optional<R: Rows>(self) -> Option<R> {
        let text = self.text.clone();
        let mut rows = self.all::<R>().await;
        assert!(rows.len() <= 1, "{text}: at most one row");
        rows.pop()
    }

    /// The first column of the one row there must be.
    pub async fn scalar<T: Value>(self) -> T {
        self.one::<(T,)>().await.0
    }

    /// One integer (a count, an id).
    pub async fn int(self) -> i64 {
        self.scalar().await
    }

    /// One text value, or None.
    pub async fn text(self) -> Option<String> {
        self.scalar().await
    }
}

impl UserSql {
    /// A connection to `url`, a database on the test PostgreSQL server.
    pub async fn postgres(url: &str) -> UserSql {
        UserSql::Postgres(super::postgres::connect(url).await)
    }

    pub fn backend(&self) -> Backend {
        match self {
            UserSql::Sqlite(_) => Backend::Sqlite,
            UserSql::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite pool, for a test that is about SQLite itself.
    pub fn sqlite(&self) -> &SqlitePool {
        match self {
            UserSql::Sqlite(pool) => pool,
            UserSql::Postgres(_) => panic!("a SQLite-only test ran on PostgreSQL"),
        }
    }

    /// `text` with `$N` placeholders, to bind and run.
    pub fn query(&self, text: impl Into<String>) -> Query<'_> {
        Query {
            sql: self,
            text: text.into(),
            binds: Vec::new(),
        }
    }

    pub async fn execute(&self, text: &str) {
        self.query(text).execute().await;
    }

    /// One integer (a count, an id).
    pub async fn int(&self, text: &str) -> i64 {
        self.query(text).int().await
    }

    /// One text value, or None.
    pub async fn text(&self, text: &str) -> Option<String> {
        self.query(text).text().await
    }

    /// Rows of (id, status, error), by id.
    pub async fn jobs(&self) -> Vec<(i64, String, Option<String>)> {
        self.query("SELECT id, status, error FROM jobs ORDER BY id")
            .all()
            .await
    }

    /// Inserts a job with only its URL (the one-column INSERT the README shows).
    pub async fn insert(&self, url: &str) -> i64 {
        self.query("INSERT INTO jobs (url) VALUES ($1) RETURNING id")
            .bind(url)
            .int()
            .await
    }

    pub async fn status_of(&self, id: i64) -> String {
        self.job(id).await.status
    }

    /// An SQL expression for the time `seconds` from now (negative: ago), comparable with
    /// the timestamp columns.
    pub fn seconds_from_now(&self, seconds: i64) -> String {
        match self {
            UserSql::Sqlite(_) => {
                format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{seconds:+} seconds')")
            }
            UserSql::Postgres(_) => format!("(now() + interval '{seconds} seconds')"),
        }
    }

    /// A FROM item holding the elements of the JSON array `array` (a column) as text, in
    /// the column `ALIAS.value`.
    pub fn json_elements(&self, array: &str, alias: &str) -> String {
        match self {
            UserSql::Sqlite(_) => format!("json_each({array}) AS {alias}"),
            UserSql::Postgres(_) => format!("jsonb_array_elements_text({array}) AS {alias}(value)"),
        }
    }

    /// Waits until `count` daemons have registered in `workers` (the daemon is past its
    /// start-up: lock taken, database migrated, row written).
    pub async fn wait_for_workers(&self, count: i64) {
        wait_until("the daemon's workers row", || async {
            self.query("SELECT COUNT(*) FROM workers")
                .try_all::<(i64,)>()
                .await
                .is_ok_and(|rows| rows == [(count,)])
        })
        .await;
    }

    pub async fn job(&self, id: i64) -> JobRow {
        // Times as text on both backends (the tests only ask whether there is one).
        const SQL: &str = "SELECT status, attempts, error, CAST(finished_at AS TEXT),
                                  lease_owner FROM jobs WHERE id = $1";
        let (status, attempts, error, finished_at, lease_owner) =
            self.query(SQL).bind(id).one().await;
        JobRow {
            status,
            attempts,
            error,
            finished_at,
            lease_owner,
        }
    }

    /// The first result stored for job `id`, if any.
    pub async fn result(&self, job_id: i64) -> Option<ResultRow> {
        // JSON as text on both backends (jsonb on PostgreSQL).
        let sql = "SELECT url, final_url, http_status, content_type, title, description,
                          CAST(links AS TEXT), CAST(data AS TEXT), bytes
                     FROM results WHERE job_id = $1 ORDER BY id LIMIT 1";
        let row = match self {
            UserSql::Sqlite(pool) => sqlx::query(sql)
                .bind(job_id)
                .fetch_optional(pool)
                .await
                .expect("query results")
                .map(|row| ResultRow::from_row(&row)),
            UserSql::Postgres(pool) => sqlx::query(sql)
                .bind(job_id)
                .fetch_optional(pool)
                .await
                .expect("query results")
                .map(|row| ResultRow::from_row(&row)),
        };
        row
    }

    pub async fn close(&self) {
        match self {
            UserSql::Sqlite(pool) => pool.close().await,
            UserSql::Postgres(pool) => pool.close().await,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub status: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub finished_at: Option<String>,
    pub lease_owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ResultRow {
    pub url: String,
    pub final_url: String,
    pub http_status: i64,
    pub content_type: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub links: serde_json::Value,
    pub data: serde_json::Value,
    pub bytes: i64,
}

impl ResultRow {
    fn from_row<R>(row: &R) -> ResultRow
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
        Option<String>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
        i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        let json = |column: usize| -> serde_json::Value {
            serde_json::from_str(&row.get::<String, _>(column)).expect("JSON column holds JSON")
        };
        ResultRow {
            url: row.get(0),
            final_url: row.get(1),
            http_status: row.get(2),
            content_type: row.get(3),
            title: row.get(4),
            description: row.get(5),
            links: json(6),
            data: json(7),
            bytes: row.get(8),
        }
    }
}
