//! The store's contract, run on both backends: every test here is written once and run on
//! a fresh SQLite file (`contract::sqlite::NAME`) and on a database of its own on the
//! throwaway PostgreSQL server (`contract::postgres::NAME`), through the same `Store`
//! methods and the daemon, with the user's SQL written so that both accept it.

use std::time::{Duration, Instant};

use crawlq::daemon::{Daemon, RunOptions, RunReport};
use crawlq::follow::{Child, QueryFilter};
use crawlq::job::{self, Attempt, ClaimedJob, PageRecord, Verdict};
use crawlq::runtime::{self, JoinHandle};
use crawlq::settings::Settings;
use crawlq::shutdown::{self, ShutdownTrigger};
use crawlq::store::{
    FetchedRobots, HostPick, RobotsAnswer, StatusLimits, Store, WorkerCounters, WorkerIdentity,
};

use crate::common::server::{Reply, TestServer};
use crate::common::{on_both_backends, wait_until, Backend, TempDb, UserSql, DEADLINE};

/// A fresh database on one backend, the settings that name it, and the user's own
/// connection to it (the tables made, as a daemon would have made them).
pub struct Db {
    pub settings: Settings,
    pub user: UserSql,
    /// The SQLite file's directory, removed with the test.
    _file: TempDb,
}

impl Db {
    pub async fn new(backend: Backend) -> Db {
        let file = TempDb::on(backend).await;
        let settings = file.settings();
        Store::open(&settings.database).await.unwrap().close().await;
        Db {
            settings,
            user: file.user().await,
            _file: file,
        }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.settings.database)
            .await
            .expect("the store opens")
    }
}

on_both_backends!(
    claims_are_host_fair_and_leases_are_renewed_expired_and_released,
    a_batch_is_fenced_by_leases_and_links_stay_within_the_crawl_budget,
    admission_refuses_bad_rows_and_skips_a_url_already_in_its_crawl,
    robots_answers_and_host_pauses_are_kept,
    status_and_workers_read_the_same,
    a_daemon_crawls_what_users_insert_while_it_runs_and_drains_on_stop,
    a_second_daemon_on_the_same_database_is_refused,
    what_users_write_is_kept_consistent_for_the_daemon,
);

/// Jobs the daemon has admitted (host set), inserted as the test's SQL: (url, host,
/// priority, due).
async fn admitted(db: &Db, jobs: &[(&str, &str, i64, bool)]) {
    for (url, host, priority, due) in jobs {
        let run_after = if *due {
            "'2000-01-01T00:00:00.000Z'"
        } else {
            "'2999-01-01T00:00:00.000Z'"
        };
        db.user
            .execute(&format!(
                "INSERT INTO jobs (url, host, canonical_url, priority, run_after)
                 VALUES ('{url}', '{host}', '{url}', {priority}, {run_after})"
            ))
            .await;
    }
}

fn pick(host: &str, jobs: usize) -> HostPick {
    HostPick {
        host: host.to_owned(),
        jobs,
    }
}

