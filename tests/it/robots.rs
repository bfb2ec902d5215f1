//! robots.txt through the real daemon: disallowed pages skipped, one fetch per site (kept
//! across a restart), Crawl-delay seen in the server's arrival times, and an unreachable
//! robots.txt holding its origin back (RFC 9309), within the job's attempts, while a port
//! where nothing listens is an ordinary failure to connect, and `crawlq unpause` ending a
//! wait. What the database keeps (the cached answers, pauses) is tested on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::server::{Reply, TestServer};
use crate::common::{
    self, assert_spaced, gaps, on_both_backends, wait_until, Backend, RunningDaemon,
};
use crawlq::runtime::block_on;
use crawlq::settings::Settings;

on_both_backends!(
    disallowed_pages_are_skipped_and_robots_txt_is_fetched_once,
    the_robots_cache_survives_a_restart,
    an_unreachable_robots_txt_holds_its_origin_back_until_it_answers,
    a_robots_txt_that_never_answers_ends_the_job_after_its_attempts,
    an_unreachable_robots_txt_holds_back_its_origin_only,
    a_port_where_nothing_listens_fails_with_the_usual_backoff_and_holds_nothing_back,
    crawlq_unpause_lets_a_host_be_crawled_again_at_once,
    one_unreachable_robots_txt_costs_one_job_an_attempt_not_the_whole_queue,
);

fn obey_robots(s: &mut Settings) {
    s.crawl.obey_robots = true;
}

/// A site whose robots.txt always answers 503; its pages must never be asked for.
fn robots_always_503(ip: &str) -> TestServer {
    TestServer::start(ip, |request| {
        if request.path == "/robots.txt" {
            Reply::status(503)
        } else {
            Reply::html("<title>never fetched</title>")
        }
    })
}

/// A site whose robots.txt is `robots` and whose other paths are tiny pages.
fn site(ip: &str, robots: &'static str) -> TestServer {
    TestServer::start(ip, move |request| {
        if request.path == "/robots.txt" {
            Reply::bytes("text/plain", robots.as_bytes().to_vec())
        } else {
            Reply::html(format!("<title>{}</title>", request.path))
        }
    })
}

async fn disallowed_pages_are_skipped_and_robots_txt_is_fetched_once(backend: Backend) {
    let server = site(
        "127.0.0.1",
        "User-agent: *\nAllow: /\n\nUser-agent: crawlq\nDisallow: /private\n",
    );
    let daemon = RunningDaemon::on(backend, obey_robots).await;
    let mut allowed = Vec::new();
    let mut disallowed = Vec::new();
    for i in 0..6 {
        allowed.push(daemon.insert(&server.url(&format!("/public/{i}"))).await);
        disallowed.push(daemon.insert(&server.url(&format!("/private/{i}"))).await);
    }
    daemon.wait_all_done(&allowed).await;
    for &id in &disallowed {
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "skipped", "job {id}");
        let error = job.error.unwrap_or_default();
        assert!(error.contains("disallowed by robots.txt"), "{error}");
        assert!(
            error.contains("\"crawlq\""),
            "names the group used: {error}"
        );
        assert!(daemon.result(id).await.is_none());
    }
    assert_eq!(
        server.hits_for("/robots.txt").len(),
        1,
        "{:?}",
        server.hits()
    );
    let pages = server.page_hits();
    assert_eq!(pages.len(), 6);
    assert!(pages.iter().all(|h| h.path.starts_with("/public/")));
    let first_page = pages.iter().map(|h| h.at).min().unwrap();
    assert!(server.hits_for("/robots.txt")[0].at <= first_page);

    let cached = daemon
        .sql
        .query(format!(
            "SELECT COUNT(*) FROM robots
              WHERE origin = $1 AND http_status = 200 AND expires_at > {}",
            daemon.sql.seconds_from_now(23 * 3600)
        ))
        .bind(server.url("/").trim_end_matches('/'))
        .int()
        .await;
    assert_eq!(cached, 1, "a 200, cached for a day");
    daemon.stop().await;
}

async fn the_robots_cache_survives_a_restart(backend: Backend) {
    let server = site("127.0.0.1", "User-agent: *\nDisallow: /no\n");
    let daemon = RunningDaemon::on(backend, obey_robots).await;
    let id = daemon.insert(&server.url("/yes")).await;
    daemon.wait_all_done(&[id]).await;
    let db = daemon.stop_keeping_db().await;

    let daemon = RunningDaemon::start_on(db, obey_robots, |_| async {}).await;
    let yes = daemon.insert(&server.url("/yes/again")).await;
    let no = daemon.insert(&server.url("/no/thanks")).await;
    daemon.wait_all_done(&[yes]).await;
    assert_eq!(daemon.wait_finished(no).await.status, "skipped");
    assert_eq!(
        server.hits_for("/robots.txt").len(),
        1,
        "the second daemon used the stored answer"
    );
    daemon.stop().await;
}

