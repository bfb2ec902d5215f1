//! The `crawlq` command line. Errors become exit codes here and nowhere else:
//! 0 success, 1 a runtime failure (database, network client), 2 bad configuration or usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crawlq::daemon::{Daemon, RunOptions};
use crawlq::follow::{CrawlSpec, QueryFilter};
use crawlq::job::{self, JobKind, Status};
use crawlq::runtime;
use crawlq::settings::{DatabaseLocation, Overrides, Settings};
use crawlq::shutdown;
use crawlq::store::{StatusLimits, StatusReport, Store};
use crawlq::telemetry;

#[derive(Parser)]
#[command(
    name = "crawlq",
    version,
    about = "A rate-limited web scraper daemon you drive with SQL"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct CommonArgs {
    /// A TOML file layered over the built-in defaults (config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The database: a SQLite file path or sqlite: URL, or a postgres:// URL (default
    /// data/crawlq.db).
    #[arg(long, global = true, value_name = "URL_OR_PATH")]
    database: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: claim queued jobs, crawl them, store results.
    Run {
        /// Exit 0 once no job is queued or running.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Queue URLs; prints the new job ids.
    Add {
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
        /// Higher runs first (within a host).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// NAME=CSS, or NAME=CSS@attribute; repeat for several.
        #[arg(long = "select", value_name = "NAME=CSS")]
        selectors: Vec<String>,
        /// The URLs are sitemaps (or sitemap indexes, plain or .gz): each starts a crawl
        /// of the pages it lists (jobs.kind = 'sitemap').
        #[arg(long)]
        sitemap: bool,
    },
    /// Show job counts by status, the queue of the busiest hosts, recent throughput,
    /// errors of the last hour grouped by reason, and the workers.
    Status {
        /// Print one JSON object instead (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the database, then exit.
    Migrate,
    /// Exit 0 if the daemon running on this host (container) has a fresh heartbeat and the
    /// database is writable; otherwise print why and exit 1. For Docker's HEALTHCHECK.
    Healthcheck,
    /// Write a stored page body (fetch.store_body) to stdout, as it was fetched.
    Body {
        /// The `results.id` whose body to print.
        result_id: i64,
    },
    /// Let a host be crawled again now: lift its Retry-After pause, forget its failed
    /// robots.txt answers (every scheme and port), and make its jobs waiting for a retry
    /// due now. A running daemon honours it within daemon.heartbeat_secs.
    Unpause {
        /// A host name (example.com), or a URL or origin whose host is meant.
        host: String,
    },
}

/// A failure with the exit code it deserves.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl ToString) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    fn runtime(message: impl ToString) -> Failure {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

fn main() -> ExitCode {
    crawlq::descriptors::limit_malloc_arenas();
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Not eprintln!: it panics when stderr cannot be written (a full disk), which
            // would turn this exit code into 101. Passwords in URLs are masked, as in the
            // log (a database URL's, a job URL's).
            let message = telemetry::mask_url_passwords(&failure.message);
            let _ = writeln!(std::io::stderr(), "crawlq: {message}");
            ExitCode::from(failure.code)
        }
    }
}

fn execute(cli: Cli) -> Result<(), Failure> {
    let overrides = Overrides {
        database: cli.common.database.clone(),
    };
    let settings =
        Settings::load(cli.common.config.as_deref(), &overrides).map_err(Failure::config)?;
    telemetry::init(&settings.log).map_err(Failure::config)?;
    runtime::block_on(async move {
        match cli.command {
            Command::Run { exit_when_idle } => run(settings, RunOptions { exit_when_idle }).await,
            Command::Add {
                urls,
                priority,
                selectors,
                sitemap,
            } => {
                let kind = if sitemap {
                    JobKind::Sitemap
                } else {
                    JobKind::Page
                };
                add(settings, urls, priority, selectors, kind).await
            }
            Command::Status { json } => status(settings, json).await,
            Command::Body { result_id } => body(settings, result_id).await,
            Command::Unpause { host } => unpause(settings, &host).await,
            Command::Healthcheck => healthcheck(settings).await,
            Command::Migrate => {
                let store = Store::open(&settings.database)
                    .await
                    .map_err(Failure::runtime)?;
                store.close().await;
                let database = settings.database.name();
                if store.created() {
                    match settings.database.location {
                        DatabaseLocation::File(_) => {
                            println!("database {database} created, with every migration applied")
                        }
                        DatabaseLocation::Postgres(_) => println!(
                            "crawlq's tables created in database {database}, with every migration applied"
                        ),
                    }
                } else {
                    println!("database {database} is up to date");
                }
                Ok(())
            }
        }
    })
}

