//! The built `crawlq` binary, run the way a user runs it: the README's three-line flow,
//! SIGTERM handling, the other subcommands and configuration errors. SIGTERM, `status` and
//! `healthcheck` are tested on both backends; PostgreSQL's own run of every subcommand is
//! in `postgres`; the rest is about files, flags and configuration.

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};
use crate::common::{
    self, crawlq, insert_job, job_row, on_both_backends, sigterm, spawn_daemon, stderr_of,
    user_connection, wait_for_database, wait_until, Backend, KillOnDrop, TempDb, DEADLINE,
};
use crawlq::runtime::{self, block_on};

on_both_backends!(
    sigterm_lets_in_flight_jobs_finish_and_requeues_the_rest,
    jobs_still_running_after_the_grace_period_go_back_to_the_queue,
    status_shows_host_queues_grouped_errors_and_workers_and_host_stats_agrees,
    healthcheck_follows_the_daemon_through_start_stop_and_death,
);

fn output(command: &mut Command) -> Output {
    command.output().expect("crawlq runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must be refused as bad configuration or usage (exit code 2) and
/// returns what it printed on stderr.
fn refused(command: &mut Command) -> String {
    let out = output(command);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// Waits for the process to exit, failing the test after `DEADLINE`.
async fn exit_status(child: &mut Child) -> ExitStatus {
    common::exit_within(child, DEADLINE, "crawlq").await
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
        let log = stderr_of(&mut daemon);
        assert!(status.success(), "{status:?}\n{log}");
        assert!(log.contains("crawlq started"), "{log}");
        assert!(
            !log.contains("\u{1b}["),
            "no colour codes when not on a terminal"
        );
    });
}

async fn sigterm_lets_in_flight_jobs_finish_and_requeues_the_rest(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html("<title>slow</title>").with_delay(Duration::from_millis(700))
    });
    let db = TempDb::on(backend).await;
    let mut daemon = crawlq(db.dir.path())
        .args(["run", "--database", &db.arg()])
        .env("CRAWLQ__LIMITS__PER_HOST_RPS", "1000")
        .env("CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT", "2")
        .env("CRAWLQ__DAEMON__SHUTDOWN_GRACE_SECS", "10")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sql = db.wait_for_daemon().await;
    for i in 0..6 {
        sql.insert(&server.url(&format!("/p{i}"))).await;
    }
    wait_until("two requests in flight", || async {
        server.page_hits().len() >= 2
    })
    .await;
    sigterm(&daemon);
    let status = exit_status(&mut daemon).await;
    assert!(status.success(), "exit status {status:?}");

    let statuses: Vec<(String, i64)> = sql
        .query("SELECT status, attempts FROM jobs ORDER BY id")
        .all()
        .await;
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
}

async fn jobs_still_running_after_the_grace_period_go_back_to_the_queue(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html("never in time").with_delay(Duration::from_secs(30))
    });
    let db = TempDb::on(backend).await;
    let mut daemon = crawlq(db.dir.path())
        .args(["run", "--database", &db.arg()])
        .env("CRAWLQ__DAEMON__SHUTDOWN_GRACE_SECS", "1")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sql = db.wait_for_daemon().await;
    let id = sql.insert(&server.url("/stuck")).await;
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
    let job = sql.job(id).await;
    assert_eq!(job.status, "queued");
    assert_eq!(job.attempts, 0, "the interrupted attempt is not counted");
    assert_eq!(job.lease_owner, None);
    // The stopped daemon's row says nothing is in flight: it went back to the queue.
    let (state, in_flight): (String, i64) = sql
        .query("SELECT state, in_flight FROM worker_status")
        .one()
        .await;
    assert_eq!((state.as_str(), in_flight), ("stopped", 0));
}

