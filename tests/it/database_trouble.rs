//! The database failing under a running daemon, through the built binary: a full disk, a
//! file it may not write, a file deleted or replaced. Each time the daemon says why, does
//! not spin, and fails no job for it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::server::{Reply, TestServer};
use crate::common::{
    self, crawlq, exit_within, sigterm, spawn_daemon, stderr_of, user_connection,
    wait_for_database, wait_for_workers, wait_until, KillOnDrop, DEADLINE,
};
use crawlq::runtime::{self, block_on};
use sqlx::SqlitePool;

async fn count(sql: &SqlitePool, query: &'static str) -> i64 {
    sqlx::query_scalar(query).fetch_one(sql).await.unwrap()
}

/// Sets the soft limit on the size of any file the process writes (RLIMIT_FSIZE): a write
/// past it fails as a write to a full disk does.
fn limit_file_size(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}:")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={limit}");
}

/// `script` run by `sh` with `binary`'s environment and directory, and `binary` as `$0`.
fn through_shell(binary: &Command, script: &str) -> Command {
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(script).arg(binary.get_program());
    copy_environment(binary, &mut shell);
    shell
}

/// Gives `to` the environment and working directory set on `from`.
fn copy_environment(from: &Command, to: &mut Command) {
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => to.env(key, value),
            None => to.env_remove(key),
        };
    }
    if let Some(dir) = from.get_current_dir() {
        to.current_dir(dir);
    }
}

/// The lines a child writes to its piped stderr, collected as they come (as `docker logs`
/// reads them: a pipe, not a file on the disk that is full).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn follow(child: &mut Child) -> Log {
        let log = Log::default();
        let lines = log.0.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        log
    }

    fn lines_with(&self, text: &str) -> Vec<String> {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Lines that report a database error.
    fn store_errors(&self) -> Vec<String> {
        self.lines_with("database error; retrying every second")
    }
}