async fn claims_are_host_fair_and_leases_are_renewed_expired_and_released(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    admitted(
        &db,
        &[
            ("http://a.test/low", "a.test", 0, true),
            ("http://a.test/high", "a.test", 5, true),
            ("http://a.test/mid", "a.test", 3, true),
            ("http://b.test/1", "b.test", 0, true),
            ("http://c.test/later", "c.test", 0, false),
        ],
    )
    .await;
    // c.test's only job is not due: it is not offered.
    assert_eq!(
        store.hosts_with_due_jobs("", 10).await.unwrap(),
        ["a.test", "b.test"]
    );
    assert_eq!(
        store.hosts_with_due_jobs("a.test", 10).await.unwrap(),
        ["b.test", "a.test"],
        "round robin from the cursor"
    );
    let lease = Duration::from_secs(60);
    let first = store
        .claim("d/1", lease, &[pick("a.test", 2), pick("b.test", 1)], false)
        .await
        .unwrap();
    let mut urls: Vec<&str> = first.iter().map(|j| j.url.as_str()).collect();
    urls.sort();
    assert_eq!(
        urls,
        ["http://a.test/high", "http://a.test/mid", "http://b.test/1"],
        "each host's best jobs"
    );
    assert!(first.iter().all(|j| j.attempt == 1 && j.lease == "d/1"));
    // What is claimed is not claimed again; a host gives what it has left.
    let second = store
        .claim("d/2", lease, &[pick("a.test", 5), pick("b.test", 1)], false)
        .await
        .unwrap();
    assert_eq!(
        second.iter().map(|j| j.url.as_str()).collect::<Vec<_>>(),
        ["http://a.test/low"]
    );
    // Renewal touches only the leases named, and only while they hold; it names those
    // that no longer do.
    let held: Vec<&ClaimedJob> = first.iter().collect();
    assert_eq!(store.renew_leases(lease, &held).await.unwrap(), []);
    let mut stale = first[0].clone();
    stale.lease = "d/999".into();
    assert_eq!(
        store.renew_leases(lease, &[&stale, held[1]]).await.unwrap(),
        [(stale.id, stale.lease.clone())]
    );
    // A lease that ran out brings its job back (not its last attempt yet).
    db.user
        .execute(&format!(
            "UPDATE jobs SET lease_expires_at = '2000-01-01T00:00:00.000Z' WHERE id = {}",
            second[0].id.0
        ))
        .await;
    assert_eq!(store.requeue_expired(3).await.unwrap(), 1);
    assert_eq!(db.user.status_of(second[0].id.0).await, "queued");
    let error = db
        .user
        .text(&format!(
            "SELECT error FROM jobs WHERE id = {}",
            second[0].id.0
        ))
        .await
        .unwrap();
    assert!(error.starts_with("lease expired"), "{error}");
    // Its last attempt: it fails instead of looping.
    let again = store
        .claim("d/3", lease, &[pick("a.test", 1)], false)
        .await
        .unwrap();
    assert_eq!(again[0].attempt, 2);
    db.user
        .execute(&format!(
            "UPDATE jobs SET lease_expires_at = '2000-01-01T00:00:00.000Z' WHERE id = {}",
            again[0].id.0
        ))
        .await;
    assert_eq!(store.requeue_expired(2).await.unwrap(), 1);
    assert_eq!(db.user.status_of(again[0].id.0).await, "failed");
    // Shutdown hands back what the daemon holds, the attempt not counted.
    assert_eq!(store.release("d").await.unwrap(), 3);
    assert_eq!(
        db.user
            .int("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND attempts = 0 AND lease_owner IS NULL AND host <> 'c.test'")
            .await,
        3
    );
    store.close().await;
}

/// A done attempt of `job` whose page links to `links`.
fn done(job: &ClaimedJob, links: &[&str]) -> Attempt {
    Attempt {
        job: job.clone(),
        page: Some(PageRecord {
            url: job.url.clone(),
            final_url: job.url.clone(),
            http_status: 200,
            content_type: Some("text/html".to_owned()),
            // NUL is refused by PostgreSQL's text: it must arrive as U+FFFD, not fail the batch.
            title: Some(format!("title of {}\0", job.url)),
            description: None,
            links: links.iter().map(|l| l.to_string()).collect(),
            data: [("h1".to_owned(), vec!["one\0".to_owned()])].into(),
            bytes: 100,
            elapsed: Duration::from_millis(1),
            unchanged_since: None,
            validators: Default::default(),
            gzipped_body: None,
            redirect_target: None,
        }),
        verdict: Verdict::Done,
        pause: None,
        children: links
            .iter()
            .map(|l| Child {
                url: l.to_string(),
                host: "a.test".to_owned(),
                kind: crawlq::job::JobKind::Page,
                lastmod: None,
            })
            .collect(),
    }
}

