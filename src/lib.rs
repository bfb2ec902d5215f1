//! crawlq: a rate-limited web scraper daemon that users drive with SQL.
//!
//! Users `INSERT` rows into `jobs`; the daemon claims them under a lease, fetches each URL
//! under per-host rate limits, parses the page and writes a row into `results`.
//!
//! Map of the crate (one concern per module, one module per outside crate):
//! - [`settings`]  — layered config (`config` crate) checked once into typed settings.
//! - [`telemetry`] — the `tracing` subscriber, installed once.
//! - [`runtime`]   — the only module that names `async-std`: spawn, sleep, timeouts.
//! - [`store`]     — the only module that names `sqlx`: every SQL statement lives here.
//! - [`fetch`]     — the only module that names `surf` (and the curl beneath it): one HTTP
//!   request, body capped; which CAs HTTPS trusts, and why a handshake failed.
//! - [`descriptors`] — the only module that names `libc`: the open file limit, the connection cache's share.
//! - [`dns`]       — host names to addresses, cached (curl's own DNS cache is off).
//! - [`destinations`] — which addresses may be connected to (the private-network guard).
//! - [`limits`]    — the only module that names `governor`: per-host and global quotas.
//! - [`parse`]     — the only module that names `scraper`: HTML in, owned data out.
//! - [`body`]      — the only module that names `flate2`: stored bodies, gzipped.
//! - [`job`]       — domain types: a job, its validation, and what its attempt came to.
//! - [`crawl`]     — one job's attempt: wait, fetch (following redirects), parse.
//! - [`urls`]      — the rules a URL must pass to be fetched, and its host key (a leaf).
//! - [`follow`]    — link following: canonical URLs, scope, allow/deny.
//! - [`robots`]    — the only module that names `texting_robots`: robots.txt rules, cached.
//! - [`sitemap`]   — the only module that names `quick-xml`: sitemap XML in, owned data out.
//! - [`schedule`]  — which hosts may be claimed for, and when: a due-time index.
//! - [`daemon`]    — the scheduler loop: admit, claim fairly, run, store, shut down.
//! - [`shutdown`]  — the stop signal handed to every long-running loop.

pub mod body;
pub mod crawl;
pub mod daemon;
pub mod descriptors;
pub mod destinations;
pub mod dns;
pub mod fetch;
pub mod follow;
pub mod job;
pub mod limits;
pub mod parse;
pub mod robots;
pub mod runtime;
pub mod schedule;
pub mod settings;
pub mod shutdown;
pub mod sitemap;
pub mod store;
pub mod telemetry;
pub mod urls;