#[test]
fn a_missing_robots_txt_allows_everything() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| {
            if request.path == "/robots.txt" {
                Reply::status(404)
            } else {
                Reply::html("<title>ok</title>")
            }
        });
        let daemon = RunningDaemon::start(obey_robots).await;
        let ids = [
            daemon.insert(&server.url("/a")).await,
            daemon.insert(&server.url("/b")).await,
        ];
        daemon.wait_all_done(&ids).await;
        assert_eq!(server.hits_for("/robots.txt").len(), 1);
        daemon.stop().await;
    });
}

#[test]
fn crawl_delay_is_the_wait_between_one_request_ending_and_the_next_starting() {
    block_on(async {
        let answer_in = Duration::from_millis(150);
        let server = TestServer::start("127.0.0.1", move |request| {
            if request.path == "/robots.txt" {
                Reply::bytes("text/plain", b"User-agent: *\nCrawl-delay: 0.4\n".to_vec())
            } else {
                Reply::html(format!("<title>{}</title>", request.path)).with_delay(answer_in)
            }
        });
        // The configured quota (1000/s) would allow all of them at once.
        let daemon = RunningDaemon::start(obey_robots).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(daemon.insert(&server.url(&format!("/p{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let times: Vec<_> = server.hits().iter().map(|h| h.at).collect();
        assert_eq!(times.len(), 6, "{:?}", server.hits());
        // A request arrives before it is answered, and the next one leaves only after that
        // answer plus the delay: no allowance for jitter is needed. robots.txt (answered at
        // once) counts as the request before the first page.
        let gaps = gaps(&times);
        let delay = Duration::from_millis(400);
        assert!(gaps[0] >= delay, "{gaps:?}");
        assert!(
            gaps[1..].iter().all(|gap| *gap >= delay + answer_in),
            "{gaps:?}"
        );
        daemon.stop().await;
    });
}

#[test]
fn a_crawl_delay_never_speeds_up_a_slower_quota() {
    block_on(async {
        let server = site("127.0.0.1", "User-agent: *\nCrawl-delay: 0.1\n");
        let daemon = RunningDaemon::start(|s| {
            obey_robots(s);
            s.limits.per_host.rate.rps = 4.0;
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(daemon.insert(&server.url(&format!("/p{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let times: Vec<_> = server.hits().iter().map(|h| h.at).collect();
        assert_eq!(times.len(), 5);
        assert_spaced(&times, Duration::from_millis(250));
        daemon.stop().await;
    });
}

async fn an_unreachable_robots_txt_holds_its_origin_back_until_it_answers(backend: Backend) {
    // robots.txt fails twice (503, then 500), then says everything is allowed.
    let robots_asked = Arc::new(AtomicUsize::new(0));
    let asked = robots_asked.clone();
    let server = TestServer::start("127.0.0.3", move |request| {
        if request.path != "/robots.txt" {
            return Reply::html("<title>page</title>");
        }
        match asked.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::status(503),
            1 => Reply::status(500),
            _ => Reply::bytes("text/plain", b"User-agent: *\nAllow: /\n".to_vec()),
        }
    });
    let other = site("127.0.0.4", "");
    let daemon = RunningDaemon::on(backend, |s| {
        obey_robots(s);
        s.crawl.robots_unreachable_wait = Duration::from_secs(1);
        s.retry.max_attempts = 3.try_into().unwrap();
    })
    .await;
    let held = daemon.insert(&server.url("/held")).await;
    let free = daemon.insert(&other.url("/free")).await;
    daemon.wait_all_done(&[free]).await;

    wait_for_retry_saying(&daemon, held, "robots.txt unreachable").await;
    assert_eq!(
        daemon.sql.int("SELECT COUNT(*) FROM hosts").await,
        0,
        "the wait is the origin's, not a pause of the host"
    );

    let job = daemon.wait_finished(held).await;
    assert_eq!(job.status, "done", "{:?}", job.error);
    assert_eq!(job.attempts, 3, "each wait ended one attempt");
    assert_eq!(robots_asked.load(Ordering::SeqCst), 3);
    // No page request went out before robots.txt answered 200, and robots.txt was
    // asked again only after each wait.
    let robots = server.hits_for("/robots.txt");
    let pages = server.page_hits();
    assert_eq!(pages.len(), 1);
    assert!(pages[0].at >= robots[2].at);
    for pair in robots.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(950),
            "robots.txt asked again too soon: {:?}",
            pair[1].at - pair[0].at
        );
    }
    daemon.stop().await;
}

#[test]
fn a_redirect_into_a_disallowed_path_is_skipped() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| match request.path.as_str() {
            "/robots.txt" => {
                Reply::bytes("text/plain", b"User-agent: *\nDisallow: /secret\n".to_vec())
            }
            "/open" => Reply::redirect(302, "/secret/page"),
            _ => Reply::html("<title>x</title>"),
        });
        let daemon = RunningDaemon::start(obey_robots).await;
        let id = daemon.insert(&server.url("/open")).await;
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "skipped");
        let error = job.error.unwrap_or_default();
        assert!(
            error.contains("redirect to") && error.contains("/secret/page"),
            "{error}"
        );
        assert!(server.hits_for("/secret/page").is_empty());
        daemon.stop().await;
    });
}

#[test]
fn with_obey_robots_off_robots_txt_is_not_fetched() {
    block_on(async {
        let server = site("127.0.0.1", "User-agent: *\nDisallow: /\n");
        let daemon = RunningDaemon::start(|_| {}).await;
        let id = daemon.insert(&server.url("/anything")).await;
        daemon.wait_all_done(&[id]).await;
        assert!(server.hits_for("/robots.txt").is_empty());
        daemon.stop().await;
    });
}

async fn a_robots_txt_that_never_answers_ends_the_job_after_its_attempts(backend: Backend) {
    let server = robots_always_503("127.0.0.3");
    let daemon = RunningDaemon::on(backend, |s| {
        obey_robots(s);
        s.crawl.robots_unreachable_wait = Duration::from_secs(1);
        s.retry.max_attempts = 2.try_into().unwrap();
    })
    .await;
    let id = daemon.insert(&server.url("/page")).await;
    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "failed");
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("robots.txt unreachable") && error.contains("gave up after 2 attempts"),
        "{error}"
    );
    assert!(server.page_hits().is_empty(), "{:?}", server.hits());
    assert_eq!(server.hits_for("/robots.txt").len(), 2);
    daemon.stop().await;
}