async fn run(settings: Settings, options: RunOptions) -> Result<(), Failure> {
    let (trigger, shutdown) = shutdown::channel();
    let mut signals = 0u32;
    ctrlc::set_handler(move || {
        signals += 1;
        if signals == 1 {
            tracing::info!("SIGTERM/SIGINT received: stopping (send again to exit at once)");
            trigger.fire();
        } else {
            // Leases make this safe: whatever was running is claimable again once they expire.
            let _ = writeln!(std::io::stderr(), "crawlq: second signal; exiting now");
            std::process::exit(130);
        }
    })
    .map_err(|e| Failure::runtime(format!("could not install the signal handler: {e}")))?;
    let daemon = Daemon::build(settings).await.map_err(Failure::runtime)?;
    daemon
        .run_until_stopped(shutdown, options)
        .await
        .map_err(Failure::runtime)?;
    Ok(())
}

async fn add(
    settings: Settings,
    urls: Vec<String>,
    priority: i64,
    selectors: Vec<String>,
    kind: JobKind,
) -> Result<(), Failure> {
    let selectors = selectors_json(&selectors).map_err(Failure::config)?;
    // Check everything before inserting anything, so a typo does not queue half a list.
    let plain = CrawlSpec {
        scope: "host".to_owned(),
        ..CrawlSpec::default()
    };
    let filter = QueryFilter::new(&settings.crawl.strip_query_params);
    for url in &urls {
        job::admit(url, selectors.as_deref(), &plain, &filter).map_err(Failure::config)?;
    }
    let store = Store::open(&settings.database)
        .await
        .map_err(Failure::runtime)?;
    if store.created() {
        // Not an error (adding jobs before the first `run` is fine), but a mistyped path
        // would otherwise queue jobs where no daemon looks.
        let database = settings.database.name();
        let created = match settings.database.location {
            DatabaseLocation::File(_) => format!("a new database at {database} (it did not exist)"),
            DatabaseLocation::Postgres(_) => {
                format!("crawlq's tables in database {database} (they did not exist)")
            }
        };
        let _ = writeln!(std::io::stderr(), "crawlq: created {created}");
    }
    for url in &urls {
        let id = store
            .insert_job(url, priority, selectors.as_deref(), kind)
            .await
            .map_err(Failure::runtime)?;
        println!("{id}");
    }
    store.close().await;
    Ok(())
}

/// `["price=span.price", "img=img@src"]` → `{"price":"span.price","img":"img@src"}`.
fn selectors_json(pairs: &[String]) -> Result<Option<String>, String> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut object = serde_json::Map::new();
    for pair in pairs {
        let Some((name, css)) = pair.split_once('=') else {
            return Err(format!("--select {pair:?}: expected NAME=CSS"));
        };
        if name.trim().is_empty() {
            return Err(format!(
                "--select {pair:?}: the name before '=' is empty (expected NAME=CSS)"
            ));
        }
        object.insert(name.trim().to_owned(), css.trim().into());
    }
    Ok(Some(serde_json::Value::Object(object).to_string()))
}

/// Opens the database for a command that only reads what a daemon wrote: a mistyped path
/// must say so, not create an empty database that looks like an empty queue.
async fn open_existing(settings: &Settings) -> Result<Store, Failure> {
    Store::open_existing(&settings.database)
        .await
        .map_err(Failure::runtime)
}