/// Admits every new row as the daemon would.
async fn admit_all(store: &Store) -> crawlq::store::Admissions {
    let new = store.unadmitted(100).await.unwrap();
    let filter = QueryFilter::new(&[]);
    let decisions: Vec<_> = new
        .iter()
        .map(|job| {
            (
                job,
                job::admit(&job.url, job.selectors.as_deref(), &job.crawl, &filter),
            )
        })
        .collect();
    store.record_admissions(&decisions).await.unwrap()
}

async fn a_batch_is_fenced_by_leases_and_links_stay_within_the_crawl_budget(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    db.user
        .execute(
            "INSERT INTO jobs (url, max_depth, max_pages)
             VALUES ('http://a.test/', 2, 3), ('http://a.test/other', 0, NULL)",
        )
        .await;
    admit_all(&store).await;
    let claimed = store
        .claim("d/1", Duration::from_secs(60), &[pick("a.test", 2)], false)
        .await
        .unwrap();
    let root = claimed.iter().find(|j| j.url == "http://a.test/").unwrap();
    let other = claimed.iter().find(|j| j.url != "http://a.test/").unwrap();
    let mut lost = done(other, &[]);
    lost.job.lease = "d/someone-else".into();
    let report = store
        .finish(&[
            // Four links, one twice: the budget (3 jobs, the root included) takes two.
            done(
                root,
                &[
                    "http://a.test/x",
                    "http://a.test/y",
                    "http://a.test/x",
                    "http://a.test/z",
                ],
            ),
            lost,
        ])
        .await
        .unwrap();
    assert_eq!(report.stored, 1);
    assert_eq!(report.lost, [(other.id, 1)]);
    assert_eq!(db.user.status_of(root.id.0).await, "done");
    assert_eq!(
        db.user.status_of(other.id.0).await,
        "running",
        "not ours to finish"
    );
    assert_eq!(
        db.user
            .int("SELECT COUNT(*) FROM results WHERE job_id IN (SELECT id FROM jobs WHERE url = 'http://a.test/other')")
            .await,
        0,
        "a lost lease stores nothing"
    );
    let children: Vec<String> = {
        let mut urls = Vec::new();
        for (id, _, _) in db.user.jobs().await {
            if id != root.id.0 && id != other.id.0 {
                urls.push(
                    db.user
                        .text(&format!("SELECT url FROM jobs WHERE id = {id}"))
                        .await
                        .unwrap(),
                );
            }
        }
        urls
    };
    assert_eq!(children, ["http://a.test/x", "http://a.test/y"]);
    assert_eq!(
        db.user
            .int(&format!(
                "SELECT crawl_size FROM jobs WHERE id = {}",
                root.id.0
            ))
            .await,
        3
    );
    let title = db
        .user
        .text(&format!(
            "SELECT title FROM latest_results WHERE job_id = {}",
            root.id.0
        ))
        .await
        .unwrap();
    assert!(title.starts_with("title of http://a.test/"), "{title}");
    store.close().await;
}

async fn admission_refuses_bad_rows_and_skips_a_url_already_in_its_crawl(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    let root = db.user.insert("http://a.test/start").await;
    let bad = db.user.insert("not a url").await;
    let admissions = admit_all(&store).await;
    assert_eq!(admissions.refused, 1);
    assert_eq!(db.user.status_of(bad).await, "failed");
    // Two seeds added to the root's crawl: one new URL, one the crawl has already.
    db.user
        .execute(&format!(
            "INSERT INTO jobs (url, root_id) VALUES ('http://a.test/start', {root}),
                                                    ('http://a.test/new', {root})"
        ))
        .await;
    let admissions = admit_all(&store).await;
    assert_eq!(admissions.skipped, 1);
    let jobs = db.user.jobs().await;
    let (_, status, error) = &jobs[2];
    assert_eq!(status, "skipped");
    assert_eq!(
        error.as_deref(),
        Some(format!("already in this crawl as job {root}").as_str())
    );
    assert_eq!(jobs[3].1, "queued");
    assert_eq!(
        db.user
            .int(&format!("SELECT crawl_size FROM jobs WHERE id = {root}"))
            .await,
        2,
        "the new seed counts toward the crawl"
    );
    store.close().await;
}

