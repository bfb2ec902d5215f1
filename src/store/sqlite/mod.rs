//! The SQLite store: the embedded default, one daemon on one file that users also open with
//! their own SQLite clients. Every statement crawlq runs on SQLite is in this folder:
//! - `open.rs`      — the file, its connections, migrations, the daemon's lock file, and
//!   noticing the file being deleted or replaced under us.
//! - `admission.rs` — new rows checked and given their host (or failed with a reason).
//! - `claim.rs`     — which hosts have due jobs, claiming (taking leases), renewing,
//!   expiring and releasing them.
//! - `finish.rs`    — a batch of finished attempts, results, validators and links, stored.
//! - `lookups.rs`   — what the crawl asks while it runs: robots.txt, pauses, a URL in a
//!   crawl, a stored body.
//! - `robots_origins.rs` — the origins the `robots` table may hold (no SQL: a filter that
//!   spares the look-up of an origin it cannot hold).
//! - `workers.rs`   — one row per daemon process: registration and heartbeat.
//! - `reports.rs`   — what `crawlq status` and `--exit-when-idle` read.
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

mod admission;
mod claim;
mod finish;
mod lookups;
mod open;
mod reports;
mod robots_origins;
mod workers;

use std::sync::Arc;

use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Row;

use open::{DatabaseFile, LockFile, Writer};

#[derive(Clone, Debug)]
pub struct SqliteStore {
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
    /// `<database>.lock`, held while a daemon runs on this store (see [`open::lock`]).
    lock: Arc<LockFile>,
    /// Whether opening created the database file.
    created: bool,
    /// The origins the `robots` table may hold, for a daemon's store (which holds the lock
    /// file, so nothing else adds rows; see [`robots_origins`]). None for the commands.
    robots_origins: Option<Arc<robots_origins::RobotsOrigins>>,
}

/// A user-written text column read without trusting it to be UTF-8 (SQLite does not check).
fn lossy_text(row: &SqliteRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
