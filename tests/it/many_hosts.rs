//! Many hosts under a small descriptor limit, through the built binary: a daemon limited
//! to 1 024 open files (a common container default) crawls 2 000 hosts, keeps its
//! descriptors within the limit (its connection cache is bounded), and fails no job for
//! a shortage of its own.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{crawlq, user_connection, KillOnDrop};
use async_std::io::{BufReadExt, WriteExt};
use async_std::net::{TcpListener, TcpStream};
use crawlq::runtime::{self, block_on};

const HOSTS: usize = 2000;
const PAGES: usize = 2;
const NOFILE: usize = 1024;

/// Serves one connection: a small page for every request, kept alive until the client
/// closes it (as nginx would).
async fn serve(stream: TcpStream, requests: Arc<AtomicUsize>) {
    let mut reader = async_std::io::BufReader::new(stream.clone());
    let mut writer = stream;
    let page = "<!doctype html><title>a host</title><a href=\"/x\">x</a>";
    loop {
        let mut line = String::new();
        // The request line and headers, up to the blank line.
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if first {
                first = false;
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
            page.len()
        );
        if writer.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// How many descriptors process `pid` has open once it runs `program`, and what they are
/// (by kind: socket, pipe, a path), for a message. Before its exec the child of a fork
/// still holds its parent's descriptors (this test's 2 000 listeners): not counted.
fn open_descriptors(pid: u32, program: &std::path::Path) -> Option<(usize, String)> {
    let running = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    if running != program.canonicalize().ok()? {
        return None;
    }
    let entries: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .collect();
    let mut kinds = std::collections::BTreeMap::new();
    let mut highest = 0u64;
    for entry in &entries {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.display().to_string();
        let kind = target.split(':').next().unwrap_or_default().to_owned();
        *kinds.entry(kind).or_insert(0) += 1;
        let number = entry.file_name().to_str().and_then(|n| n.parse().ok());
        highest = highest.max(number.unwrap_or(0));
    }
    Some((
        entries.len(),
        format!("highest {highest}, by kind {kinds:?}"),
    ))
}

/// `http://127.31.X.Y:port` for host `i`.
fn address(i: usize) -> String {
    format!("127.31.{}.{}", i / 250, i % 250 + 1)
}

#[test]
fn two_thousand_hosts_fit_a_1024_descriptor_limit_and_no_job_fails_for_it() {
    block_on(async {
        // One listener per host address, all on one port; the server runs in this process,
        // whose own limit is not the daemon's.
        let first = TcpListener::bind((address(0).as_str(), 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..HOSTS {
            listeners.push(
                TcpListener::bind((address(i).as_str(), port))
                    .await
                    .unwrap_or_else(|e| panic!("bind {}:{port}: {e}", address(i))),
            );
        }
        let requests = Arc::new(AtomicUsize::new(0));
        for listener in listeners {
            let requests = requests.clone();
            runtime::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    runtime::spawn(serve(stream, requests.clone()));
                }
            });
        }

        let dir = tempfile::tempdir().unwrap();
        let migrate = crawlq(dir.path()).arg("migrate").output().unwrap();
        assert!(migrate.status.success(), "{migrate:?}");
        let db = dir.path().join("data/crawlq.db");
        let sql = user_connection(&db).await;
        let mut tx = sql.begin().await.unwrap();
        for page in 0..PAGES {
            for host in 0..HOSTS {
                sqlx::query("INSERT INTO jobs (url) VALUES (?1)")
                    .bind(format!("http://{}:{port}/{page}", address(host)))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();

        // The daemon as `crawlq(dir)` would start it, under prlimit: soft and hard limit
        // 1 024, so it cannot raise its own.
        let template = crawlq(dir.path());
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={NOFILE}:{NOFILE}"))
            .arg("--")
            .arg(template.get_program())
            .args(["run", "--exit-when-idle"])
            .env("CRAWLQ__LIMITS__PER_HOST_RPS", "20")
            .env("CRAWLQ__DAEMON__STATS_INTERVAL_SECS", "5")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe: a pipe nobody reads until the end fills and blocks the log.
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap());
        for (key, value) in template.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut daemon = KillOnDrop(command.spawn().expect("prlimit (util-linux) runs"));
        let pid = daemon.0.id();
        let program = std::path::Path::new(template.get_program());
        let started = Instant::now();
        let mut most_open = 0;
        let mut most_open_were = String::new();
        let status = loop {
            if let Some(status) = daemon.0.try_wait().unwrap() {
                break status;
            }
            if let Some((open, what)) = open_descriptors(pid, program) {
                if open > most_open {
                    most_open = open;
                    most_open_were = what;
                }
            }
            if started.elapsed() > Duration::from_secs(240) {
                let _ = daemon.0.kill();
                let _ = daemon.0.wait();
                let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "the crawl did not end within 240 s ({} requests served); the log ends:\n{}",
                    requests.load(Ordering::Relaxed),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            runtime::sleep(Duration::from_millis(50)).await;
        };
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
        assert!(status.success(), "{status}; log:\n{log}");

        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(&sql)
                .await
                .unwrap();
        let errors: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT error FROM jobs WHERE error IS NOT NULL LIMIT 5")
                .fetch_all(&sql)
                .await
                .unwrap();
        assert_eq!(
            counts,
            vec![("done".to_owned(), (HOSTS * PAGES) as i64)],
            "errors: {errors:?}"
        );
        // Every host's robots.txt (404 here: the page) and pages were asked for once.
        assert_eq!(requests.load(Ordering::Relaxed), HOSTS * (PAGES + 1));
        assert!(
            most_open < NOFILE - 64,
            "the daemon held {most_open} descriptors under a limit of {NOFILE}: {most_open_were}"
        );
        assert!(
            !log.contains("out of file descriptors") && !log.contains("HTTP client stopped"),
            "{log}"
        );
    });
}
