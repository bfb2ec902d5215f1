//! Crash safety through the built binary, on both backends: a crawl of a few thousand
//! local pages survives `kill -9` at random moments, restart after restart, and SIGTERM at
//! full speed, and nothing is lost or doubled.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};
use crate::common::{
    exit_within, on_both_backends, sigterm, size_from_env, wait_until, Backend, KillOnDrop, TempDb,
    UserSql, DEADLINE,
};
use crawlq::runtime;

on_both_backends!(
    a_crawl_killed_twenty_times_ends_complete_with_nothing_lost_or_doubled,
    sigterm_during_a_full_speed_crawl_exits_0_within_the_grace_period_and_loses_nothing,
);

/// Page `i` links to the next page (so every page is reachable from /p/0) and to four
/// others spread over the site, so that many pages are found several times over.
fn links_of(i: usize, pages: usize) -> Vec<usize> {
    let mut links = vec![(i + 1) % pages];
    links.extend((1..=4).map(|k| (i * 7 + k * 131) % pages));
    links
}

fn site(pages: usize) -> TestServer {
    site_with_delays(pages, |_| None)
}

/// The site, with some pages answered after a delay.
fn site_with_delays(
    pages: usize,
    delay_of: impl Fn(usize) -> Option<Duration> + Send + Sync + 'static,
) -> TestServer {
    TestServer::start("127.0.0.1", move |request| {
        let Some(i) = request
            .path
            .strip_prefix("/p/")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < pages)
        else {
            return Reply::status(404);
        };
        let anchors: String = links_of(i, pages)
            .iter()
            .map(|l| format!("<a href=\"/p/{l}\">page {l}</a>"))
            .collect();
        let page = Reply::html(format!(
            "<html><head><title>page {i}</title></head><body>{anchors}</body></html>"
        ));
        match delay_of(i) {
            Some(delay) => page.with_delay(delay),
            None => page,
        }
    })
}

