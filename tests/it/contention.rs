//! Outside writers and readers while the daemon crawls at full speed: the sqlite3 shell
//! inserting jobs one statement at a time and another one running SELECTs in a loop, with
//! the settings the README documents (WAL, a busy timeout on every side). Neither side may
//! see `database is locked`, and every inserted job is crawled.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::TestServer;
use crate::common::{
    exit_within, size_from_env, user_connection, wait_for_workers, wait_until, KillOnDrop, DEADLINE,
};
use crawlq::runtime::{self, block_on};

/// The sqlite3 shell as the README tells users to run it, reading statements from stdin.
fn sqlite3_shell(db: &Path, statements: String, log: &Path) -> Child {
    let mut child = Command::new("sqlite3")
        .args(["-cmd", ".timeout 30000"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the sqlite3 shell runs (Debian package sqlite3; .ci/run installs it)");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(statements.as_bytes()));
    child
}

async fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    exit_within(child, Duration::from_secs(180), what).await
}

#[test]
fn a_sqlite3_writer_and_reader_beside_a_full_speed_crawl_see_no_busy_errors() {
    block_on(async {
        let inserts = size_from_env("CONTENTION_INSERTS", 2_000);
        let preload = 1_000;
        let hosts = [
            TestServer::pages("127.0.0.1"),
            TestServer::pages("127.0.0.2"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crawlq.db");
        let daemon_log = dir.path().join("daemon.log");
        let mut daemon = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_crawlq"))
                .current_dir(dir.path())
                .args(["run", "--database", "crawlq.db"])
                .env_remove("RUST_LOG")
                .env("CRAWLQ__LOG__FORMAT", "json")
                .env("CRAWLQ__LIMITS__PER_HOST_RPS", "1000000")
                .env("CRAWLQ__LIMITS__PER_HOST_BURST", "16")
                .env("CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT", "32")
                .env("CRAWLQ__CRAWL__OBEY_ROBOTS", "false")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&daemon_log).unwrap())
                .spawn()
                .unwrap(),
        );

        wait_until("the daemon to create the database", || async {
            db.exists()
        })
        .await;
        let sql = user_connection(&db).await;
        wait_for_workers(&sql, 1).await;
        // A backlog first, so that the daemon is at full speed when the shells start.
        let mut tx = sql.begin().await.unwrap();
        for i in 0..preload {
            sqlx::query("INSERT INTO jobs (url) VALUES (?1)")
                .bind(hosts[i % 2].url(&format!("/preload/{i}")))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();

        let mut writes = String::new();
        for i in 0..inserts {
            let url = hosts[i % 2].url(&format!("/inserted/{i}"));
            writeln!(writes, "INSERT INTO jobs (url) VALUES ('{url}');").unwrap();
        }
        let reads = "SELECT status, COUNT(*) FROM jobs GROUP BY status;\n\
                     SELECT COUNT(*) FROM latest_results;\n"
            .repeat(inserts);
        let started = Instant::now();
        let writer_log = dir.path().join("writer.err");
        let reader_log = dir.path().join("reader.err");
        let mut writer = sqlite3_shell(&db, writes, &writer_log);
        let mut reader = sqlite3_shell(&db, reads, &reader_log);
        // While the shell writes, the daemon must have backlog jobs to claim or store, which
        // takes writes: otherwise nothing contended. (That it also stores some during the
        // shell's run is not asserted: a shell committing back to back can hold the lock
        // nearly all the time, and SQLite's busy handler, sleeping 1 to 100 ms between
        // tries, may find it taken on every try for the shell's whole run. The daemon then
        // waits under its busy timeout, which the log check below would catch, and does
        // not fail. Runs here stored between 0 and ~1 300 results in that second.)
        let mut samples_with_backlog = 0;
        let writer_status = loop {
            if let Some(status) = writer.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the writer hangs"
            );
            let backlog: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs
                  WHERE status IN ('queued', 'running') AND url LIKE '%/preload/%'",
            )
            .fetch_one(&sql)
            .await
            .unwrap();
            samples_with_backlog += usize::from(backlog > 0);
            runtime::sleep(Duration::from_millis(10)).await;
        };
        let writer_took = started.elapsed();
        let reader_status = wait_exit(&mut reader, "the sqlite3 reader").await;
        let writer_errors = std::fs::read_to_string(&writer_log).unwrap();
        let reader_errors = std::fs::read_to_string(&reader_log).unwrap();
        assert!(
            writer_status.success() && writer_errors.is_empty(),
            "writer: {writer_status:?} {writer_errors}"
        );
        assert!(
            reader_status.success() && reader_errors.is_empty(),
            "reader: {reader_status:?} {reader_errors}"
        );
        assert!(
            samples_with_backlog > 0,
            "the daemon had no backlog left while the shell wrote"
        );

        let total = (preload + inserts) as i64;
        let deadline = Instant::now() + DEADLINE * 3;
        loop {
            let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'done'")
                .fetch_one(&sql)
                .await
                .unwrap();
            if done == total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {total} jobs done"
            );
            runtime::sleep(Duration::from_millis(50)).await;
        }
        let kill = Command::new("kill")
            .args(["-TERM", &daemon.0.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        assert!(wait_exit(&mut daemon.0, "the daemon").await.success());

        let log = std::fs::read_to_string(&daemon_log).unwrap();
        let store_errors: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("database error") || line.contains("locked"))
            .collect();
        assert!(store_errors.is_empty(), "{store_errors:#?}");
        let fetched: usize = hosts.iter().map(|h| h.page_hits().len()).sum();
        assert_eq!(fetched, preload + inserts, "every job fetched once");
        eprintln!(
            "{inserts} single-statement inserts in {writer_took:?} and {} SELECTs beside a crawl \
             of {total} jobs: 0 busy errors",
            inserts * 2
        );
    });
}