async fn robots_answers_and_host_pauses_are_kept(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    let body = b"User-agent: *\nDisallow: /private\n\xff".to_vec();
    store
        .save_robots(&[
            FetchedRobots {
                origin: "http://a.test".into(),
                answer: RobotsAnswer::Fetched {
                    status: 200,
                    body: body.clone(),
                },
                expires: Instant::now() + Duration::from_secs(3600),
            },
            FetchedRobots {
                origin: "http://b.test:8080".into(),
                answer: RobotsAnswer::Failed("timed out".into()),
                expires: Instant::now() + Duration::from_secs(60),
            },
        ])
        .await
        .unwrap();
    let (answer, fresh) = store.robots("http://a.test").await.unwrap().unwrap();
    assert_eq!(answer, RobotsAnswer::Fetched { status: 200, body });
    // Timestamps are kept to the millisecond, so the answer may read a hair over an hour.
    assert!(
        fresh > Duration::from_secs(3500) && fresh < Duration::from_secs(3601),
        "fresh for {fresh:?}"
    );
    let (answer, _) = store.robots("http://b.test:8080").await.unwrap().unwrap();
    assert_eq!(answer, RobotsAnswer::Failed("timed out".into()));
    assert!(store.robots("http://c.test").await.unwrap().is_none());

    // A Retry-After pause is kept with its attempt, reloaded at start-up, and keeps the
    // host out of the walk while it lasts.
    admitted(
        &db,
        &[
            ("http://a.test/1", "a.test", 0, true),
            ("http://b.test/1", "b.test", 0, true),
        ],
    )
    .await;
    let claimed = store
        .claim("d/1", Duration::from_secs(60), &[pick("a.test", 1)], false)
        .await
        .unwrap();
    let mut attempt = done(&claimed[0], &[]);
    attempt.verdict = Verdict::Retry {
        reason: "HTTP 503".into(),
        after: Duration::from_secs(120),
    };
    attempt.pause = Some(("a.test".into(), Duration::from_secs(120)));
    store.finish(&[attempt]).await.unwrap();
    let pauses = store.active_pauses().await.unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].0, "a.test");
    assert!(pauses[0].1 > Duration::from_secs(100));
    assert_eq!(store.hosts_with_due_jobs("", 10).await.unwrap(), ["b.test"]);
    assert_eq!(
        db.user
            .text("SELECT pause_reason FROM host_stats WHERE host = 'a.test'")
            .await
            .as_deref(),
        Some("HTTP 503")
    );
    store.close().await;
}

