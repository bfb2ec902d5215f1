//! The PostgreSQL store: the same tables and meanings as on SQLite, for users who run
//! PostgreSQL already or outgrow one machine. Every statement crawlq runs on PostgreSQL is
//! in this folder, in files named as in `sqlite/`:
//! - `open.rs`      — connecting, migrating, the daemon's advisory lock, LISTEN for new jobs.
//! - `admission.rs` — new rows checked and given their host (or failed with a reason).
//! - `claim.rs`     — which hosts have due jobs, claiming (`FOR UPDATE SKIP LOCKED` in a
//!   `MATERIALIZED` CTE), renewing, expiring and releasing leases.
//! - `finish.rs`    — a batch of finished attempts, results, validators and links, stored.
//! - `lookups.rs`   — what the crawl asks while it runs: robots.txt, pauses, a URL in a
//!   crawl, a stored body.
//! - `workers.rs`   — one row per daemon process: registration and heartbeat.
//! - `reports.rs`   — what `crawlq status` and `--exit-when-idle` read.
//!
//! Rules, beside SQLite's (leases, fencing by token + attempt, result and status in one
//! transaction):
//! - No transaction stays open across an HTTP request: each operation is one short
//!   transaction (or one statement) on a pooled connection.
//! - Batches travel as one `jsonb` array per statement (`jsonb_to_recordset`), never one
//!   statement per row.
//! - Times are the server's (`now()`), so every daemon compares against one clock.
//! - Text cannot hold NUL on PostgreSQL (in `text` or `jsonb`): pages that contain one
//!   have it stored as U+FFFD (see [`text`] and [`json`]).
//! - A lost connection is a failed operation like any other: the daemon retries it and the
//!   pool connects again, so a server restart loses and fails nothing.

/// A `timestamptz` as the UTC ISO-8601 text SQLite's columns hold, for the report types
/// both backends share.
macro_rules! iso {
    ($column:literal) => {
        concat!(
            "to_char((",
            $column,
            ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

/// `now()` plus a bound number of seconds (fractional allowed).
macro_rules! now_plus {
    ($seconds:literal) => {
        concat!("(now() + make_interval(secs => (", $seconds, ")::float8))")
    };
}

mod admission;
mod claim;
mod finish;
mod lookups;
mod open;
mod reports;
mod workers;

use std::borrow::Cow;
use std::sync::Arc;

use sqlx::postgres::PgPool;

use open::{AdvisoryLock, NewJobsListener};

/// The channel each committed batch of results notifies (payload: how many results it
/// stored), so consumers can `LISTEN crawlq_results` instead of polling.
pub const RESULTS_CHANNEL: &str = "crawlq_results";

#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// Every operation takes a connection from here for one statement or one short
    /// transaction; a connection the server dropped is replaced by the pool.
    pool: PgPool,
    /// `LISTEN crawlq_jobs` (see [`open::NewJobsListener`]).
    listener: Arc<NewJobsListener>,
    /// The daemon's advisory lock, on its own connection (see [`open::AdvisoryLock`]).
    lock: Arc<AdvisoryLock>,
    /// The database as messages name it (its URL without the password).
    name: String,
    /// Whether opening created crawlq's tables.
    created: bool,
}

/// Text for a PostgreSQL `text` column: NUL, which PostgreSQL refuses, becomes U+FFFD.
fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// JSON text for a `jsonb` parameter: `\u0000` escapes, which `jsonb` refuses, become
/// `\ufffd`. An escape starts at a backslash that is not itself escaped.
fn json(value: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(value).expect("values serialize");
    if !text.contains("\\u0000") {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if rest.starts_with("\\u0000") {
            out.push_str("\\ufffd");
            rest = &rest[6..];
        } else {
            // An escape of two characters (\\, \", \n, …) or the start of \uXXXX: copy
            // the backslash and the character after it as they are.
            out.push_str(&rest[..2]);
            rest = &rest[2..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_becomes_the_replacement_character_in_text_and_json() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
        let value = serde_json::json!({"t": "a\0b", "literal": "\\u0000", "q": "\"\0\""});
        let sent = json(&value);
        let back: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(back["t"], "a\u{FFFD}b");
        // A backslash followed by "u0000" in the page's own text is kept as written.
        assert_eq!(back["literal"], "\\u0000");
        assert_eq!(back["q"], "\"\u{FFFD}\"");
    }
}