/// Waits until job `id` is back in the queue with an error that contains `reason`.
async fn wait_for_retry_saying(daemon: &RunningDaemon, id: i64, reason: &str) {
    wait_until(&format!("job {id} to wait, saying {reason:?}"), || async {
        let row = daemon.job(id).await;
        row.status == "queued" && row.error.is_some_and(|e| e.contains(reason))
    })
    .await;
}

async fn an_unreachable_robots_txt_holds_back_its_origin_only(backend: Backend) {
    // Two origins of one host name: robots.txt on the first always answers 503.
    let down = robots_always_503("127.0.0.5");
    let up = site("127.0.0.5", "User-agent: *\nAllow: /\n");
    let daemon = RunningDaemon::on(backend, |s| {
        obey_robots(s);
        s.crawl.robots_unreachable_wait = Duration::from_secs(600);
    })
    .await;
    let held = daemon.insert(&down.url("/held")).await;
    wait_for_retry_saying(&daemon, held, "robots.txt unreachable").await;
    // The other port of the same host name is crawled at once, not ten minutes later.
    let free = daemon.insert(&up.url("/free")).await;
    daemon.wait_all_done(&[free]).await;
    assert_eq!(daemon.job(held).await.status, "queued");
    assert!(down.page_hits().is_empty(), "{:?}", down.hits());
    daemon.stop().await;
}

async fn a_port_where_nothing_listens_fails_with_the_usual_backoff_and_holds_nothing_back(
    backend: Backend,
) {
    let up = site("127.0.0.6", "User-agent: *\nAllow: /\n");
    // A port that was free a moment ago: connecting to it is refused.
    let dead_port = std::net::TcpListener::bind("127.0.0.6:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = RunningDaemon::on(backend, |s| {
        obey_robots(s);
        s.crawl.robots_unreachable_wait = Duration::from_secs(600);
        s.retry.max_attempts = 3.try_into().unwrap();
        s.retry.backoff_initial = Duration::from_millis(200);
    })
    .await;
    let dead = daemon
        .insert(&format!("http://127.0.0.6:{dead_port}/page"))
        .await;
    let free = daemon.insert(&up.url("/free")).await;
    daemon.wait_all_done(&[free]).await;
    // Failed after three attempts a backoff apart, not three ten-minute waits.
    let job = daemon.wait_finished(dead).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.attempts, 3);
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("could not connect") && error.contains("gave up after 3 attempts"),
        "{error}"
    );
    assert!(!error.contains("robots.txt unreachable"), "{error}");
    let kept = daemon
        .sql
        .query("SELECT COUNT(*) FROM robots WHERE origin = $1")
        .bind(format!("http://127.0.0.6:{dead_port}"))
        .int()
        .await;
    assert_eq!(kept, 0, "nothing is kept about a site that is not there");
    daemon.stop().await;
}