async fn healthcheck(settings: Settings) -> Result<(), Failure> {
    let store = open_existing(&settings).await?;
    let host = crawlq::daemon::this_host();
    let verdict = async {
        store.check_writable().await.map_err(Failure::runtime)?;
        let worker = store
            .newest_worker_on(&host)
            .await
            .map_err(Failure::runtime)?
            .ok_or_else(|| {
                Failure::runtime(format!("unhealthy: no crawlq daemon has run on {host} yet"))
            })?;
        let age = worker.heartbeat_age.as_secs_f64();
        match worker.state.as_str() {
            "running" => {
                println!(
                    "healthy: daemon {} (pid {}) heartbeat {age:.1} s ago; database writable",
                    worker.id, worker.pid
                );
                Ok(())
            }
            "stopped" => Err(Failure::runtime(format!(
                "unhealthy: daemon {} (pid {}) has stopped",
                worker.id, worker.pid
            ))),
            _ => Err(Failure::runtime(format!(
                "unhealthy: daemon {} (pid {}) last wrote its heartbeat {age:.1} s ago (more than 3 x daemon.heartbeat_secs)",
                worker.id, worker.pid
            ))),
        }
    }
    .await;
    store.close().await;
    verdict
}

async fn body(settings: Settings, result_id: i64) -> Result<(), Failure> {
    use std::io::Write;

    let store = open_existing(&settings).await?;
    let found = stored_body(&store, result_id).await;
    store.close().await;
    let (from, gzipped) = found?;
    if from != result_id {
        // Said on stderr, so that `crawlq body 12 > page.html` still gets the page alone.
        let _ = writeln!(
            std::io::stderr(),
            "crawlq: result {result_id} is a 304 Not Modified, which stores no body: \
             printing the version it confirmed, result {from}"
        );
    }
    let page = crawlq::body::gunzip(&gzipped).map_err(|e| {
        Failure::runtime(format!("the stored body of result {from} is damaged: {e}"))
    })?;
    std::io::stdout()
        .write_all(&page)
        .map_err(|e| Failure::runtime(format!("writing the body: {e}")))
}

async fn unpause(settings: Settings, target: &str) -> Result<(), Failure> {
    // A host as `status` shows it, or a URL/origin pasted from a job or a log line; read
    // as a URL either way, so it names the host as the daemon keys it (lower case,
    // internationalised names in ASCII, no port).
    let target = target.trim();
    let as_url = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}/")
    };
    let host = url::Url::parse(&as_url)
        .ok()
        .and_then(|url| crawlq::urls::host_key(&url))
        .filter(|host| !host.is_empty())
        .ok_or_else(|| Failure::config(format!("{target:?} is not a host name or URL")))?;
    let store = open_existing(&settings).await?;
    let unpaused = store.unpause(&host).await;
    store.close().await;
    let unpaused = unpaused.map_err(Failure::runtime)?;
    if !unpaused.pause_lifted && unpaused.robots_forgotten == 0 && unpaused.jobs_due_now == 0 {
        println!(
            "{host}: nothing was waiting there (no Retry-After pause, no failed robots.txt answer, no job waiting for a retry)"
        );
        return Ok(());
    }
    let pause = if unpaused.pause_lifted {
        "its Retry-After pause lifted"
    } else {
        "it had no Retry-After pause"
    };
    println!(
        "{host}: {pause}; {} failed robots.txt answer(s) forgotten (asked again by the next job); {} job(s) waiting for a retry due now",
        unpaused.robots_forgotten, unpaused.jobs_due_now
    );
    Ok(())
}

/// The stored body of `result_id` (gzipped), or for a 304, of the version it confirmed;
/// with the result it was stored for.
async fn stored_body(store: &Store, result_id: i64) -> Result<(i64, Vec<u8>), Failure> {
    if let Some(gzipped) = store
        .gzipped_body(result_id)
        .await
        .map_err(Failure::runtime)?
    {
        return Ok((result_id, gzipped));
    }
    let confirmed = store
        .confirmed_version(result_id)
        .await
        .map_err(Failure::runtime)?;
    let Some(version) = confirmed else {
        return Err(Failure::runtime(format!(
            "result {result_id} has no stored body (is fetch.store_body on, and does the result exist?)"
        )));
    };
    match store
        .gzipped_body(version)
        .await
        .map_err(Failure::runtime)?
    {
        Some(gzipped) => Ok((version, gzipped)),
        None => Err(Failure::runtime(format!(
            "result {result_id} is a 304 Not Modified, which stores no body; the version it \
             confirmed, result {version}, has no stored body either (was fetch.store_body on?)"
        ))),
    }
}