async fn status_and_workers_read_the_same(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    db.user.insert("http://a.test/1").await;
    db.user.insert("not a url").await;
    admit_all(&store).await;
    let me = WorkerIdentity {
        id: "crawlq-1-test".into(),
        hostname: "test-host".into(),
        pid: 1,
        version: "0.0.0".into(),
        heartbeat_every: Duration::from_secs(5),
    };
    store.register_worker(&me).await.unwrap();
    let counters = WorkerCounters {
        claimed: 7,
        done: 5,
        ..WorkerCounters::default()
    };
    store.heartbeat(&me.id, &counters, false).await.unwrap();
    let health = store.newest_worker_on("test-host").await.unwrap().unwrap();
    assert_eq!(
        (health.id.as_str(), health.state.as_str()),
        ("crawlq-1-test", "running")
    );
    let report = store
        .status_report(StatusLimits {
            top_hosts: 5,
            error_groups: 5,
            workers: 5,
        })
        .await
        .unwrap();
    assert_eq!((report.jobs.queued, report.jobs.failed), (1, 1));
    assert_eq!(report.top_hosts.len(), 1);
    assert_eq!(
        (report.top_hosts[0].host.as_str(), report.top_hosts[0].due),
        ("a.test", 1)
    );
    assert_eq!(report.recent_errors.len(), 1);
    assert!(report.recent_errors[0].reason.starts_with("invalid URL"));
    assert!(
        report.recent_errors[0].last_seen.ends_with('Z'),
        "UTC ISO text on both"
    );
    assert_eq!(report.workers.len(), 1);
    assert_eq!((report.workers[0].claimed, report.workers[0].done), (7, 5));
    assert!(store.has_unfinished_jobs().await.unwrap());
    store.heartbeat(&me.id, &counters, true).await.unwrap();
    let health = store.newest_worker_on("test-host").await.unwrap().unwrap();
    assert_eq!(health.state, "stopped");
    store.close().await;
}

/// A daemon running in this process on `db`, stopped as SIGTERM would stop it.
struct InProcess {
    trigger: ShutdownTrigger,
    handle: JoinHandle<Result<RunReport, crawlq::daemon::DaemonError>>,
}

impl InProcess {
    async fn start(settings: Settings) -> InProcess {
        let daemon = Daemon::build(settings).await.expect("daemon builds");
        let (trigger, shutdown) = shutdown::channel();
        let handle = runtime::spawn(daemon.run_until_stopped(shutdown, RunOptions::default()));
        InProcess { trigger, handle }
    }

    async fn stop(self) -> RunReport {
        self.trigger.fire();
        runtime::timeout(DEADLINE, self.handle)
            .await
            .expect("the daemon stops within the deadline")
            .expect("the daemon ran without error")
    }
}

async fn wait_status(db: &Db, id: i64, status: &str) {
    let user = db.user.clone();
    wait_until(&format!("job {id} to be {status}"), || {
        let user = user.clone();
        async move { user.status_of(id).await == status }
    })
    .await;
}

async fn a_daemon_crawls_what_users_insert_while_it_runs_and_drains_on_stop(backend: Backend) {
    let mut db = Db::new(backend).await;
    let site = TestServer::start("127.0.0.1", |req| match req.path.as_str() {
        "/" => Reply::html(
            r#"<html><head><title>Home</title></head><body>
               <a href="/a">a</a> <a href="/b">b</a> <a href="/a#again">a again</a></body></html>"#,
        ),
        "/slow" => Reply::html("<title>slow</title>").with_delay(Duration::from_secs(30)),
        path => Reply::html(format!("<html><head><title>{path}</title></head></html>")),
    });
    db.settings.daemon.shutdown_grace = Duration::from_millis(200);
    let daemon = InProcess::start(db.settings.clone()).await;
    // Inserted while the daemon runs: a crawl of depth 1 and a job cancelled before it ran.
    db.user
        .execute(&format!(
            "INSERT INTO jobs (url, max_depth, selectors) VALUES ('{}', 1, '{{\"t\": \"title\"}}')",
            site.url("/")
        ))
        .await;
    // Due at once, and cancelled in the same statement: only the status keeps it unfetched.
    db.user
        .execute(&format!(
            "INSERT INTO jobs (url, status) VALUES ('{}', 'cancelled')",
            site.url("/never")
        ))
        .await;
    let user = db.user.clone();
    wait_until("the crawl (3 pages) to be done", || {
        let user = user.clone();
        async move {
            user.int("SELECT COUNT(*) FROM jobs WHERE status = 'done'")
                .await
                == 3
        }
    })
    .await;
    assert_eq!(
        db.user.int("SELECT COUNT(*) FROM jobs").await,
        4,
        "/a once, though linked twice"
    );
    assert_eq!(
        db.user
            .text("SELECT title FROM latest_results r JOIN jobs j ON j.id = r.job_id WHERE j.depth = 0")
            .await
            .as_deref(),
        Some("Home")
    );
    assert!(site.hits_for("/never").is_empty());
    // A job still running at shutdown goes back to the queue, its attempt not counted.
    let slow = db.user.insert(&site.url("/slow")).await;
    wait_status(&db, slow, "running").await;
    let report = daemon.stop().await;
    assert_eq!(report.released, 1);
    assert_eq!(db.user.status_of(slow).await, "queued");
    assert_eq!(
        db.user
            .int(&format!("SELECT attempts FROM jobs WHERE id = {slow}"))
            .await,
        0
    );
}