async fn crawlq_unpause_lets_a_host_be_crawled_again_at_once(backend: Backend) {
    // One host whose robots.txt fails and one that asks to wait an hour, until fixed.
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let robots_fixed = fixed.clone();
    let robots_down = TestServer::start("127.0.0.7", move |request| {
        match (request.path.as_str(), robots_fixed.load(Ordering::SeqCst)) {
            ("/robots.txt", false) => Reply::status(503),
            ("/robots.txt", true) => Reply::bytes("text/plain", b"User-agent: *\n".to_vec()),
            _ => Reply::html("<title>page</title>"),
        }
    });
    let waits_fixed = fixed.clone();
    let asks_to_wait = TestServer::start("127.0.0.8", move |request| {
        match (request.path.as_str(), waits_fixed.load(Ordering::SeqCst)) {
            ("/robots.txt", _) => Reply::bytes("text/plain", b"User-agent: *\n".to_vec()),
            (_, false) => Reply::status(429).with_header("Retry-After", "3600"),
            (_, true) => Reply::html("<title>page</title>"),
        }
    });
    let daemon = RunningDaemon::on(backend, |s| {
        obey_robots(s);
        s.crawl.robots_unreachable_wait = Duration::from_secs(600);
        // The default heartbeat (5 s), at which the daemon hears of an unpause: the jobs
        // the unpause made due are claimed well before, and must not meet the old answer
        // or the old pause.
        s.daemon.heartbeat = Duration::from_secs(5);
    })
    .await;
    let first = daemon.insert(&robots_down.url("/page")).await;
    let second = daemon.insert(&asks_to_wait.url("/page")).await;
    wait_for_retry_saying(&daemon, first, "robots.txt unreachable").await;
    wait_for_retry_saying(&daemon, second, "HTTP 429").await;
    fixed.store(true, Ordering::SeqCst);

    let unpause = |host: &str| {
        let output = common::crawlq(daemon.db.dir.path())
            .args(["unpause", host, "--database", &daemon.db.arg()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    for (host, said) in [
        (
            "127.0.0.7",
            "127.0.0.7: it had no Retry-After pause; 1 failed robots.txt answer(s) forgotten",
        ),
        (
            // A URL names its host.
            &*asks_to_wait.url("/page"),
            "127.0.0.8: its Retry-After pause lifted; 0 failed robots.txt answer(s) forgotten",
        ),
    ] {
        let stdout = unpause(host);
        assert!(stdout.contains(said), "{stdout}");
        assert!(
            stdout.contains("1 job(s) waiting for a retry due now"),
            "{stdout}"
        );
    }
    let stdout = unpause("nothing.test");
    assert!(stdout.contains("nothing was waiting there"), "{stdout}");
    // Crawled now, not in ten minutes or an hour.
    daemon.wait_all_done(&[first, second]).await;
    daemon.stop().await;
}

async fn one_unreachable_robots_txt_costs_one_job_an_attempt_not_the_whole_queue(backend: Backend) {
    let server = robots_always_503("127.0.0.9");
    // One attempt each: a job that spent one on this answer fails at once.
    let daemon = RunningDaemon::on(backend, |s| {
        obey_robots(s);
        s.crawl.robots_unreachable_wait = Duration::from_secs(600);
        s.retry.max_attempts = 1.try_into().unwrap();
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(daemon.insert(&server.url(&format!("/p{i}"))).await);
    }
    wait_until("every job to have met the answer", || async {
        let mut met = 0;
        for &id in &ids {
            let job = daemon.job(id).await;
            met += usize::from(
                job.error
                    .is_some_and(|e| e.contains("robots.txt unreachable")),
            );
        }
        met == ids.len()
    })
    .await;
    let mut failed = 0;
    for &id in &ids {
        let job = daemon.job(id).await;
        let error = job.error.unwrap_or_default();
        if job.status == "failed" {
            failed += 1;
            assert!(error.contains("gave up after 1 attempts"), "{error}");
        } else {
            assert_eq!(
                (job.status.as_str(), job.attempts),
                ("queued", 0),
                "{error}"
            );
            assert!(error.contains("not counted as an attempt"), "{error}");
        }
    }
    assert_eq!(
        failed, 1,
        "only the job that asked robots.txt spent its attempt"
    );
    assert_eq!(server.hits_for("/robots.txt").len(), 1);
    assert!(server.page_hits().is_empty());
    daemon.stop().await;
}
