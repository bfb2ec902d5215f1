//! The built `crawlq` binary, run the way a user runs it: the README's three-line flow,
//! SIGTERM handling, the other subcommands and configuration errors.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::server::{Reply, TestServer};
use common::{insert_job, job_row, user_connection, wait_until, DEADLINE};
use crawlq::runtime::{self, block_on};

fn crawlq(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crawlq"));
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("CRAWLQ__DAEMON__POLL_INTERVAL_MS", "20")
        .env("CRAWLQ__RETRY__BACKOFF_INITIAL_MS", "50")
        .stdin(Stdio::null());
    command
}

fn output(command: &mut Command) -> Output {
    command.output().expect("crawlq runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the process to exit, failing the test after `DEADLINE`.
async fn exit_status(child: &mut Child) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("crawlq did not exit within {DEADLINE:?}");
        }
        runtime::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the daemon has created the database at `path` and applied every migration.
async fn wait_for_database(path: &Path) {
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    wait_until("the daemon to create and migrate the database", || async {
        if !path.exists() {
            return false;
        }
        let sql = user_connection(path).await;
        let migrated =
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&sql)
                .await
                .is_ok_and(|n| n == migrations);
        sql.close().await;
        migrated
    })
    .await;
}

#[test]
fn the_readme_flow_works_on_a_fresh_directory() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |_| {
            Reply::html("<title>Page A</title><p>hello</p>")
        });
        let dir = tempfile::tempdir().unwrap();
        // cargo run --release -- run &   (no flags: the default database path)
        let mut daemon = crawlq(dir.path())
            .arg("run")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let db = dir.path().join("data/crawlq.db");
        wait_for_database(&db).await;

        // sqlite3 data/crawlq.db "INSERT INTO jobs (url) VALUES ('…/a.html')"
        let sql = user_connection(&db).await;
        insert_job(&sql, &server.url("/a.html")).await;

        // sqlite3 data/crawlq.db "SELECT j.status, r.http_status, r.title FROM jobs j JOIN …"
        let query =
            "SELECT j.status, r.http_status, r.title FROM jobs j JOIN latest_results r ON r.job_id = j.id";
        wait_until("the job's result", || {
            let sql = sql.clone();
            async move {
                sqlx::query_as::<_, (String, i64, String)>(query)
                    .fetch_optional(&sql)
                    .await
                    .unwrap()
                    .is_some()
            }
        })
        .await;
        let row: (String, i64, String) = sqlx::query_as(query).fetch_one(&sql).await.unwrap();
        assert_eq!(row, ("done".to_owned(), 200, "Page A".to_owned()));

        sigterm(&daemon);
        let status = exit_status(&mut daemon).await;
        let mut log = String::new();
        std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert!(status.success(), "{status:?}\n{log}");
        assert!(log.contains("crawlq started"), "{log}");
        assert!(
            !log.contains("\u{1b}["),
            "no colour codes when not on a terminal"
        );
    });
}

#[test]
fn sigterm_lets_in_flight_jobs_finish_and_requeues_the_rest() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |_| {
            Reply::html("<title>slow</title>").with_delay(Duration::from_millis(700))
        });
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let mut daemon = crawlq(dir.path())
            .args(["run", "--database"])
            .arg(&db)
            .env("CRAWLQ__LIMITS__PER_HOST_RPS", "1000")
            .env("CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT", "2")
            .env("CRAWLQ__DAEMON__SHUTDOWN_GRACE_SECS", "10")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        for i in 0..6 {
            insert_job(&sql, &server.url(&format!("/p{i}"))).await;
        }
        wait_until("two requests in flight", || async {
            server.page_hits().len() >= 2
        })
        .await;
        sigterm(&daemon);
        let status = exit_status(&mut daemon).await;
        assert!(status.success(), "exit status {status:?}");

        let statuses: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, attempts FROM jobs ORDER BY id")
                .fetch_all(&sql)
                .await
                .unwrap();
        let done = statuses.iter().filter(|(s, _)| s == "done").count();
        let queued: Vec<_> = statuses.iter().filter(|(s, _)| s == "queued").collect();
        assert_eq!(
            done,
            server.page_hits().len(),
            "every request that started finished: {statuses:?}"
        );
        assert_eq!(done + queued.len(), 6, "{statuses:?}");
        assert!(
            queued.iter().all(|(_, attempts)| *attempts == 0),
            "{statuses:?}"
        );
    });
}