/// A small deterministic generator for the kill moments (seed printed on failure).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `crawlq run` on `db`, at `rps` requests a second to the one test host.
fn crawler(db: &TempDb, rps: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crawlq"));
    command
        .current_dir(db.dir.path())
        .arg("run")
        .args(["--database", &db.arg()])
        .env_remove("RUST_LOG")
        .env("CRAWLQ__LOG__LEVEL", "warn")
        .env("CRAWLQ__DAEMON__POLL_INTERVAL_MS", "20")
        .env("CRAWLQ__DAEMON__HEARTBEAT_SECS", "0.5")
        .env("CRAWLQ__LIMITS__PER_HOST_RPS", rps)
        .env("CRAWLQ__LIMITS__PER_HOST_BURST", "8")
        .env("CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT", "16")
        .env("CRAWLQ__CRAWL__OBEY_ROBOTS", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A daemon for the kill test: a killed daemon's jobs come back after 2 s.
fn daemon(db: &TempDb, exit_when_idle: bool) -> Child {
    let mut command = crawler(db, "100");
    command
        .env("CRAWLQ__DAEMON__LEASE_SECS", "2")
        .env("CRAWLQ__DAEMON__SHUTDOWN_GRACE_SECS", "0");
    if exit_when_idle {
        command.arg("--exit-when-idle");
    }
    command.spawn().expect("crawlq starts")
}

/// Inserts the crawl's seed, /p/0 with unlimited depth. Every kill of a daemon counts an
/// attempt against the jobs it was running, and a job whose attempts run out that way
/// fails ("lease expired"); many attempts keep that designed guard against pages that
/// crash the daemon from hiding what this test is after: lost or doubled work.
async fn queue_the_crawl(sql: &UserSql, server: &TestServer) {
    sql.query("INSERT INTO jobs (url, max_depth, max_attempts) VALUES ($1, 100000, 1000)")
        .bind(server.url("/p/0"))
        .execute()
        .await;
}

/// The crawl of the generated site is complete and consistent: every page a `done` job
/// once, one result per fetch, every link of every page a job of the crawl, and an intact
/// database.
async fn assert_crawl_complete(sql: &UserSql, pages: usize, context: &str) {
    let by_status: Vec<(String, i64)> = sql
        .query("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .all()
        .await;
    let failed: Vec<(String, Option<String>)> = sql
        .query("SELECT url, error FROM jobs WHERE status <> 'done' LIMIT 5")
        .all()
        .await;
    assert_eq!(
        by_status,
        vec![("done".to_owned(), pages as i64)],
        "every page done exactly once as a job, none stuck or dropped ({context}): {failed:?}"
    );
    let distinct: i64 = count(sql, "SELECT COUNT(DISTINCT canonical_url) FROM jobs").await;
    assert_eq!(distinct as usize, pages, "one job per page");
    // Retries do not start a new fetch_no (recrawls do): one row per page means no page's
    // result was stored twice.
    let results = count(sql, "SELECT COUNT(*) FROM results").await;
    assert_eq!(results as usize, pages, "one result per page ({context})");
    let later_fetches = count(sql, "SELECT COUNT(*) FROM results WHERE fetch_no <> 1").await;
    assert_eq!(later_fetches, 0);
    let without_result: i64 = count(
        sql,
        "SELECT COUNT(*) FROM jobs j WHERE NOT EXISTS
             (SELECT 1 FROM results r WHERE r.job_id = j.id AND r.fetch_no = j.fetch_no)",
    )
    .await;
    assert_eq!(without_result, 0, "every done job has its result");
    let missing_children = sql
        .int(&format!(
            "SELECT COUNT(*) FROM latest_results r
               JOIN jobs j ON j.id = r.job_id, {}
              WHERE NOT EXISTS (SELECT 1 FROM jobs c
                                 WHERE c.root_id = j.root_id AND c.canonical_url = l.value)",
            sql.json_elements("r.links", "l")
        ))
        .await;
    assert_eq!(missing_children, 0, "children lost ({context})");
    let links = sql
        .int(&format!(
            "SELECT COUNT(*) FROM latest_results r, {}",
            sql.json_elements("r.links", "l")
        ))
        .await;
    let expected_links: usize = (0..pages)
        .map(|i| links_of(i, pages).into_iter().collect::<HashSet<_>>().len())
        .sum();
    assert_eq!(
        links as usize, expected_links,
        "each page's links were stored"
    );
    if sql.backend() == Backend::Sqlite {
        let integrity = sql.text("PRAGMA integrity_check").await;
        assert_eq!(integrity.as_deref(), Some("ok"));
    }
}

async fn count(sql: &UserSql, query: &'static str) -> i64 {
    sql.int(query).await
}

/// Polls `query` (a count) until it reaches at least `target`, or `DEADLINE` passes.
async fn wait_for_count(sql: &UserSql, query: &'static str, target: i64) {
    let started = Instant::now();
    loop {
        let n = sql.query(query).try_all::<(i64,)>().await;
        if n.is_ok_and(|n| n[0].0 >= target) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {query} to reach {target}"
        );
        runtime::sleep(Duration::from_millis(10)).await;
    }
}

const DONE: &str = "SELECT COUNT(*) FROM jobs WHERE status = 'done'";

async fn a_crawl_killed_twenty_times_ends_complete_with_nothing_lost_or_doubled(backend: Backend) {
    let (pages, kills_wanted) = (
        size_from_env("CRASH_PAGES", 2_000),
        size_from_env("CRASH_KILLS", 20),
    );
    let server = site(pages);
    let db = TempDb::on(backend).await;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15_u64);
    let mut rng = XorShift(seed);

    let mut kills = 0;
    // Kills of daemons that had made progress, so had written their workers row.
    let mut registered_kills = 0;
    let mut done_before = 0;
    while kills < kills_wanted {
        let mut child = KillOnDrop(daemon(&db, false));
        if kills == 0 {
            // The first start creates the database; then the crawl is queued.
            let sql = db.wait_for_daemon().await;
            queue_the_crawl(&sql, &server).await;
            sql.close().await;
        }
        let sql = db.user().await;
        // Kill at a random moment. Every third daemon dies during its start (opening
        // the database, registering, taking back expired leases, its first claims);
        // the others once they have made progress, up to 1 s later, so that lease
        // renewals (every 2/3 s) and heartbeats are hit too.
        if kills % 3 == 2 {
            runtime::sleep(Duration::from_millis(rng.below(300))).await;
        } else {
            registered_kills += 1;
            wait_for_count(&sql, DONE, done_before + 1).await;
            runtime::sleep(Duration::from_millis(rng.below(1_000))).await;
        }
        child.0.kill().expect("kill -9");
        child.0.wait().unwrap();
        kills += 1;
        done_before = count(&sql, DONE).await;
        sql.close().await;
        assert!(
            (done_before as usize) < pages,
            "the crawl finished before kill {kills} of {kills_wanted}; make it longer (seed {seed})"
        );
    }

    // A last daemon finishes the crawl (the dead ones' leases expire on the way).
    let mut last = KillOnDrop(daemon(&db, true));
    // At 100 pages a second, with room for a loaded machine.
    let limit = Duration::from_secs(60 + pages as u64 / 50);
    let status = exit_within(&mut last.0, limit, "the last daemon").await;
    assert!(status.success(), "{status:?}");

    let sql = db.user().await;
    assert_crawl_complete(&sql, pages, &format!("seed {seed}")).await;
    let unclean: i64 = count(
        &sql,
        "SELECT COUNT(*) FROM workers WHERE stopped_at IS NULL",
    )
    .await;
    // A daemon killed during its start may not have written its row yet.
    assert!(
        (registered_kills..=kills).contains(&(unclean as usize)),
        "each killed daemon's row shows no clean exit: {unclean} rows for {kills} kills"
    );
    let clean: i64 = count(
        &sql,
        "SELECT COUNT(*) FROM workers WHERE stopped_at IS NOT NULL",
    )
    .await;
    assert_eq!(clean, 1, "only the last daemon exited cleanly");
    let requests = server.hits().len();
    assert!(
        requests > pages,
        "no page was fetched twice: the kills never interrupted work (seed {seed})"
    );
    eprintln!(
        "{kills} kills survived (the last with {done_before} of {pages} pages done); \
         0 jobs lost; {requests} page requests (refetched after kills: {})",
        requests - pages
    );
}

async fn sigterm_during_a_full_speed_crawl_exits_0_within_the_grace_period_and_loses_nothing(
    backend: Backend,
) {
    let pages = 2_000;
    // Until the signal, every 23rd page takes 1 s (it finishes within the grace
    // period) and every 97th takes 30 s (it cannot: it goes back to the queue).
    let slow = Arc::new(AtomicBool::new(true));
    let server = site_with_delays(pages, {
        let slow = Arc::clone(&slow);
        move |i| match (slow.load(Ordering::SeqCst), i % 97, i % 23) {
            (false, ..) => None,
            (true, 5, _) => Some(Duration::from_secs(30)),
            (true, _, 3) => Some(Duration::from_secs(1)),
            _ => None,
        }
    });
    let is_long = |path: &str| {
        path.strip_prefix("/p/")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|i| i % 97 == 5)
    };
    let db = TempDb::on(backend).await;
    // The defaults but the rate: lease 60 s, grace 8 s.
    let mut child = KillOnDrop(crawler(&db, "1000000").spawn().unwrap());
    let sql = db.wait_for_daemon().await;
    queue_the_crawl(&sql, &server).await;
    wait_for_count(&sql, DONE, 300).await;
    wait_until("a 30 s page in flight", || async {
        server.hits().iter().any(|hit| is_long(&hit.path))
    })
    .await;

    let signalled = Instant::now();
    sigterm(&child.0);
    let requested_before: Vec<String> = server.hits().into_iter().map(|h| h.path).collect();
    // The grace period is 8 s; the margin is for a loaded machine.
    let status = exit_within(&mut child.0, Duration::from_secs(10), "SIGTERM").await;
    let took = signalled.elapsed();
    slow.store(false, Ordering::SeqCst);
    assert!(status.success(), "{status:?}");
    let running = count(&sql, "SELECT COUNT(*) FROM jobs WHERE status = 'running'").await;
    assert_eq!(running, 0, "in-flight jobs finished or went back to queued");
    let leased = count(
        &sql,
        "SELECT COUNT(*) FROM jobs WHERE lease_owner IS NOT NULL",
    )
    .await;
    assert_eq!(leased, 0, "no lease is left behind");
    // The 30 s pages in flight went back to the queue, their interrupted attempt not
    // counted.
    let long_in_flight: Vec<&String> = requested_before.iter().filter(|p| is_long(p)).collect();
    for path in &long_in_flight {
        let (status, attempts): (String, i64) = sql
            .query("SELECT status, attempts FROM jobs WHERE url = $1")
            .bind(server.url(path))
            .one()
            .await;
        assert_eq!((status.as_str(), attempts), ("queued", 0), "{path}");
    }
    // The 1 s pages in flight finished within the grace period.
    let is_second = |path: &str| {
        path.strip_prefix("/p/")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|i| i % 23 == 3 && i % 97 != 5)
    };
    for path in requested_before.iter().filter(|p| is_second(p)) {
        let status: String = sql
            .query("SELECT status FROM jobs WHERE url = $1")
            .bind(server.url(path))
            .scalar()
            .await;
        assert_eq!(status, "done", "{path}");
    }
    let done = count(&sql, DONE).await;

    // What was queued is crawled by the next daemon, without waiting for any lease.
    let mut next = KillOnDrop(
        crawler(&db, "1000000")
            .arg("--exit-when-idle")
            .spawn()
            .unwrap(),
    );
    let status = exit_within(&mut next.0, DEADLINE, "the next daemon").await;
    assert!(status.success(), "{status:?}");
    assert_crawl_complete(&sql, pages, "after SIGTERM").await;
    eprintln!(
        "SIGTERM with {done} of {pages} pages done and {} 30 s pages in flight: exit 0 after {took:?}",
        long_in_flight.len()
    );
}