/// The longest lists `crawlq status` shows.
const STATUS_LIMITS: StatusLimits = StatusLimits {
    top_hosts: 10,
    error_groups: 10,
    workers: 20,
};

async fn status(settings: Settings, json: bool) -> Result<(), Failure> {
    let store = open_existing(&settings).await?;
    let report = store.status_report(STATUS_LIMITS).await;
    store.close().await;
    let report = report.map_err(Failure::runtime)?;
    if json {
        let mut value = serde_json::to_value(&report).map_err(Failure::runtime)?;
        value["database"] = settings.database.name().into();
        println!("{value:#}");
    } else {
        print!("{}", status_text(&settings, &report));
    }
    Ok(())
}

/// The human form of `crawlq status`: a few lines, then tables only when they have rows.
fn status_text(settings: &Settings, report: &StatusReport) -> String {
    use std::fmt::Write;

    let mut out = String::new();
    let _ = writeln!(out, "database: {}", settings.database.name());
    for status in Status::ALL {
        let _ = write!(out, "{:>10}: {}", status.as_str(), report.jobs.get(status));
        if status == Status::Queued && report.not_yet_admitted > 0 {
            let _ = write!(out, " ({} not yet admitted)", report.not_yet_admitted);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "oldest due job: inserted {}",
        report.oldest_due_created_at.as_deref().unwrap_or("-")
    );
    // The last minute's count is the current rate; an hour's average beside it read as a
    // contradiction ("23 in the last minute, 23 in the last hour (0.4/min)").
    let _ = writeln!(
        out,
        "pages fetched: {} in the last minute ({}/min now), {} in the last hour",
        report.fetched_last_minute, report.fetched_last_minute, report.fetched_last_hour
    );
    if !report.top_hosts.is_empty() {
        let _ = writeln!(out, "\nqueue by host (top {}):", report.top_hosts.len());
        let _ = writeln!(
            out,
            "  {:<32} {:>8} {:>8} {:>8}  paused",
            "host", "queued", "due", "running"
        );
        for host in &report.top_hosts {
            let paused = match (&host.paused_until, &host.pause_reason) {
                (Some(until), Some(reason)) => format!("until {until} ({reason})"),
                (Some(until), None) => format!("until {until}"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<32} {:>8} {:>8} {:>8}  {paused}",
                host.host, host.queued, host.due, host.running
            );
        }
    }
    if !report.recent_errors.is_empty() {
        let shown = report.recent_errors.len();
        let _ = writeln!(
            out,
            "\nerrors in the last hour, by reason{}:",
            if shown as u32 == STATUS_LIMITS.error_groups {
                format!(" (the {shown} commonest)")
            } else {
                String::new()
            }
        );
        for group in &report.recent_errors {
            let state = if group.status == "queued" {
                "retrying"
            } else {
                "failed"
            };
            // One line per reason, however many lines the error has (a regex error
            // draws its caret on a line of its own).
            let reason = group
                .reason
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                "  {:>6} {state:<8}  {reason}  (last {})",
                group.jobs, group.last_seen
            );
        }
    }
    if report.workers.is_empty() {
        let _ = writeln!(out, "\nworkers: no daemon has run on this database");
    } else {
        let _ = writeln!(out, "\nworkers:");
        for w in &report.workers {
            let _ = writeln!(
                out,
                "  {} on {} (pid {}, v{}): {}, heartbeat {:.1} s ago; claimed {}, done {}, failed {}, in flight {}",
                w.id,
                w.hostname,
                w.pid,
                w.version,
                w.state,
                w.heartbeat_age_secs,
                w.claimed,
                w.done,
                w.failed,
                w.in_flight
            );
        }
    }
    out
}