#[test]
fn a_full_disk_stops_claiming_says_why_fails_no_job_and_the_crawl_resumes_once_there_is_room() {
    block_on(async {
        // Pages of incompressible text (stored bodies are gzipped), so a few of them need
        // more room than the limit leaves.
        let server = TestServer::start("127.0.0.1", |request| {
            let mut state = request
                .path
                .bytes()
                .fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
            let noise: String = (0..16_000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    format!("{:x}", state & 0xf)
                })
                .collect();
            Reply::html(format!("<title>{}</title><p>{noise}</p>", request.path))
        });
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/crawlq.db");
        // SIGXFSZ ignored (as the shell's trap leaves it across exec), so a write past the
        // limit fails with an error instead of killing the process.
        let mut binary = crawlq(dir.path());
        binary
            .env("CRAWLQ__FETCH__STORE_BODY", "true")
            .env("CRAWLQ__CRAWL__OBEY_ROBOTS", "false")
            .env("CRAWLQ__LIMITS__MAX_IN_FLIGHT", "4")
            .env("CRAWLQ__LIMITS__PER_HOST_RPS", "1000");
        let mut daemon = KillOnDrop(
            through_shell(&binary, "trap '' XFSZ; exec \"$0\" run")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let log = Log::follow(&mut daemon.0);
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        wait_for_workers(&sql, 1).await;

        // Empty the write-ahead log into the database file, so that the daemon's writes
        // start again at its beginning; then let no file of the daemon's grow past 256 KiB.
        // The log has room for a few pages' results and then none; it stays far below the
        // 4 MB at which SQLite would copy it into the database file, so only it is written.
        wait_until("an emptied write-ahead log", || async {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&sql)
                .await
                .unwrap();
            busy == 0
        })
        .await;
        limit_file_size(daemon.0.id(), &(256 * 1024).to_string());
        // In one transaction: thirty commits would fill the log's 256 KiB by themselves.
        let pages = 30;
        let mut tx = sql.begin().await.unwrap();
        for i in 0..pages {
            sqlx::query("INSERT INTO jobs (url) VALUES (?1)")
                .bind(server.url(&format!("/p{i}")))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        wait_until("the daemon to report the failing writes", || async {
            !log.store_errors().is_empty()
        })
        .await;
        // Watch it for three seconds of outage: it retries about once a second (a few
        // lines per turn), claims nothing more, and fails nothing.
        let errors_before = log.store_errors().len();
        let hits_before = server.hits().len();
        runtime::sleep(Duration::from_secs(3)).await;
        let errors = log.store_errors();
        let new_errors = errors.len() - errors_before;
        assert!(
            (1..=20).contains(&new_errors),
            "{new_errors} error lines in 3 s: {errors:#?}"
        );
        assert_eq!(
            server.hits().len(),
            hits_before,
            "it claimed while it could not store"
        );
        assert!(hits_before < pages, "the limit stopped nothing");
        // Pages were fetched before the writes failed: their results waited in memory.
        assert!(
            hits_before > 0,
            "nothing was fetched before the disk filled"
        );
        let failed = count(&sql, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'").await;
        assert_eq!(failed, 0, "a job was failed for a store error");
        let last = errors.last().unwrap();
        assert!(
            last.contains("disk") && last.contains("resumes by itself"),
            "the error says what is wrong and what to do: {last}"
        );

        // Room again: everything is stored, each page fetched once.
        limit_file_size(daemon.0.id(), "unlimited");
        wait_until("every page stored", || async {
            count(&sql, "SELECT COUNT(*) FROM jobs WHERE status = 'done'").await == pages as i64
        })
        .await;
        assert_eq!(server.hits().len(), pages, "a page was fetched twice");
        sigterm(&daemon.0);
        let status = exit_within(&mut daemon.0, DEADLINE, "crawlq").await;
        assert!(status.success(), "{status:?}");
        assert!(!log.lines_with("database usable again; resuming").is_empty());
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    });
}

#[test]
fn a_database_deleted_or_replaced_under_the_daemon_stops_it_with_the_reason() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/crawlq.db");
        let start = || spawn_daemon(dir.path(), Stdio::piped());
        let mut daemon = start();
        wait_for_database(&db).await;
        let sql = user_connection(&db).await;
        common::wait_for_workers(&sql, 1).await;
        sql.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let status = exit_within(&mut daemon.0, DEADLINE, "crawlq").await;
        let log = stderr_of(&mut daemon.0);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("data/crawlq.db was deleted while the daemon was using it"),
            "{log}"
        );

        // A restore that puts another file in its place.
        let mut daemon = start();
        wait_for_database(&db).await;
        let copy = dir.path().join("copy.db");
        let sql = user_connection(&db).await;
        sqlx::query("VACUUM INTO ?1")
            .bind(copy.display().to_string())
            .execute(&sql)
            .await
            .unwrap();
        sql.close().await;
        let restored = user_connection(&copy).await;
        sqlx::query("CREATE TABLE restore_marker (x)")
            .execute(&restored)
            .await
            .unwrap();
        restored.close().await;
        std::fs::rename(&copy, &db).unwrap();
        let status = exit_within(&mut daemon.0, DEADLINE, "crawlq").await;
        let log = stderr_of(&mut daemon.0);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains("was replaced by another file"), "{log}");
        // The restored file is intact: the daemon's write-ahead log, shared by path, was
        // emptied instead of being left to be replayed over it.
        let sql = user_connection(&db).await;
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
        let marker: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM restore_marker")
            .fetch_one(&sql)
            .await
            .expect("the restored file's own table is there");
        assert_eq!(marker, 0);
    });
}

#[test]
fn a_database_the_daemon_may_not_write_stops_it_at_start_with_the_reason_and_touches_no_job() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/crawlq.db");
        let added = crawlq(dir.path())
            .args(["add", "http://127.0.0.1:9/page"])
            .output()
            .unwrap();
        assert!(added.status.success(), "{added:?}");
        // The file is read-only and belongs to someone else; its directory is open to all,
        // so it is the database itself that cannot be written (as with a file created by
        // another user, or a volume mounted read-only).
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mode(&db, 0o444);
        mode(dir.path(), 0o777);
        mode(&dir.path().join("data"), 0o777);
        let mut run = crawlq(dir.path());
        run.arg("run");
        // Root writes any file whatever its mode: run the daemon as `nobody` instead.
        let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        let mut command = if is_root {
            as_nobody(&run, dir.path())
        } else {
            run
        };
        let mut daemon = KillOnDrop(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = exit_within(&mut daemon.0, DEADLINE, "crawlq").await;
        let log = stderr_of(&mut daemon.0);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("attempt to write a readonly database")
                && log.contains("cannot write the database: check the permissions"),
            "{log}"
        );
        mode(&db, 0o644);
        let sql = user_connection(&db).await;
        let (status, attempts): (String, i64) = sqlx::query_as("SELECT status, attempts FROM jobs")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!((status.as_str(), attempts), ("queued", 0));
    });
}

/// `binary` run as the unprivileged user `nobody` (util-linux's setpriv), for a test that
/// needs file permissions to apply. The executable is copied into `dir` first: the
/// checkout it was built in may be closed to other users (under /root, say).
fn as_nobody(binary: &Command, dir: &Path) -> Command {
    let program = dir.join("crawlq");
    std::fs::copy(binary.get_program(), &program).unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program)
        .args(binary.get_args());
    copy_environment(binary, &mut command);
    command
}