#[test]
fn sigterm_does_not_wait_for_a_job_cancelled_while_it_runs() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |req| match req.path.as_str() {
            "/robots.txt" => Reply::status(404),
            _ => Reply::html("far too late").with_delay(Duration::from_secs(120)),
        });
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        // A grace period far longer than the test's deadline: waiting it out fails the test.
        let mut daemon = KillOnDrop(
            crawlq(dir.path())
                .args(["run", "--database"])
                .arg(&db)
                .env("CRAWLQ__DAEMON__SHUTDOWN_GRACE_SECS", "60")
                .env("CRAWLQ__DAEMON__LEASE_SECS", "300")
                .env("CRAWLQ__FETCH__TIMEOUT_SECS", "300")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        let id = insert_job(&sql, &server.url("/slow")).await;
        wait_until("the request to arrive", || async {
            !server.page_hits().is_empty()
        })
        .await;
        sqlx::query("UPDATE jobs SET status = 'cancelled' WHERE id = ?1")
            .bind(id)
            .execute(&sql)
            .await
            .unwrap();
        let signalled = Instant::now();
        sigterm(&daemon.0);
        let status = exit_status(&mut daemon.0).await;
        let log = stderr_of(&mut daemon.0);
        assert!(status.success(), "{status:?}\n{log}");
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "took {:?} to stop\n{log}",
            signalled.elapsed()
        );
        assert!(log.contains("stopped an attempt"), "{log}");
        assert_eq!(job_row(&sql, id).await.status, "cancelled");
        assert!(common::UserSql::Sqlite(sql).result(id).await.is_none());
    });
}

