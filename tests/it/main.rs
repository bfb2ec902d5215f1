//! crawlq's integration tests, as one test program: each module below was a test binary of
//! its own, and as one they link the daemon, curl and sqlx once instead of once each.
//! `common` holds what they share: starting crawlq the way `main` does (in-process, or the
//! built binary), a fresh database (a SQLite file in a temp dir, or a database of its own on
//! a throwaway PostgreSQL server), the test HTTP server, and waiting on conditions with a
//! deadline. The tests a module lists in `on_both_backends!` run once per backend, as
//! `MODULE::sqlite::NAME` and `MODULE::postgres::NAME`.
//!
//! One module: `cargo test --test it store::`; one test: `cargo test --test it NAME`; one
//! backend: `cargo test --test it postgres::`.
//!
//! The tests of every module run in one process, several at a time, so none may change
//! what the process shares (its environment, working directory, limits, signal handling):
//! a test sets those on the children it spawns. Shared all the same: the async-std
//! executor and `run_cpu_bound`'s slots, used by every daemon started in-process, and the
//! descriptor limit, which such a daemon raises for the whole process as `crawlq run`
//! does for itself.

mod cli;
mod common;
mod contention;
mod contract;
mod crash;
mod crawl;
mod daemon;
mod database_trouble;
mod dockerfile;
mod hostile;
mod https;
mod many_hosts;
mod postgres;
mod postgres_tls;
mod properties;
mod proxy;
mod refetch;
mod robots;
mod security;
mod sitemap;
mod store;
