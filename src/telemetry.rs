//! Logging and spans: builds the `tracing` subscriber from settings and installs it once.
//!
//! Each job runs in a debug-level `job` span (`job.id`, `url`, `host`, `attempt`) with child
//! spans for the rate-limit wait, the fetch and the parse, and the store writes an event in
//! the job's span; `RUST_LOG=crawlq=debug` shows every job go claim → wait → fetch → parse →
//! store, with each span's duration when it closes.

use std::io::IsTerminal;

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
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&log.level).map_err(|e| BadLogLevel {
            level: log.level.clone(),
            reason: e.to_string(),
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not for files and log shippers.
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(FmtSpan::CLOSE);
    let _already_installed = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
