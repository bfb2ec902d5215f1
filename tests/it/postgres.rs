//! What only PostgreSQL has: NOTIFY for new jobs and for stored results, and a server that
//! can go away and come back while the daemon runs. The store's contract on PostgreSQL is
//! in `contract`, and the daemon's (claims, retries, crawls, robots.txt, pauses, cancels,
//! `status`, SIGTERM, kill -9) in the modules whose tests run `on_both_backends!`.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crawlq::daemon::{Daemon, RunOptions};
use crawlq::runtime;
use crawlq::settings::{DatabaseLocation, Settings};
use crawlq::shutdown;
use crawlq::store::RESULTS_CHANNEL;

use crate::common::postgres::{self, PgServer};
use crate::common::server::TestServer;
use crate::common::{test_settings, wait_until, TempDb, DEADLINE};

/// Settings for a daemon on the PostgreSQL database `url`.
fn settings_for(url: &str, dir: &TempDb) -> Settings {
    let mut settings = test_settings(&dir.path);
    settings.database.location = DatabaseLocation::Postgres(url.to_owned());
    settings
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn a_job_inserted_while_the_daemon_idles_is_picked_up_on_notify_not_at_the_next_poll() {
    runtime::block_on(async {
        let Some(server) = postgres::shared() else {
            return;
        };
        let database = server.database().await;
        let dir = TempDb::new();
        let site = TestServer::pages("127.0.0.1");
        let mut settings = settings_for(&database.url, &dir);
        // Polling alone would find a new row only after 10 minutes, far past the deadline.
        settings.daemon.poll_interval = Duration::from_secs(600);
        let daemon = Daemon::build(settings).await.expect("daemon builds");
        let (trigger, stop) = shutdown::channel();
        let handle = runtime::spawn(daemon.run_until_stopped(stop, RunOptions::default()));
        let user = postgres::connect(&database.url).await;
        // The daemon's first look at the queue happens at start; wait until it is past it
        // (it has registered and written a heartbeat), so the next rows arrive while it
        // idles.
        wait_until("the daemon to register", || {
            let user = user.clone();
            async move { count(&user, "SELECT COUNT(*) FROM workers").await == 1 }
        })
        .await;
        for i in 0..3 {
            sqlx::query("INSERT INTO jobs (url) VALUES ($1)")
                .bind(site.url(&format!("/late-{i}")))
                .execute(&user)
                .await
                .unwrap();
            let done = i + 1;
            wait_until(&format!("{done} jobs done without a poll"), || {
                let user = user.clone();
                async move {
                    count(&user, "SELECT COUNT(*) FROM jobs WHERE status = 'done'").await == done
                }
            })
            .await;
        }
        trigger.fire();
        runtime::timeout(DEADLINE, handle).await.unwrap().unwrap();
    });
}

#[test]
fn each_committed_batch_of_results_sends_one_notify_with_its_count() {
    runtime::block_on(async {
        let Some(server) = postgres::shared() else {
            return;
        };
        let database = server.database().await;
        let dir = TempDb::new();
        let site = TestServer::pages("127.0.0.1");
        let user = postgres::connect(&database.url).await;
        let mut listener = PgListener::connect(&database.url).await.unwrap();
        listener.listen(RESULTS_CHANNEL).await.unwrap();
        let mut settings = settings_for(&database.url, &dir);
        settings.limits.per_host.rate.rps = 50.0;
        let daemon = Daemon::build(settings).await.expect("daemon builds");
        for i in 0..20 {
            sqlx::query("INSERT INTO jobs (url) VALUES ($1)")
                .bind(site.url(&format!("/page-{i}")))
                .execute(&user)
                .await
                .unwrap();
        }
        let report = runtime::timeout(
            DEADLINE,
            daemon.run_until_stopped(
                shutdown::channel().1,
                RunOptions {
                    exit_when_idle: true,
                },
            ),
        )
        .await
        .expect("the crawl ends within the deadline")
        .unwrap();
        assert_eq!(report.done, 20);
        // Every result was announced, in batches, each notification counting its batch.
        let mut announced = 0;
        while announced < 20 {
            let notification = runtime::timeout(DEADLINE, listener.recv())
                .await
                .expect("a notification for every stored result")
                .unwrap();
            let stored: i64 = notification.payload().parse().expect("a count");
            assert!(stored >= 1, "{}", notification.payload());
            announced += stored;
        }
        assert_eq!(announced, 20);
        assert_eq!(count(&user, "SELECT COUNT(*) FROM results").await, 20);
    });
}

#[test]
fn the_server_dying_and_coming_back_mid_crawl_fails_and_loses_no_job() {
    runtime::block_on(async {
        if postgres::shared().is_none() {
            return;
        }
        // A server of its own: this one is killed.
        let server = PgServer::start_new().expect("a private server starts");
        let database = server.database().await;
        let dir = TempDb::new();
        let site = TestServer::pages("127.0.0.1");
        let mut settings = settings_for(&database.url, &dir);
        settings.limits.per_host.rate.rps = 20.0;
        const JOBS: i64 = 60;
        {
            let user = postgres::connect(&database.url).await;
            // The tables, then the jobs, before the daemon starts.
            crawlq::store::Store::open(&settings.database)
                .await
                .unwrap()
                .close()
                .await;
            sqlx::query(
                "INSERT INTO jobs (url) SELECT $1 || i FROM generate_series(1, $2::bigint) AS i",
            )
            .bind(site.url("/page-"))
            .bind(JOBS)
            .execute(&user)
            .await
            .unwrap();
            user.close().await;
        }
        let daemon = Daemon::build(settings).await.expect("daemon builds");
        let (trigger, stop) = shutdown::channel();
        let handle = runtime::spawn(daemon.run_until_stopped(stop, RunOptions::default()));
        wait_until("some pages fetched", || {
            let hits = site.page_hits().len();
            async move { hits >= 10 }
        })
        .await;
        // Killed as a crash would kill it: every connection the daemon holds (its pool,
        // its LISTEN connection, its advisory lock) is cut, with no goodbye. Brought back
        // at once: while it recovers, the daemon's looks at the queue (every 100 ms) fail.
        server.kill();
        let fetched_at_kill = site.page_hits().len() as i64;
        assert!(fetched_at_kill < JOBS, "the crawl was under way, not over");
        server.start().expect("the server starts again");
        let user = postgres::connect(&database.url).await;
        wait_until("every job to be done", || {
            let user = user.clone();
            async move { count(&user, "SELECT COUNT(*) FROM jobs WHERE status = 'done'").await == JOBS }
        })
        .await;
        wait_until("the daemon to hold its advisory lock again", || {
            let user = user.clone();
            async move {
                count(
                    &user,
                    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
                )
                .await
                    == 1
            }
        })
        .await;
        trigger.fire();
        let report = runtime::timeout(DEADLINE, handle).await.unwrap().unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        // The advisory lock went with the daemon's connection; a heartbeat took it again
        // (checked before the daemon stopped, above: it lets go of it when it stops).
        assert_eq!(count(&user, "SELECT COUNT(*) FROM jobs").await, JOBS);
        assert_eq!(
            count(&user, "SELECT COUNT(DISTINCT job_id) FROM results").await,
            JOBS
        );
        assert_eq!(
            count(&user, "SELECT COUNT(*) FROM jobs WHERE status <> 'done'").await,
            0
        );
    });
}

#[test]
fn every_subcommand_works_with_a_postgres_url() {
    use crate::common::crawlq;

    runtime::block_on(async {
        let Some(server) = postgres::shared() else {
            return;
        };
        let database = server.database().await;
        let site = TestServer::pages("127.0.0.1");
        let dir = TempDb::new();
        let run = |args: &[&str]| {
            let out = crawlq(dir.dir.path())
                .args(args)
                .args(["--database", &database.url])
                .env("CRAWLQ__FETCH__STORE_BODY", "true")
                .env("CRAWLQ__CRAWL__OBEY_ROBOTS", "false")
                .output()
                .expect("crawlq runs");
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let (code, stdout, _) = run(&["migrate"]);
        assert_eq!(code, Some(0));
        assert!(
            stdout.starts_with("crawlq's tables created in database postgres://"),
            "{stdout}"
        );
        let (_, stdout, _) = run(&["migrate"]);
        assert!(stdout.ends_with("is up to date\n"), "{stdout}");
        let (code, stdout, stderr) = run(&["add", &site.url("/one"), "--select", "t=title"]);
        assert_eq!(
            (code, stdout.as_str(), stderr.as_str()),
            (Some(0), "1\n", "")
        );
        let (code, stdout, _) = run(&["status"]);
        assert_eq!(code, Some(0));
        assert!(stdout.contains("queued: 1"), "{stdout}");
        let (code, stdout, _) = run(&["healthcheck"]);
        assert_eq!(code, Some(1), "no daemon has run: {stdout}");
        let (code, _, stderr) = run(&["run", "--exit-when-idle"]);
        assert_eq!(code, Some(0), "{stderr}");
        let (code, stdout, _) = run(&["status", "--json"]);
        assert_eq!(code, Some(0));
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["jobs"]["done"], 1);
        let user = postgres::connect(&database.url).await;
        let (result_id, data): (i64, serde_json::Value) =
            sqlx::query_as("SELECT id, data FROM results WHERE job_id = 1")
                .fetch_one(&user)
                .await
                .unwrap();
        assert_eq!(data, serde_json::json!({"t": ["/one"]}));
        let (code, stdout, _) = run(&["body", &result_id.to_string()]);
        assert_eq!(code, Some(0));
        assert!(stdout.contains("<title>/one</title>"), "{stdout}");
        // A 304 row (as a recrawl stores it) has no body: the version it confirmed is shown.
        let confirming: i64 = sqlx::query_scalar(
            "INSERT INTO results (job_id, fetch_no, url, final_url, http_status, bytes,
                                  elapsed_ms, not_modified)
             SELECT job_id, 2, url, final_url, 304, 0, 1, 1 FROM results WHERE id = $1
             RETURNING id",
        )
        .bind(result_id)
        .fetch_one(&user)
        .await
        .unwrap();
        let (code, stdout, stderr) = run(&["body", &confirming.to_string()]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("<title>/one</title>"), "{stdout}");
        assert!(
            stderr.contains(&format!("the version it confirmed, result {result_id}")),
            "{stderr}"
        );
    });
}