async fn a_second_daemon_on_the_same_database_is_refused(backend: Backend) {
    let db = Db::new(backend).await;
    let first = InProcess::start(db.settings.clone()).await;
    let second = Daemon::build(db.settings.clone()).await;
    let error = second
        .err()
        .expect("a second daemon is refused")
        .to_string();
    assert!(
        error.contains("in use by another running daemon"),
        "{error}"
    );
    first.stop().await;
    // Once the first has stopped, a daemon starts.
    InProcess::start(db.settings.clone()).await.stop().await;
}

async fn what_users_write_is_kept_consistent_for_the_daemon(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.store().await;
    // A NULL run_after means now, on INSERT and on UPDATE.
    let id = db
        .user
        .int("INSERT INTO jobs (url, run_after) VALUES ('http://a.test/1', NULL) RETURNING id")
        .await;
    admit_all(&store).await;
    assert_eq!(store.hosts_with_due_jobs("", 10).await.unwrap(), ["a.test"]);
    let claimed = store
        .claim("d/1", Duration::from_secs(60), &[pick("a.test", 1)], false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // An old updated_at, so that the change below shows whatever the clock's resolution.
    db.user
        .execute(&format!(
            "UPDATE jobs SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = {id}"
        ))
        .await;
    // The user edits the URL of the running job: it goes back to admission, its lease
    // gone, and the old URL's result is not stored.
    db.user
        .execute(&format!(
            "UPDATE jobs SET url = 'http://b.test/1' WHERE id = {id}"
        ))
        .await;
    let (status, host, lease): (String, Option<String>, Option<String>) = (
        db.user.status_of(id).await,
        db.user
            .text(&format!("SELECT host FROM jobs WHERE id = {id}"))
            .await,
        db.user
            .text(&format!("SELECT lease_owner FROM jobs WHERE id = {id}"))
            .await,
    );
    assert_eq!((status.as_str(), host, lease), ("queued", None, None));
    assert_eq!(
        db.user
            .int(&format!(
                "SELECT COUNT(*) FROM jobs WHERE id = {id} AND updated_at > '2001-01-01T00:00:00.000Z'"
            ))
            .await,
        1,
        "updated_at follows the user's change"
    );
    let report = store.finish(&[done(&claimed[0], &[])]).await.unwrap();
    assert_eq!(report.lost, [(claimed[0].id, 1)]);
    assert_eq!(db.user.int("SELECT COUNT(*) FROM results").await, 0);
    admit_all(&store).await;
    assert_eq!(store.hosts_with_due_jobs("", 10).await.unwrap(), ["b.test"]);
    db.user
        .execute(&format!(
            "UPDATE jobs SET run_after = '2999-01-01T00:00:00.000Z' WHERE id = {id}"
        ))
        .await;
    assert!(store.hosts_with_due_jobs("", 10).await.unwrap().is_empty());
    db.user
        .execute(&format!("UPDATE jobs SET run_after = NULL WHERE id = {id}"))
        .await;
    assert_eq!(
        store.hosts_with_due_jobs("", 10).await.unwrap(),
        ["b.test"],
        "NULL is now"
    );
    store.close().await;
}