#[test]
fn a_slow_database_and_a_refused_connection_are_each_one_line_of_our_own() {
    block_on(async {
        // A port nothing listens on: connections to it are refused.
        let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let mut daemon = KillOnDrop(
            crawlq(dir.path())
                .args(["run", "--database"])
                .arg(&db)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        let id: i64 =
            sqlx::query_scalar("INSERT INTO jobs (url, max_attempts) VALUES (?1, 1) RETURNING id")
                .bind(format!("http://127.0.0.1:{refused_port}/"))
                .fetch_one(&sql)
                .await
                .unwrap();
        wait_until("the job to fail", || {
            let sql = sql.clone();
            async move { job_row(&sql, id).await.status == "failed" }
        })
        .await;
        // A client holding the write lock makes the daemon's writes wait, twice.
        common::hold_write_lock(&db, Duration::from_millis(2500)).await;
        common::hold_write_lock(&db, Duration::from_millis(2500)).await;
        sigterm(&daemon.0);
        let status = exit_status(&mut daemon.0).await;
        let log = stderr_of(&mut daemon.0);
        assert!(status.success(), "{status:?}\n{log}");
        assert!(!log.contains("slow statement"), "{log}");
        assert!(
            !log.contains("SELECT") && !log.contains("UPDATE"),
            "no SQL in the log\n{log}"
        );
        assert_eq!(
            log.matches("the database took").count(),
            1,
            "one line, said once\n{log}"
        );
        assert!(
            !log.contains("request completed with error"),
            "the HTTP client's own warning\n{log}"
        );
        assert!(
            log.contains("could not connect to 127.0.0.1: connection refused"),
            "{log}"
        );
    });
}

#[test]
fn add_status_and_migrate_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(crawlq(dir.path()).args(["migrate", "--database", "x.db"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("x.db").exists());
    assert_eq!(
        text(&out.stdout),
        "database x.db created, with every migration applied\n"
    );
    let out = output(crawlq(dir.path()).args(["migrate", "--database", "x.db"]));
    assert_eq!(text(&out.stdout), "database x.db is up to date\n");
    // A URL crawlq does not know is refused, not taken for a file path.
    let stderr = refused(crawlq(dir.path()).args(["migrate", "--database", "mysql://u:pw@h/db"]));
    assert!(stderr.contains("its scheme is not known"), "{stderr}");
    assert!(stderr.contains("mysql://u:***@h/db"), "{stderr}");
    assert!(!stderr.contains(":pw@"), "{stderr}");
    assert!(!dir.path().join("mysql:").exists());
    // A PostgreSQL server that is not there is reported as such, password masked, and
    // nothing is created in its name.
    let out = output(crawlq(dir.path()).args([
        "migrate",
        "--database",
        "postgres://u:pw@127.0.0.1:1/db",
    ]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a runtime failure: {stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(
        stderr.contains("postgres://u:***@127.0.0.1:1/db"),
        "{stderr}"
    );
    assert!(!stderr.contains(":pw@"), "{stderr}");
    assert!(!dir.path().join("postgres:").exists());

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
    assert_eq!(text(&out.stderr), "", "x.db existed: nothing to say");
    // A path that does not exist (a typo?) is created, and `add` says so.
    let out = output(crawlq(dir.path()).args(["add", "--database", "typo.db", "http://a.test/"]));
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("created a new database at typo.db (it did not exist)"),
        "{}",
        text(&out.stderr)
    );

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

    let stderr = refused(crawlq(dir.path()).args(["add", "--database", "x.db", "ftp://nope/"]));
    assert!(
        stderr.contains("unsupported URL scheme \"ftp\""),
        "{stderr}"
    );
    // Bad selectors are refused before anything is inserted, saying what is wrong.
    let add_selecting = |select: &str| {
        refused(crawlq(dir.path()).args([
            "add",
            "--database",
            "x.db",
            "http://a.test/",
            "--select",
            select,
        ]))
    };
    let stderr = add_selecting("=h1");
    assert!(
        stderr.contains("--select \"=h1\": the name before '=' is empty"),
        "{stderr}"
    );
    let stderr = add_selecting("price=span..price");
    assert!(
        stderr.contains(
            "selector \"price\" = \"span..price\": invalid CSS: '.' must be followed by a class name"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let out = output(crawlq(dir.path()).args(["status", "--database", "x.db"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("queued: 2"), "{stdout}");
    assert!(stdout.contains("done: 0"), "{stdout}");
    assert!(
        stdout.contains("pages fetched: 0 in the last minute (0/min now), 0 in the last hour"),
        "{stdout}"
    );
    assert!(
        stdout.contains("workers: no daemon has run on this database"),
        "{stdout}"
    );
}

#[test]
fn a_database_path_through_a_file_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes"), "a file, not a directory").unwrap();
    let stderr = refused(crawlq(dir.path()).args(["run", "--database", "notes/q.db"]));
    assert!(
        stderr.contains(
            "`database.url` = \"notes/q.db\" (set by --database): cannot create database \
             notes/q.db: its parent notes is a file, not a directory"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("lock"), "{stderr}");
    let stderr = refused(
        crawlq(dir.path())
            .args(["add", "http://127.0.0.1/"])
            .env("CRAWLQ__DATABASE__URL", "notes/deeper/q.db"),
    );
    assert!(
        stderr.contains("(set by environment variable CRAWLQ__DATABASE__URL)")
            && stderr.contains("notes, on its path, is a file, not a directory"),
        "{stderr}"
    );
}

#[test]
fn per_host_overrides_can_come_from_one_json_environment_variable() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            "[limits.hosts.\"a.example\"]\nrps = 0.5\n",
        )
        .unwrap();
        let hosts = r#"{"b.example": {"rps": 0.2, "in_flight": 1}, "c.example.com": {"burst": 3}}"#;
        let mut daemon = KillOnDrop(
            crawlq(dir.path())
                .args(["run", "--database", "q.db", "--config", "c.toml"])
                .env("CRAWLQ__LIMITS__HOSTS", hosts)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        wait_for_database(&dir.path().join("q.db")).await;
        sigterm(&daemon.0);
        let status = exit_status(&mut daemon.0).await;
        let log = stderr_of(&mut daemon.0);
        assert!(status.success(), "{status:?}\n{log}");
        assert!(
            log.contains("host_overrides=3"),
            "the file's host and the variable's two\n{log}"
        );

        let stderr = refused(
            crawlq(dir.path())
                .args(["run", "--database", "q.db"])
                .env("CRAWLQ__LIMITS__HOSTS", r#"{"b.example": {"burst": 0}}"#),
        );
        assert!(
            stderr.contains(
                "`limits.hosts.\"b.example\".burst` = 0 (set by environment variable CRAWLQ__LIMITS__HOSTS)"
            ),
            "{stderr}"
        );
        let stderr = refused(
            crawlq(dir.path())
                .args(["run", "--database", "q.db"])
                .env("CRAWLQ__LIMITS__HOSTS", "b.example=2"),
        );
        assert!(
            stderr
                .contains("CRAWLQ__LIMITS__HOSTS must be a JSON object of host name to overrides"),
            "{stderr}"
        );
        let stderr = refused(
            crawlq(dir.path())
                .args(["run", "--database", "q.db"])
                .env("CRAWLQ__LIMITS__HOSTS", r#"{"b.example": 5}"#),
        );
        assert!(
            stderr.contains(r#"the overrides of host "b.example" must be a JSON object"#)
                && !stderr.contains("RawHostLimits"),
            "{stderr}"
        );
    });
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_key_the_value_and_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut command = crawlq(dir.path());
        command.arg("run");
        command
    };
    let stderr = refused(run().env("CRAWLQ__LIMITS__PER_HOST_RPS", "-2"));
    assert!(
        stderr.contains(
            "`limits.per_host_rps` = -2 (set by environment variable CRAWLQ__LIMITS__PER_HOST_RPS)"
        ),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing touched before the config is valid"
    );

    let stderr = refused(run().env("CRAWLQ__LIMITS__PER_HOST_RPS", "fast"));
    assert!(stderr.contains("per_host_rps"), "{stderr}");

    std::fs::write(dir.path().join("c.toml"), "[fetch]\ntimeout_sec = 3\n").unwrap();
    let stderr = refused(run().args(["--config", "c.toml"]));
    assert!(
        stderr.contains("timeout_sec") && stderr.contains("c.toml"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("hosts.toml"),
        "[limits.hosts.\"Example.com\"]\nburst = 0\n",
    )
    .unwrap();
    let stderr = refused(run().args(["--config", "hosts.toml"]));
    assert!(
        stderr.contains("`limits.hosts.\"Example.com\".burst` = 0 (set by --config hosts.toml)"),
        "{stderr}"
    );

    let stderr = refused(run().env("CRAWLQ__DAEMON__LEASE_SECS", "10"));
    assert!(
        stderr.contains("`daemon.shutdown_grace_secs` = 8 (set by the built-in config/default.toml; `daemon.lease_secs` set by environment variable CRAWLQ__DAEMON__LEASE_SECS)"),
        "a value checked against another names both layers: {stderr}"
    );

    let stderr = refused(run().args(["--database", "sqlite::memory:"]));
    assert!(stderr.contains("(set by --database)"), "{stderr}");
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
fn body_of_a_304_prints_the_version_it_confirmed() {
    let page = "<!doctype html><title>v1</title>\n".repeat(20);
    let served = page.clone();
    let server = TestServer::start("127.0.0.1", move |request| {
        if request.header("If-None-Match") == Some("\"v1\"") {
            return Reply::status(304).with_header("ETag", "\"v1\"");
        }
        Reply::html(served.clone()).with_header("ETag", "\"v1\"")
    });
    let dir = tempfile::tempdir().unwrap();
    // The same URL twice, one after the other: the second fetch is conditional.
    for _ in 0..2 {
        let out = output(crawlq(dir.path()).args(["add", "--database", "q.db", &server.url("/p")]));
        assert!(out.status.success());
        let out = output(
            crawlq(dir.path())
                .args(["run", "--database", "q.db", "--exit-when-idle"])
                .env("CRAWLQ__FETCH__STORE_BODY", "true"),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = output(crawlq(dir.path()).args(["--database", "q.db", "status"]));
    assert!(
        text(&out.stdout).contains("done: 2"),
        "{}",
        text(&out.stdout)
    );
    let out = output(crawlq(dir.path()).args(["body", "--database", "q.db", "2"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        page,
        "the confirmed version's body, alone on stdout"
    );
    assert!(
        text(&out.stderr).contains("result 2 is a 304 Not Modified, which stores no body: printing the version it confirmed, result 1"),
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
    let started = message("crawlq started");
    assert!(started["per_host_rps"].is_number());
    assert_eq!(started["database"], "q.db");
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"));
    let config = started["config"].as_str().unwrap();
    assert!(
        config.contains("default.toml")
            && config.contains("CRAWLQ__LOG__FORMAT")
            && config.contains("--database"),
        "the start-up line names every layer: {config}"
    );
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

async fn healthcheck_follows_the_daemon_through_start_stop_and_death(backend: Backend) {
    let db = TempDb::on(backend).await;
    let healthcheck = || {
        output(
            crawlq(db.dir.path())
                .args(["healthcheck", "--database", &db.arg()])
                .env("CRAWLQ__DAEMON__HEARTBEAT_SECS", "0.2"),
        )
    };
    let out = healthcheck();
    assert_eq!(out.status.code(), Some(1));
    // A read-only command creates no database (no SQLite file; no tables in the empty
    // PostgreSQL database).
    match backend {
        Backend::Sqlite => {
            assert!(
                text(&out.stderr).contains(&format!("database {} does not exist", db.arg())),
                "{}",
                text(&out.stderr)
            );
            assert!(!db.path.exists());
        }
        Backend::Postgres => {
            let tables = db
                .user()
                .await
                .int("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'jobs'")
                .await;
            assert_eq!(tables, 0, "{}", text(&out.stderr));
        }
    }
    let migrate = output(crawlq(db.dir.path()).args(["migrate", "--database", &db.arg()]));
    assert!(migrate.status.success());
    let out = healthcheck();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no crawlq daemon has run"),
        "{}",
        text(&out.stderr)
    );

    let start = || {
        crawlq(db.dir.path())
            .args(["run", "--database", &db.arg()])
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
    let states: Vec<(String,)> = db
        .user()
        .await
        .query("SELECT state FROM worker_status ORDER BY started_at")
        .all()
        .await;
    assert_eq!(states, [("stopped".into(),), ("stale".into(),)]);
}

/// `crawlq status` on `db`.
fn status(db: &TempDb) -> Command {
    let mut command = crawlq(db.dir.path());
    command.args(["status", "--database", &db.arg()]);
    command
}

/// Runs `crawlq status --json` on `db` and parses what it prints.
fn status_json(db: &TempDb) -> serde_json::Value {
    let out = output(status(db).arg("--json"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&out.stdout)))
}

async fn status_shows_host_queues_grouped_errors_and_workers_and_host_stats_agrees(
    backend: Backend,
) {
    let site = TestServer::start("127.0.0.1", |req| match req.path.as_str() {
        "/missing/1" | "/missing/2" => Reply::status(404),
        "/boom" => Reply::status(500),
        _ => Reply::html("<title>ok</title>"),
    });
    // A host that asks for an hour's pause: its jobs stay queued behind it.
    let busy = TestServer::start("127.0.0.2", |req| match req.path.as_str() {
        "/robots.txt" => Reply::status(404),
        _ => Reply::status(503).with_header("Retry-After", "3600"),
    });
    let db = TempDb::on(backend).await;
    let mut daemon = KillOnDrop(
        crawlq(db.dir.path())
            .args(["run", "--database", &db.arg()])
            .env("CRAWLQ__DAEMON__HEARTBEAT_SECS", "0.2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sql = db.wait_for_daemon().await;
    for path in ["/ok/1", "/ok/2", "/missing/1", "/missing/2"] {
        sql.insert(&site.url(path)).await;
    }
    sql.insert("not a url").await;
    sql.query("INSERT INTO jobs (url, max_attempts) VALUES ($1, 1)")
        .bind(site.url("/boom"))
        .execute()
        .await;
    // A daemon that stopped two days ago is history, not status.
    sql.execute(
        "INSERT INTO workers (id, hostname, pid, version, started_at, heartbeat_at,
                              heartbeat_every_secs, stopped_at)
         VALUES ('crawlq-1-old', 'elsewhere', 1, '0.0.1', '2026-01-01T00:00:00.000Z',
                 '2026-01-02T00:00:00.000Z', 5, '2026-01-02T00:00:00.000Z')",
    )
    .await;
    let busy_first = sql.insert(&busy.url("/first")).await;
    wait_until("the busy host's pause", || async {
        sql.job(busy_first).await.error.is_some()
    })
    .await;
    sql.insert(&busy.url("/second")).await;

    // Every job has settled, and the counters have reached the workers row with a
    // heartbeat.
    let settled = |report: &serde_json::Value| {
        report["workers"][0]["done"] == 2
            && report["workers"][0]["failed"] == 4
            && report["jobs"]["queued"] == 2
            && report["jobs"]["running"] == 0
    };
    let mut report = status_json(&db);
    let started = Instant::now();
    while !settled(&report) {
        assert!(
            started.elapsed() < DEADLINE,
            "status never settled: {report:#}"
        );
        runtime::sleep(Duration::from_millis(50)).await;
        report = status_json(&db);
    }
    assert_eq!(report["jobs"]["done"], 2, "{report:#}");
    assert_eq!(report["jobs"]["failed"], 4, "{report:#}");
    let fetches = sql.int("SELECT COUNT(*) FROM results").await;
    assert!(
        fetches >= 5,
        "2 pages, 2 not found, 1 server error: {fetches}"
    );
    assert_eq!(report["fetched_last_minute"], fetches, "{report:#}");
    assert_eq!(report["fetched_last_hour"], fetches, "{report:#}");
    // One fetch half an hour ago, one two hours ago.
    for (id, age) in [(1, -30 * 60), (2, -2 * 3600)] {
        sql.query(format!(
            "UPDATE results SET fetched_at = {} WHERE id = $1",
            sql.seconds_from_now(age)
        ))
        .bind(id)
        .execute()
        .await;
    }
    let windows = status_json(&db);
    assert_eq!(windows["fetched_last_minute"], fetches - 2, "{windows:#}");
    assert_eq!(windows["fetched_last_hour"], fetches - 1, "{windows:#}");
    let database = report["database"].as_str().unwrap();
    match backend {
        Backend::Sqlite => assert_eq!(database, db.arg()),
        Backend::Postgres => assert!(database.starts_with("postgres://"), "{database}"),
    }

    let hosts = report["top_hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "only the busy host has a queue: {report:#}");
    assert_eq!(hosts[0]["host"], "127.0.0.2");
    assert_eq!(hosts[0]["queued"], 2);
    assert_eq!(hosts[0]["due"], 1, "the retry waits out the pause");
    assert!(hosts[0]["paused_until"].is_string(), "{report:#}");
    assert!(
        hosts[0]["pause_reason"].as_str().unwrap().contains("503"),
        "{report:#}"
    );

    let errors = report["recent_errors"].as_array().unwrap();
    let group = |status: &str, prefix: &str| {
        errors
            .iter()
            .find(|g| g["status"] == status && g["reason"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {status} group {prefix:?}: {report:#}"))
            .clone()
    };
    assert_eq!(group("failed", "HTTP 404")["jobs"], 2);
    assert_eq!(group("failed", "invalid URL")["jobs"], 1);
    let gave_up = group("failed", "HTTP 500");
    assert_eq!(
        gave_up["reason"], "HTTP 500 Internal Server Error",
        "the attempt count is cut off"
    );
    let retrying = group("queued", "HTTP 503");
    assert_eq!(retrying["jobs"], 1);
    assert!(
        !retrying["reason"].as_str().unwrap().contains("attempt"),
        "retry bookkeeping is cut off: {retrying}"
    );
    assert_eq!(errors.len(), 4, "{report:#}");
    assert_eq!(
        report["workers"].as_array().unwrap().len(),
        1,
        "only the daemon of today: {report:#}"
    );

    let worker = &report["workers"][0];
    assert_eq!(worker["state"], "running");
    assert_eq!(worker["pid"], daemon.0.id());

    let out = output(&mut status(&db));
    let human = text(&out.stdout);
    for expected in [
        "queued: 2",
        "127.0.0.2",
        "HTTP 404 Not Found",
        "retrying",
        "running, heartbeat",
    ] {
        assert!(
            human.contains(expected),
            "{expected:?} missing from:\n{human}"
        );
    }

    // The same picture per host, with plain SQL.
    type HostStatsRow = (
        String,
        i64,
        i64,
        i64,
        Option<f64>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<HostStatsRow> = sql
        .query(
            "SELECT host, queued, done, failed, error_rate, CAST(paused_until AS TEXT), robots
               FROM host_stats ORDER BY host",
        )
        .all()
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (host, queued, done, failed, error_rate, paused, robots) = &rows[0];
    assert_eq!(host, "127.0.0.1");
    assert_eq!((*queued, *done, *failed), (0, 2, 3));
    assert_eq!(*error_rate, Some(0.6));
    assert_eq!(*paused, None);
    assert_eq!(
        robots.as_deref(),
        Some("rules"),
        "the test server answers 200"
    );
    let (host, queued, done, _, error_rate, paused, robots) = &rows[1];
    assert_eq!(host, "127.0.0.2");
    assert_eq!((*queued, *done), (2, 0));
    assert_eq!(*error_rate, None, "nothing finished yet");
    assert!(paused.is_some());
    assert_eq!(robots.as_deref(), Some("allow all"), "a 404 robots.txt");
    // The newest answer of any origin of the host counts: here one without a port.
    sql.execute(
        "INSERT INTO robots (origin, http_status, fetched_at, expires_at)
         VALUES ('https://127.0.0.2', 503, '2999-01-01T00:00:00.000Z', '2999-01-02T00:00:00.000Z')",
    )
    .await;
    let robots: Vec<(String, Option<String>)> = sql
        .query("SELECT host, robots FROM host_stats ORDER BY host")
        .all()
        .await;
    assert_eq!(
        robots,
        vec![
            ("127.0.0.1".to_owned(), Some("rules".to_owned())),
            ("127.0.0.2".to_owned(), Some("unreachable".to_owned())),
        ]
    );

    sigterm(&daemon.0);
    assert!(exit_status(&mut daemon.0).await.success());
    let report = status_json(&db);
    assert_eq!(report["workers"][0]["state"], "stopped", "{report:#}");
    assert_eq!(report["jobs"]["running"], 0);
}

#[test]
fn a_second_daemon_on_the_same_database_refuses_to_start_but_a_restart_after_a_kill_does_not() {
    block_on(async {
        let server = TestServer::pages("127.0.0.1");
        let dir = tempfile::tempdir().unwrap();
        let start = || spawn_daemon(dir.path(), Stdio::null());
        let mut first = start();
        let db = dir.path().join("data/crawlq.db");
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        common::wait_for_workers(&sql, 1).await;

        let mut second = spawn_daemon(dir.path(), Stdio::piped());
        let status = exit_status(&mut second.0).await;
        let stderr = stderr_of(&mut second.0);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("is in use by another running daemon")
                && stderr.contains(&format!("(pid {} on ", first.0.id()))
                && stderr.contains("data/crawlq.db.lock"),
            "{stderr}"
        );

        let job = insert_job(&sql, &server.url("/while-refused")).await;
        wait_until("the first daemon to crawl the job", || {
            let sql = sql.clone();
            async move { job_row(&sql, job).await.status == "done" }
        })
        .await;

        // kill -9 leaves a row that still looks alive; its pid is gone, so a restart on
        // this host goes ahead at once.
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        let mut restarted = start();
        let job = insert_job(&sql, &server.url("/after-restart")).await;
        wait_until("the restarted daemon to crawl the job", || {
            let sql = sql.clone();
            async move { job_row(&sql, job).await.status == "done" }
        })
        .await;
        let workers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workers")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(workers, 2, "the refused daemon left no row");
        sigterm(&restarted.0);
        assert!(exit_status(&mut restarted.0).await.success());
    });
}

#[test]
fn of_two_daemons_started_at_once_on_a_new_database_exactly_one_runs() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let start = || spawn_daemon(dir.path(), Stdio::piped());
        let (mut a, mut b) = (start(), start());
        // One of them exits at once, refused, before touching the database.
        let started = Instant::now();
        let loser = loop {
            assert!(started.elapsed() < DEADLINE, "both daemons kept running");
            if a.0.try_wait().unwrap().is_some() {
                break &mut a;
            }
            if b.0.try_wait().unwrap().is_some() {
                break &mut b;
            }
            runtime::sleep(Duration::from_millis(10)).await;
        };
        let status = exit_status(&mut loser.0).await;
        let stderr = stderr_of(&mut loser.0);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("is in use by another running daemon"),
            "{stderr}"
        );
        let running = if a.0.try_wait().unwrap().is_none() {
            &mut a
        } else {
            &mut b
        };
        let db = dir.path().join("data/crawlq.db");
        wait_for_database(&db).await;
        sigterm(&running.0);
        assert!(exit_status(&mut running.0).await.success());
    });
}

#[test]
fn a_password_in_a_job_url_is_sent_as_basic_auth_but_never_logged() {
    let server = TestServer::start("127.0.0.1", |req| match req.path.as_str() {
        "/private" => Reply::html("<title>members</title>"),
        _ => Reply::status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let with_password = |path: &str| format!("http://ann:s3cret@{}{path}", server.addr());
    let out = output(crawlq(dir.path()).args([
        "add",
        "--database",
        "q.db",
        &with_password("/private"),
        &with_password("/missing"),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = output(
        crawlq(dir.path())
            .args(["run", "--database", "q.db", "--exit-when-idle"])
            .env("CRAWLQ__LOG__FORMAT", "json")
            .env("RUST_LOG", "crawlq=debug"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("ann:***@127.0.0.1"), "{log}");
    assert!(
        !log.contains("s3cret"),
        "the password reached the log:\n{log}"
    );
    // "YW5uOnMzY3JldA==" is base64("ann:s3cret").
    let page = &server.hits_for("/private")[0];
    assert_eq!(page.header("authorization"), Some("Basic YW5uOnMzY3JldA=="));
}