#[test]
fn jobs_still_running_after_the_grace_period_go_back_to_the_queue() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |_| {
            Reply::html("never in time").with_delay(Duration::from_secs(30))
        });
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let mut daemon = crawlq(dir.path())
            .args(["run", "--database"])
            .arg(&db)
            .env("CRAWLQ__DAEMON__SHUTDOWN_GRACE_SECS", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        let id = insert_job(&sql, &server.url("/stuck")).await;
        wait_until("the request to arrive", || async {
            !server.hits().is_empty()
        })
        .await;
        let signalled = Instant::now();
        sigterm(&daemon);
        let status = exit_status(&mut daemon).await;
        assert!(status.success(), "{status:?}");
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "{:?}",
            signalled.elapsed()
        );
        let job = job_row(&sql, id).await;
        assert_eq!(job.status, "queued");
        assert_eq!(job.attempts, 0, "the interrupted attempt is not counted");
        assert_eq!(job.lease_owner, None);
    });
}

#[test]
fn add_status_and_migrate_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(crawlq(dir.path()).args(["migrate", "--database", "x.db"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("x.db").exists());

    let out = output(crawlq(dir.path()).args([
        "add",
        "--database",
        "x.db",
        "http://127.0.0.1:1/a",
        "http://127.0.0.1:1/b",
        "--priority",
        "-3",
        "--select",
        "price=span.price",
        "--select",
        "img=img@src",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n");

    block_on(async {
        let sql = user_connection(&dir.path().join("x.db")).await;
        let (priority, selectors): (i64, String) =
            sqlx::query_as("SELECT priority, selectors FROM jobs WHERE id = 2")
                .fetch_one(&sql)
                .await
                .unwrap();
        assert_eq!(priority, -3);
        let selectors: serde_json::Value = serde_json::from_str(&selectors).unwrap();
        assert_eq!(
            selectors,
            serde_json::json!({"price": "span.price", "img": "img@src"})
        );
    });

    let out = output(crawlq(dir.path()).args(["add", "--database", "x.db", "ftp://nope/"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unsupported URL scheme \"ftp\""));

    let out = output(crawlq(dir.path()).args(["status", "--database", "x.db"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("queued: 2"), "{stdout}");
    assert!(stdout.contains("done: 0"), "{stdout}");
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        crawlq(dir.path())
            .arg("run")
            .env("CRAWLQ__LIMITS__PER_HOST_RPS", "-2"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("limits.per_host_rps") && stderr.contains("-2"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing touched before the config is valid"
    );

    let out = output(
        crawlq(dir.path())
            .arg("run")
            .env("CRAWLQ__LIMITS__PER_HOST_RPS", "fast"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("per_host_rps"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(dir.path().join("c.toml"), "[fetch]\ntimeout_sec = 3\n").unwrap();
    let out = output(crawlq(dir.path()).args(["run", "--config", "c.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("timeout_sec"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exit_when_idle_returns_once_the_queue_is_empty() {
    let server = TestServer::pages("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let out = output(crawlq(dir.path()).args([
        "add",
        "--database",
        "q.db",
        &server.url("/1"),
        &server.url("/2"),
    ]));
    assert!(out.status.success());
    let out = output(
        crawlq(dir.path())
            .args(["run", "--database", "q.db", "--exit-when-idle"])
            .env("CRAWLQ__LIMITS__PER_HOST_RPS", "100"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.page_hits().len(), 2);
    assert_eq!(
        server.hits_for("/robots.txt").len(),
        1,
        "robots.txt is on by default"
    );
    let out = output(crawlq(dir.path()).args(["status", "--database", "q.db"]));
    assert!(
        text(&out.stdout).contains("done: 2"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn body_prints_a_stored_page_exactly_as_fetched() {
    let page = "<!doctype html><title>caf\u{e9}</title>\n".repeat(50);
    let served = page.clone();
    let server = TestServer::start("127.0.0.1", move |_| Reply::html(served.clone()));
    let dir = tempfile::tempdir().unwrap();
    let out = output(crawlq(dir.path()).args(["add", "--database", "q.db", &server.url("/p")]));
    assert!(out.status.success());
    let out = output(
        crawlq(dir.path())
            .args(["run", "--database", "q.db", "--exit-when-idle"])
            .env("CRAWLQ__FETCH__STORE_BODY", "true"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = output(crawlq(dir.path()).args(["body", "--database", "q.db", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), page);

    let out = output(crawlq(dir.path()).args(["body", "--database", "q.db", "99"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("result 99 has no stored body"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_logs_carry_stats_and_each_job_step() {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html("<title>t</title>").with_delay(Duration::from_millis(1300))
    });
    let dir = tempfile::tempdir().unwrap();
    let out = output(crawlq(dir.path()).args(["add", "--database", "q.db", &server.url("/x")]));
    assert!(out.status.success());
    let out = output(
        crawlq(dir.path())
            .args(["run", "--database", "q.db", "--exit-when-idle"])
            .env("CRAWLQ__LOG__FORMAT", "json")
            .env("CRAWLQ__DAEMON__STATS_INTERVAL_SECS", "1")
            .env("RUST_LOG", "crawlq=debug"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let message = |m: &str| {
        lines
            .iter()
            .find(|l| l["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} line in {lines:#?}"))
    };
    assert_eq!(message("stats")["queued"], 0);
    assert_eq!(message("stats")["running"], 1);
    assert!(message("crawlq started")["per_host_rps"].is_number());
    // claim -> wait -> fetch -> parse -> store, all inside the job's span.
    assert_eq!(message("claimed")["span"]["job.id"], "1");
    for stage in ["rate_limit_wait", "fetch", "parse"] {
        assert!(
            lines
                .iter()
                .any(|l| l["span"]["name"] == stage && l["spans"][0]["name"] == "job"),
            "no {stage} span inside a job span"
        );
    }
    assert!(lines.iter().any(|l| l["message"] == "stored: done"));
}

#[test]
fn healthcheck_follows_the_daemon_through_start_stop_and_death() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let healthcheck = || {
            output(
                crawlq(dir.path())
                    .args(["healthcheck", "--database", "q.db"])
                    .env("CRAWLQ__DAEMON__HEARTBEAT_SECS", "0.2"),
            )
        };
        let out = healthcheck();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("no crawlq daemon has run"),
            "{}",
            text(&out.stderr)
        );

        let start = || {
            crawlq(dir.path())
                .args(["run", "--database", "q.db"])
                .env("CRAWLQ__DAEMON__HEARTBEAT_SECS", "0.2")
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut daemon = start();
        wait_until("the healthcheck to pass", || async {
            healthcheck().status.success()
        })
        .await;
        let out = healthcheck();
        assert!(
            text(&out.stdout).contains(&format!("(pid {})", daemon.id())),
            "{}",
            text(&out.stdout)
        );
        sigterm(&daemon);
        assert!(exit_status(&mut daemon).await.success());
        let out = healthcheck();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("has stopped"),
            "{}",
            text(&out.stderr)
        );

        // kill -9: no clean exit, so the row goes stale after three heartbeats.
        let mut daemon = start();
        wait_until("the new daemon to be healthy", || async {
            healthcheck().status.success()
        })
        .await;
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        wait_until("the healthcheck to notice the dead daemon", || async {
            let out = healthcheck();
            out.status.code() == Some(1) && text(&out.stderr).contains("last wrote its heartbeat")
        })
        .await;
        let sql = user_connection(&dir.path().join("q.db")).await;
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM worker_status ORDER BY started_at")
                .fetch_all(&sql)
                .await
                .unwrap();
        assert_eq!(states, ["stopped", "stale"]);
    });
}
