//! Logging and spans: builds the `tracing` subscriber from settings and installs it once.
//!
//! Each job runs in a debug-level `job` span (`job.id`, `url`, `host`, `attempt`) with child
//! spans for the rate-limit wait, the fetch and the parse, and the store writes an event in
//! the job's span; `RUST_LOG=crawlq=debug` shows every job go claim → wait → fetch → parse →
//! store, with each span's duration when it closes.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

#[derive(Debug, thiserror::Error)]
#[error("configuration: `log.level` = {level:?}: not a tracing filter ({reason})")]
pub struct BadLogLevel {
    level: String,
    reason: String,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
/// A second call is a no-op (tests start several daemons in one process).
pub fn init(log: &LogSettings) -> Result<(), BadLogLevel> {
    let (filter, spec) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, std::env::var("RUST_LOG").unwrap_or_default()),
        Err(_) => (
            EnvFilter::try_new(&log.level).map_err(|e| BadLogLevel {
                level: log.level.clone(),
                reason: e.to_string(),
            })?,
            log.level.clone(),
        ),
    };
    // sqlx's own info lines are the driver talking to itself (PostgreSQL's NOTICE
    // "relation _sqlx_migrations already exists, skipping" at every start, the pool's
    // failed pings while a server restarts, which crawlq reports in its own words):
    // shown only when a filter names sqlx. Likewise the HTTP client's warning on every
    // failed request ("request completed with error: ConnectFailed"), which the job's
    // own error and log line already say in words: shown only when a filter names isahc.
    let quiet: &[(&str, &str)] = &[
        ("sqlx", "sqlx::postgres::notice=warn"),
        ("sqlx", "sqlx_core::pool=warn"),
        ("isahc", "isahc::handler=error"),
    ];
    let filter = quiet
        .iter()
        .filter(|(named, _)| !spec.contains(named))
        .fold(filter, |filter, (_, directive)| {
            filter.add_directive(directive.parse().expect("a static directive parses"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Scrubbed(std::io::stderr()))
        // Colour only for a person at a terminal, not for files and log shippers.
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(FmtSpan::CLOSE)
        // On a log that cannot be written (its disk is full) the default reports the
        // failure with `eprintln!`, which panics on that same stderr: in a database worker
        // thread or the main task, and the daemon dies. The lines are dropped instead.
        .log_internal_errors(false);
    let _already_installed = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Stderr with passwords in URLs (`http://user:secret@host/`) masked, whichever field,
/// span or error message they appear in: logs are often shipped where job inserters'
/// credentials have no business being. The fmt layer writes each event with one call.
struct Scrubbed<W>(W);

impl<W: Write> Write for Scrubbed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if text.contains('@') => {
                self.0.write_all(mask_url_passwords(text).as_bytes())?;
                Ok(buf.len())
            }
            _ => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`, for every URL in `text`.
pub fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        // The authority ends at the path, query, fragment, or anything that ends a URL
        // in a log line (a space or a quote).
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '\\') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_url_passwords;

    #[test]
    fn passwords_in_urls_are_masked_and_nothing_else_changes() {
        assert_eq!(
            mask_url_passwords(r#"url=http://ann:s3cret@example.com:8080/a?b=c "x""#),
            r#"url=http://ann:***@example.com:8080/a?b=c "x""#
        );
        assert_eq!(
            mask_url_passwords(
                r#"{"url":"https://u:p%40ss@h/","error":"GET https://u:p@h/x: 500"}"#
            ),
            r#"{"url":"https://u:***@h/","error":"GET https://u:***@h/x: 500"}"#
        );
        for unchanged in [
            "http://example.com:8080/a@b",
            "mailto:ann@example.com",
            "http://ann@example.com/ (no password)",
            "no url here: a@b",
        ] {
            assert_eq!(mask_url_passwords(unchanged), unchanged);
        }
    }
}
