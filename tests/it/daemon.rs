//! The daemon in-process, against real local HTTP servers and a real database; jobs are
//! inserted and results read with plain SQL from a separate connection. The tests listed
//! in `on_both_backends!` run on a SQLite file and on PostgreSQL; the others are about
//! what SQLite does (its locks, its loose typing, its messages) or about fetching, parsing
//! and rate limits, which no backend changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};
use crate::common::{
    self, execute, gaps, on_both_backends, wait_until, Backend, RunningDaemon, TempDb,
};
use crawlq::runtime::{self, block_on};

on_both_backends!(
    a_page_is_fetched_parsed_and_stored,
    selectors_take_text_attributes_and_report_no_match_as_empty,
    invalid_urls_and_other_schemes_fail_at_once_with_a_reason,
    server_errors_are_retried_with_backoff_until_success,
    retries_stop_at_max_attempts,
    not_found_fails_at_once_and_keeps_its_result,
    a_refused_connection_is_retried_then_failed_with_a_reason,
    a_slow_host_does_not_starve_a_fast_one,
    higher_priority_runs_first_within_a_host,
    expired_leases_of_a_dead_daemon_are_claimed_again,
    a_cancelled_job_is_never_fetched,
    cancelling_a_running_job_wins_over_its_result,
    a_job_cancelled_while_it_runs_gives_up_its_slot_at_the_next_renewal,
    jobs_inserted_while_running_are_all_crawled,
    a_new_job_is_claimed_soon_after_it_is_committed,
    editing_the_url_of_a_running_job_fetches_the_new_url,
    retry_after_seconds_pauses_the_whole_host,
    retry_after_as_an_http_date_is_honoured,
    a_request_already_waiting_for_its_turn_respects_a_new_pause,
    the_workers_row_carries_a_heartbeat_and_counters,
    hostile_rows_end_with_a_reason_or_a_documented_meaning,
    results_that_cannot_be_stored_keep_their_slots_so_claiming_stops_and_nothing_is_lost,
);

async fn a_page_is_fetched_parsed_and_stored(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html(
            r#"<html><head><title> Hello </title><meta name="description" content="About"></head>
               <body><a href="/b#x">b</a><a href="/b">b again</a><a href="https://other.test/c">c</a></body></html>"#,
        )
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon.insert(&server.url("/a")).await;
    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "done");
    assert_eq!(job.attempts, 1);
    assert_eq!(job.error, None);
    assert!(job.finished_at.is_some());
    assert_eq!(job.lease_owner, None);
    let result = daemon.result(id).await.expect("a results row");
    assert_eq!(result.http_status, 200);
    assert_eq!(result.url, server.url("/a"));
    assert_eq!(result.final_url, server.url("/a"));
    assert_eq!(result.title.as_deref(), Some("Hello"));
    assert_eq!(result.description.as_deref(), Some("About"));
    assert_eq!(
        result.links,
        serde_json::json!([server.url("/b"), "https://other.test/c"])
    );
    assert_eq!(
        result.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(result.bytes > 100);

    // JSON columns work with the database's own JSON functions.
    let each_link = format!(
        "SELECT l.value FROM results r, {} WHERE r.job_id = $1",
        daemon.sql.json_elements("r.links", "l")
    );
    let links: Vec<(String,)> = daemon.sql.query(each_link).bind(id).all().await;
    assert_eq!(
        links,
        [(server.url("/b"),), ("https://other.test/c".to_owned(),)]
    );

    let hits = server.hits();
    assert_eq!(hits.len(), 1, "fetched once");
    assert!(hits[0].header("user-agent").unwrap().starts_with("crawlq/"));
    daemon.stop().await;
}

async fn selectors_take_text_attributes_and_report_no_match_as_empty(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html(
            r#"<span class="price"> $ 10 </span><span class="price">$20</span>
               <img class="hero" src="/hero.png">"#,
        )
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    // The selectors as a literal, which each database reads as its JSON column's type.
    let id = daemon
        .sql
        .query(
            r#"INSERT INTO jobs (url, selectors)
               VALUES ($1, '{"price": "span.price", "image": "img.hero@src", "missing": "div.nothing"}')
               RETURNING id"#,
        )
        .bind(server.url("/p"))
        .int()
        .await;
    assert_eq!(daemon.wait_finished(id).await.status, "done");
    let data = daemon.result(id).await.unwrap().data;
    assert_eq!(
        data,
        serde_json::json!({"price": ["$ 10", "$20"], "image": ["/hero.png"], "missing": []})
    );
    // And with the database's own JSON functions.
    let second_price = match backend {
        Backend::Sqlite => "SELECT json_extract(data, '$.price[1]') FROM results WHERE job_id = $1",
        Backend::Postgres => "SELECT data -> 'price' ->> 1 FROM results WHERE job_id = $1",
    };
    let price = daemon.sql.query(second_price).bind(id).text().await;
    assert_eq!(price.as_deref(), Some("$20"));
    daemon.stop().await;
}

#[test]
fn invalid_selectors_fail_the_job_before_any_fetch() {
    block_on(async {
        let server = TestServer::pages("127.0.0.1");
        let daemon = RunningDaemon::start(|_| {}).await;
        let insert = |selectors: &'static str| {
            let sql = daemon.sql.sqlite().clone();
            let url = server.url("/never");
            async move {
                sqlx::query_scalar::<_, i64>(
                    "INSERT INTO jobs (url, selectors) VALUES (?1, ?2) RETURNING id",
                )
                .bind(url)
                .bind(selectors)
                .fetch_one(&sql)
                .await
                .unwrap()
            }
        };
        let bad_css = insert(r#"{"price": "span..price"}"#).await;
        let bad_json = insert(r#"{"price": "#).await;
        let not_object = insert(r#"["span"]"#).await;

        let job = daemon.wait_finished(bad_css).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(
            error.contains("\"price\"")
                && error.contains("span..price")
                && error.contains("invalid CSS"),
            "{error}"
        );
        let job = daemon.wait_finished(bad_json).await;
        assert_eq!(job.status, "failed");
        assert!(job
            .error
            .unwrap()
            .starts_with("selectors is not valid JSON"));
        let job = daemon.wait_finished(not_object).await;
        assert!(job.error.unwrap().contains("must be a JSON object"));
        for id in [bad_css, bad_json, not_object] {
            assert_eq!(daemon.job(id).await.attempts, 0, "never claimed");
            assert!(daemon.result(id).await.is_none());
        }
        assert!(server.hits().is_empty(), "nothing was fetched");
        daemon.stop().await;
    });
}

async fn invalid_urls_and_other_schemes_fail_at_once_with_a_reason(backend: Backend) {
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let cases = [
        (
            "ftp://example.com/file.txt",
            "unsupported URL scheme \"ftp\"",
        ),
        ("not a url", "invalid URL"),
        ("", "invalid URL: empty"),
        ("http://", "invalid URL"),
        (
            "javascript:alert(1)",
            "unsupported URL scheme \"javascript\"",
        ),
    ];
    let mut ids = Vec::new();
    for (url, _) in cases {
        ids.push(daemon.insert(url).await);
    }
    for (id, (url, expected)) in ids.into_iter().zip(cases) {
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "failed", "{url:?}");
        let error = job.error.unwrap();
        assert!(error.contains(expected), "{url:?}: {error}");
        assert_eq!(job.attempts, 0);
    }
    daemon.stop().await;
}

async fn server_errors_are_retried_with_backoff_until_success(backend: Backend) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = TestServer::start("127.0.0.1", move |_| {
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Reply::status(500),
            _ => Reply::html("<title>third time</title>"),
        }
    });
    let daemon = RunningDaemon::on(backend, |s| {
        s.retry.backoff_initial = Duration::from_millis(500);
    })
    .await;
    let id = daemon.insert(&server.url("/flaky")).await;

    // Between attempts the job is queued again with the reason and a future run_after.
    wait_until("the first retry to be scheduled", || async {
        let row: Option<(Option<String>,)> = daemon
            .sql
            .query("SELECT error FROM jobs WHERE id = $1 AND attempts = 1 AND status = 'queued'")
            .bind(id)
            .optional()
            .await;
        row.is_some_and(|(e,)| {
            e.unwrap_or_default()
                .contains("HTTP 500 Internal Server Error (attempt 1 of 3")
        })
    })
    .await;

    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "done");
    assert_eq!(job.attempts, 3);
    assert_eq!(job.error, None);
    let result = daemon.result(id).await.unwrap();
    assert_eq!(result.http_status, 200);
    assert_eq!(result.title.as_deref(), Some("third time"));
    let times: Vec<Instant> = server.hits().iter().map(|h| h.at).collect();
    assert_eq!(times.len(), 3);
    let gaps = gaps(&times);
    // Backoff 500 ms then 1 s, each with ±20 % jitter.
    assert!(gaps[0] >= Duration::from_millis(400), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(800), "{gaps:?}");
    daemon.stop().await;
}

async fn retries_stop_at_max_attempts(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| Reply::status(503));
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon
        .sql
        .query("INSERT INTO jobs (url, max_attempts) VALUES ($1, 2) RETURNING id")
        .bind(server.url("/down"))
        .int()
        .await;
    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.attempts, 2);
    assert_eq!(
        job.error.as_deref(),
        Some("HTTP 503 Service Unavailable (gave up after 2 attempts)")
    );
    assert_eq!(daemon.result(id).await.unwrap().http_status, 503);
    assert_eq!(server.hits().len(), 2);
    daemon.stop().await;
}

async fn not_found_fails_at_once_and_keeps_its_result(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html("<title>Not here</title>").with_status(404)
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon.insert(&server.url("/missing")).await;
    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.attempts, 1);
    assert_eq!(job.error.as_deref(), Some("HTTP 404 Not Found"));
    let result = daemon
        .result(id)
        .await
        .expect("non-2xx responses are stored too");
    assert_eq!(result.http_status, 404);
    assert_eq!(result.title.as_deref(), Some("Not here"));
    assert_eq!(server.hits().len(), 1);
    daemon.stop().await;
}

#[test]
fn a_slow_server_times_out_with_a_readable_reason() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |_| {
            Reply::html("late").with_delay(Duration::from_secs(3))
        });
        let daemon = RunningDaemon::start(|s| {
            s.fetch.timeout = Duration::from_millis(300);
        })
        .await;
        let id: i64 =
            sqlx::query_scalar("INSERT INTO jobs (url, max_attempts) VALUES (?1, 1) RETURNING id")
                .bind(server.url("/slow"))
                .fetch_one(daemon.sql.sqlite())
                .await
                .unwrap();
        let started = Instant::now();
        let job = daemon.wait_finished(id).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "gave up before the server answered"
        );
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(
            error.contains("timed out after 0.3 s waiting for 127.0.0.1")
                && error.contains("/slow"),
            "{error}"
        );
        assert!(daemon.result(id).await.is_none());
        daemon.stop().await;
    });
}

#[test]
fn redirect_chains_are_followed_and_loops_are_refused() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| match request.path.as_str() {
            "/r1" => Reply::redirect(301, "/r2"),
            "/r2" => Reply::redirect(302, "r3#frag"),
            "/r3" => Reply::redirect(307, "/final"),
            "/final" => Reply::html("<title>landed</title><a href='next'>n</a>"),
            "/loop1" => Reply::redirect(302, "/loop2"),
            "/loop2" => Reply::redirect(302, "/loop1"),
            "/to-ftp" => Reply::redirect(302, "ftp://example.com/x"),
            path if path.starts_with("/hop") => {
                let n: u32 = path[4..].parse().unwrap();
                Reply::redirect(302, &format!("/hop{}", n + 1))
            }
            _ => Reply::status(404),
        });
        let daemon = RunningDaemon::start(|s| s.fetch.max_redirects = 5).await;
        let chain = daemon.insert(&server.url("/r1")).await;
        let looped = daemon.insert(&server.url("/loop1")).await;
        let ftp = daemon.insert(&server.url("/to-ftp")).await;
        let long = daemon.insert(&server.url("/hop0")).await;

        assert_eq!(daemon.wait_finished(chain).await.status, "done");
        let result = daemon.result(chain).await.unwrap();
        assert_eq!(result.url, server.url("/r1"));
        assert_eq!(result.final_url, server.url("/final"));
        assert_eq!(result.title.as_deref(), Some("landed"));
        assert_eq!(
            result.links,
            serde_json::json!([server.url("/next")]),
            "relative to the final URL"
        );
        for path in ["/r1", "/r2", "/r3", "/final"] {
            assert_eq!(server.hits_for(path).len(), 1, "{path} fetched once");
        }

        let job = daemon.wait_finished(looped).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(error.starts_with("redirect loop: "), "{error}");
        assert!(
            error.contains("/loop1 -> ") && error.ends_with("/loop1"),
            "{error}"
        );
        assert_eq!(job.attempts, 1, "a loop is not retried");

        let job = daemon.wait_finished(ftp).await;
        assert_eq!(job.status, "failed");
        assert!(job
            .error
            .unwrap()
            .contains("unsupported URL scheme \"ftp\""));

        let job = daemon.wait_finished(long).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(
            error.starts_with("too many redirects (fetch.max_redirects = 5)"),
            "{error}"
        );
        assert_eq!(server.hits_for("/hop5").len(), 1);
        assert!(
            server.hits_for("/hop6").is_empty(),
            "stopped at the hop limit"
        );
        daemon.stop().await;
    });
}

#[test]
fn bodies_over_the_cap_fail_the_job() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| {
            let size = if request.path == "/big" { 5000 } else { 1000 };
            Reply::bytes("text/html", vec![b'x'; size])
        });
        let daemon = RunningDaemon::start(|s| s.fetch.max_body_bytes = 1000).await;
        let big = daemon.insert(&server.url("/big")).await;
        let fits = daemon.insert(&server.url("/fits")).await;
        let job = daemon.wait_finished(big).await;
        assert_eq!(job.status, "failed");
        assert!(job
            .error
            .unwrap()
            .contains("larger than fetch.max_body_bytes (1000 bytes)"),);
        assert_eq!(job.attempts, 1, "not retried");
        assert_eq!(daemon.wait_finished(fits).await.status, "done");
        assert_eq!(daemon.result(fits).await.unwrap().bytes, 1000);
        daemon.stop().await;
    });
}

#[test]
fn non_html_is_stored_without_parsing() {
    block_on(async {
        let pdf = b"%PDF-1.4 <title>not a title</title> <a href='/x'>".to_vec();
        let body = pdf.clone();
        let server = TestServer::start("127.0.0.1", move |_| {
            Reply::bytes("application/pdf", body.clone())
        });
        let daemon = RunningDaemon::start(|_| {}).await;
        let id = daemon.insert(&server.url("/doc.pdf")).await;
        assert_eq!(daemon.wait_finished(id).await.status, "done");
        let result = daemon.result(id).await.unwrap();
        assert_eq!(result.content_type.as_deref(), Some("application/pdf"));
        assert_eq!(result.bytes, pdf.len() as i64);
        assert_eq!(result.title, None);
        assert_eq!(result.links, serde_json::json!([]));
        daemon.stop().await;
    });
}

#[test]
fn requests_to_one_host_respect_its_rate() {
    block_on(async {
        let server = TestServer::pages("127.0.0.1");
        let daemon = RunningDaemon::start(|s| {
            s.limits.per_host.rate.rps = 5.0;
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(daemon.insert(&server.url(&format!("/p{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let times: Vec<Instant> = server.hits().iter().map(|h| h.at).collect();
        assert_eq!(times.len(), 6);
        // 5 req/s with burst 1: one request per 200 ms.
        let gaps = common::assert_spaced(&times, Duration::from_millis(200));
        eprintln!("5 req/s, burst 1: gaps between requests seen by the server: {gaps:?}");
        daemon.stop().await;
    });
}

#[test]
fn a_host_slow_to_answer_still_gets_its_quota() {
    block_on(async {
        // Every page takes the server 1 s to answer. At the default 2 req/s, burst 1 and 2 in
        // flight, a request may go 500 ms after the previous one was sent, while that one is
        // still waiting for its answer. Spacing from the answer instead would leave a 1 s gap
        // or more whenever the next request waits on an answer (1/Q + 1 s after the send).
        let server = TestServer::start("127.0.0.3", |req| {
            Reply::html(format!("<title>{}</title>", req.path)).with_delay(Duration::from_secs(1))
        });
        let daemon = RunningDaemon::start(|s| {
            s.limits.per_host.rate.rps = 2.0;
            s.limits.per_host.in_flight = 2.try_into().unwrap();
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(daemon.insert(&server.url(&format!("/p{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let times: Vec<Instant> = server.hits().iter().map(|h| h.at).collect();
        assert_eq!(times.len(), 5);
        let gaps = common::assert_spaced(&times, Duration::from_millis(500));
        eprintln!("2 req/s, 1 s answers: gaps between requests seen by the server: {gaps:?}");
        let longest = *gaps.iter().max().unwrap();
        assert!(
            longest < Duration::from_millis(900),
            "a request waited on the previous answer: {gaps:?}"
        );
        daemon.stop().await;
    });
}

#[test]
fn a_connection_idle_for_twice_the_host_interval_is_not_reused() {
    block_on(async {
        // At 1 req/s, a connection stays in the HTTP client's cache for 2 s after its last
        // request (twice the default per-host interval): with thousands of hosts, idle
        // connections to hosts already done would hold descriptors and be walked by curl
        // whenever one is handed back (`Pool` in src/fetch.rs).
        let server = TestServer::pages("127.0.0.4");
        let daemon = RunningDaemon::start(|s| {
            s.limits.per_host.rate.rps = 1.0;
        })
        .await;
        let ids = [
            daemon.insert(&server.url("/first")).await,
            daemon.insert(&server.url("/second")).await,
        ];
        daemon.wait_all_done(&ids).await;
        let hits = server.hits();
        // The second request, a quota interval (1 s) after the first, reused its connection.
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].connection, hits[1].connection, "{hits:?}");
        // The condition here is time itself: the connection idles past its 2 s.
        runtime::sleep(Duration::from_millis(2500)).await;
        let third = daemon.insert(&server.url("/third")).await;
        assert_eq!(daemon.wait_finished(third).await.status, "done");
        let hits = server.hits();
        assert_eq!(hits.len(), 3);
        assert_ne!(hits[1].connection, hits[2].connection, "{hits:?}");
        daemon.stop().await;
    });
}

#[test]
fn two_hosts_proceed_in_parallel() {
    block_on(async {
        let a = TestServer::pages("127.0.0.1");
        let b = TestServer::pages("127.0.0.2");
        let daemon = RunningDaemon::start(|s| {
            s.limits.per_host.rate.rps = 4.0;
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(daemon.insert(&a.url(&format!("/a{i}"))).await);
            ids.push(daemon.insert(&b.url(&format!("/b{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let (a_hits, b_hits) = (a.hits(), b.hits());
        assert_eq!((a_hits.len(), b_hits.len()), (4, 4));
        // Each host alone needs 750 ms (4 requests at 4/s). Were the hosts served one after
        // the other, one host's first request would come after the other's last.
        assert!(b_hits[0].at < a_hits[3].at && a_hits[0].at < b_hits[3].at);
        daemon.stop().await;
    });
}

async fn a_slow_host_does_not_starve_a_fast_one(backend: Backend) {
    let slow = TestServer::start("127.0.0.3", |_| {
        Reply::html("<title>slow</title>").with_delay(Duration::from_secs(2))
    });
    let fast = TestServer::pages("127.0.0.4");
    // Room for 8 requests in all, so that only the per-host cap can keep the slow host
    // (40 jobs waiting, 2 s each) to 2 at once.
    const PER_HOST: usize = 2;
    let daemon = RunningDaemon::start_on(
        TempDb::on(backend).await,
        |s| {
            s.limits.max_in_flight = 8.try_into().unwrap();
            s.limits.per_host.in_flight = PER_HOST.try_into().unwrap();
        },
        |sql| {
            let (slow, fast) = (slow.url("/s"), fast.url("/f"));
            async move {
                // The slow host's jobs are older and more important, and there are many.
                for i in 0..40 {
                    sql.query("INSERT INTO jobs (url, priority) VALUES ($1, 10)")
                        .bind(format!("{slow}{i}"))
                        .execute()
                        .await;
                }
                for i in 0..10 {
                    sql.insert(&format!("{fast}{i}")).await;
                }
            }
        },
    )
    .await;
    wait_until("all fast-host jobs to be done", || async {
        daemon
            .sql
            .int("SELECT COUNT(*) FROM jobs WHERE url LIKE '%/f%' AND status = 'done'")
            .await
            == 10
    })
    .await;
    // The slow host is sent as many requests at once as its cap allows...
    wait_until(
        "the slow host to answer its cap of requests at once",
        || async { slow.most_at_once() >= PER_HOST },
    )
    .await;
    let slow_done = daemon
        .sql
        .int("SELECT COUNT(*) FROM jobs WHERE url LIKE '%/s%' AND status = 'done'")
        .await;
    assert!(
        slow_done <= 4,
        "fast host finished while the slow one had done {slow_done}"
    );
    assert!(
        slow.hits().len() <= 6,
        "slow host kept within its in-flight cap"
    );
    daemon.stop().await;
    // ...and never more, all the while it ran (the global cap would have let it have 8).
    assert_eq!(
        slow.most_at_once(),
        PER_HOST,
        "requests at once at the slow host"
    );
    assert!(
        fast.most_at_once() <= PER_HOST,
        "{} requests at once at the fast host",
        fast.most_at_once()
    );
}

async fn higher_priority_runs_first_within_a_host(backend: Backend) {
    // Replies take long enough that requests sent together would overlap at the server.
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html("<title>page</title>").with_delay(Duration::from_millis(50))
    });
    let daemon = RunningDaemon::start_on(
        TempDb::on(backend).await,
        |s| s.limits.per_host.in_flight = 1.try_into().unwrap(),
        |sql| {
            let url = server.url("/");
            async move {
                for (name, priority) in [("low", -5), ("mid", 0), ("top", 9), ("mid2", 0)] {
                    sql.query("INSERT INTO jobs (url, priority) VALUES ($1, $2)")
                        .bind(format!("{url}{name}"))
                        .bind(priority)
                        .execute()
                        .await;
                }
            }
        },
    )
    .await;
    wait_until("four requests", || async { server.hits().len() == 4 }).await;
    let order: Vec<String> = server.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(order, ["/top", "/mid", "/mid2", "/low"]);
    daemon.stop().await;
    // Each ran before the next began: the host's cap of 1, not only the order of claims.
    assert_eq!(server.most_at_once(), 1, "requests at once");
}

async fn expired_leases_of_a_dead_daemon_are_claimed_again(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let url = server.url("/orphan");
    let last = server.url("/poison");
    let daemon = RunningDaemon::start_on(
        TempDb::on(backend).await,
        |_| {},
        |sql| async move {
            // Rows as a daemon that was kill -9'd would leave them.
            sql.query(
                "INSERT INTO jobs (url, status, host, attempts, lease_owner, lease_expires_at)
                 VALUES ($1, 'running', '127.0.0.1', 1, 'dead-daemon', '2000-01-01T00:00:00.000Z'),
                        ($2, 'running', '127.0.0.1', 3, 'dead-daemon', '2000-01-01T00:00:00.000Z')",
            )
            .bind(url)
            .bind(last)
            .execute()
            .await;
        },
    )
    .await;
    let job = daemon.wait_finished(1).await;
    assert_eq!(job.status, "done");
    assert_eq!(job.attempts, 2, "the dead daemon's attempt counts");
    // A job whose last attempt died with its daemon is not run again forever.
    let job = daemon.wait_finished(2).await;
    assert_eq!(job.status, "failed");
    assert!(job.error.unwrap().starts_with("lease expired"));
    assert!(server.hits_for("/poison").is_empty());
    daemon.stop().await;
}

async fn a_cancelled_job_is_never_fetched(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let (keep, cancel) = (server.url("/keep"), server.url("/cancel"));
    let daemon = RunningDaemon::start_on(
        TempDb::on(backend).await,
        |_| {},
        |sql| async move {
            sql.insert(&cancel).await;
            sql.execute("UPDATE jobs SET status = 'cancelled' WHERE id = 1")
                .await;
            sql.insert(&keep).await;
        },
    )
    .await;
    assert_eq!(daemon.wait_finished(2).await.status, "done");
    assert_eq!(daemon.job(1).await.status, "cancelled");
    assert!(server.hits_for("/cancel").is_empty());
    daemon.stop().await;
}

async fn cancelling_a_running_job_wins_over_its_result(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |_| {
        Reply::html("<title>late</title>").with_delay(Duration::from_millis(800))
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon.insert(&server.url("/slow")).await;
    wait_until("the request to arrive", || async {
        !server.hits().is_empty()
    })
    .await;
    daemon
        .sql
        .execute("UPDATE jobs SET status = 'cancelled' WHERE id = 1")
        .await;
    let sql = daemon.sql.clone();
    // Stopping waits for the in-flight attempt, whose write then finds its lease gone.
    let report = daemon.stop().await;
    assert_eq!(report.lost, 1);
    assert_eq!(sql.job(id).await.status, "cancelled");
    assert!(sql.result(id).await.is_none());
}

async fn jobs_inserted_while_running_are_all_crawled(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let reader = daemon.db.user().await;
    let mut ids = Vec::new();
    for i in 0..100 {
        // One statement at a time, as a user with the database's own client would, with
        // reads between (on SQLite, they never fail with a busy error).
        ids.push(daemon.insert(&server.url(&format!("/n{i}"))).await);
        reader
            .int("SELECT COUNT(*) FROM jobs WHERE status = 'done'")
            .await;
    }
    daemon.wait_all_done(&ids).await;
    let paths: HashMap<String, usize> =
        server.hits().into_iter().fold(HashMap::new(), |mut m, h| {
            *m.entry(h.path).or_default() += 1;
            m
        });
    assert_eq!(paths.len(), 100);
    assert!(paths.values().all(|&n| n == 1), "each page fetched once");
    daemon.stop().await;
}

async fn a_job_cancelled_while_it_runs_gives_up_its_slot_at_the_next_renewal(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |req| match req.path.as_str() {
        "/slow" => Reply::html("<title>late</title>").with_delay(Duration::from_secs(60)),
        _ => Reply::html("<title>next</title>"),
    });
    // One job at a time on the host, and a lease renewed every second.
    let daemon = RunningDaemon::on(backend, |s| {
        s.limits.per_host.in_flight = std::num::NonZeroUsize::MIN;
        s.daemon.lease = Duration::from_secs(3);
        s.daemon.shutdown_grace = Duration::from_secs(1);
        s.fetch.timeout = Duration::from_secs(120);
    })
    .await;
    let slow = daemon.insert(&server.url("/slow")).await;
    wait_until("the slow request to arrive", || async {
        !server.hits().is_empty()
    })
    .await;
    let next = daemon.insert(&server.url("/next")).await;
    daemon
        .sql
        .execute(&format!(
            "UPDATE jobs SET status = 'cancelled' WHERE id = {slow}"
        ))
        .await;
    // Well before the slow answer would free the host's only slot.
    assert_eq!(daemon.wait_finished(next).await.status, "done");
    assert_eq!(daemon.job(slow).await.status, "cancelled");
    let sql = daemon.sql.clone();
    let report = daemon.stop().await;
    assert_eq!(report.lost, 1);
    assert!(sql.result(slow).await.is_none());
}

async fn a_new_job_is_claimed_soon_after_it_is_committed(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let daemon = RunningDaemon::on(backend, |s| {
        s.daemon.poll_interval = Duration::from_millis(100)
    })
    .await;
    let inserted = Instant::now();
    daemon.insert(&server.url("/soon")).await;
    wait_until("the request", || async { !server.hits().is_empty() }).await;
    let latency = server.hits()[0].at - inserted;
    eprintln!("insert-to-request latency: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    daemon.stop().await;
}

#[test]
fn a_host_override_slows_only_that_host() {
    block_on(async {
        let limited = TestServer::pages("127.0.0.5");
        let free = TestServer::pages("127.0.0.6");
        let daemon = RunningDaemon::start(|s| {
            let mut slow = s.limits.per_host.clone();
            slow.rate.rps = 4.0;
            s.limits.hosts.insert("127.0.0.5".to_owned(), slow);
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(daemon.insert(&limited.url(&format!("/l{i}"))).await);
            ids.push(daemon.insert(&free.url(&format!("/f{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let times =
            |server: &TestServer| -> Vec<Instant> { server.hits().iter().map(|h| h.at).collect() };
        // The override: 4 req/s, one request per 250 ms.
        common::assert_spaced(&times(&limited), Duration::from_millis(250));
        // The default here is 1000 req/s: the other host is not held to the override.
        let free_times = times(&free);
        let free_span = *free_times.last().unwrap() - free_times[0];
        assert!(free_span < Duration::from_millis(500), "{free_span:?}");
        daemon.stop().await;
    });
}

#[test]
fn the_global_quota_spans_all_hosts() {
    block_on(async {
        let a = TestServer::pages("127.0.0.7");
        let b = TestServer::pages("127.0.0.8");
        let daemon = RunningDaemon::start(|s| {
            s.limits.global_rate = Some(crawlq::settings::Rate {
                rps: 5.0,
                burst: 1.try_into().unwrap(),
            });
        })
        .await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(daemon.insert(&a.url(&format!("/a{i}"))).await);
            ids.push(daemon.insert(&b.url(&format!("/b{i}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let mut times: Vec<Instant> = a
            .hits()
            .iter()
            .chain(b.hits().iter())
            .map(|h| h.at)
            .collect();
        times.sort();
        // 5 req/s over both hosts together: one request per 200 ms.
        common::assert_spaced(&times, Duration::from_millis(200));
        daemon.stop().await;
    });
}

#[test]
fn odd_values_written_by_users_do_not_stall_the_daemon() {
    block_on(async {
        let server = TestServer::pages("127.0.0.1");
        let good = server.url("/good");
        let daemon = RunningDaemon::start_on(
            TempDb::new(),
            |_| {},
            |sql| async move {
                let sql = sql.sqlite();
                // SQLite keeps whatever type it is given: a blob URL, non-UTF-8 selectors,
                // a negative or textual max_attempts.
                execute(sql, "INSERT INTO jobs (url) VALUES (X'00FF68747470')").await;
                execute(
                    sql,
                    "INSERT INTO jobs (url, selectors) VALUES ('http://127.0.0.1:1/', X'FFFE')",
                )
                .await;
                sqlx::query(
                    "INSERT INTO jobs (url, max_attempts) VALUES (?1, -4), (?1 || '2', 'many')",
                )
                .bind(&good)
                .execute(sql)
                .await
                .unwrap();
            },
        )
        .await;
        let job = daemon.wait_finished(1).await;
        assert_eq!(job.status, "failed");
        assert!(job.error.unwrap().starts_with("invalid URL"));
        let job = daemon.wait_finished(2).await;
        assert_eq!(job.status, "failed");
        assert!(job
            .error
            .unwrap()
            .starts_with("selectors is not valid JSON"));
        assert_eq!(daemon.wait_finished(3).await.status, "done");
        assert_eq!(daemon.wait_finished(4).await.status, "done");
        daemon.stop().await;
    });
}

#[test]
fn the_body_cap_holds_for_compressed_bodies_without_a_usable_length() {
    block_on(async {
        use std::io::Write;
        // 5 000 bytes of HTML that travel as a few dozen gzip bytes: only the decoded
        // stream can tell it is over the cap.
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&[b'x'; 5000]).unwrap();
        let compressed = gzip.finish().unwrap();
        assert!(compressed.len() < 100);
        let server = TestServer::start("127.0.0.1", move |_| {
            Reply::bytes("text/html", compressed.clone()).with_header("Content-Encoding", "gzip")
        });
        let daemon = RunningDaemon::start(|s| s.fetch.max_body_bytes = 1000).await;
        let id = daemon.insert(&server.url("/bomb")).await;
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "failed");
        assert!(job
            .error
            .unwrap()
            .contains("larger than fetch.max_body_bytes (1000 bytes)"));
        daemon.stop().await;
    });
}

#[test]
fn unusual_statuses_and_non_ascii_headers_do_not_break_the_fetch() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| match request.path.as_str() {
            "/299" => Reply::html("<title>odd</title>").with_status(299),
            "/utf8-header" => Reply::html("<title>named</title>")
                .with_header("Content-Disposition", "inline; filename=\"café.html\""),
            "/utf8-location" => Reply::redirect(302, "/café"),
            "/caf%C3%A9" => Reply::html("<title>arrived</title>"),
            _ => Reply::status(404),
        });
        let daemon = RunningDaemon::start(|_| {}).await;
        let odd = daemon.insert(&server.url("/299")).await;
        let named = daemon.insert(&server.url("/utf8-header")).await;
        let moved = daemon.insert(&server.url("/utf8-location")).await;
        let job = daemon.wait_finished(odd).await;
        assert_eq!(job.status, "done", "{:?}", job.error);
        assert_eq!(daemon.result(odd).await.unwrap().http_status, 299);
        assert_eq!(daemon.wait_finished(named).await.status, "done");
        let job = daemon.wait_finished(moved).await;
        assert_eq!(job.status, "done", "{:?}", job.error);
        let result = daemon.result(moved).await.unwrap();
        assert_eq!(result.final_url, server.url("/caf%C3%A9"));
        assert_eq!(result.title.as_deref(), Some("arrived"));
        daemon.stop().await;
    });
}

async fn editing_the_url_of_a_running_job_fetches_the_new_url(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |request| {
        let reply = Reply::html(format!("<title>{}</title>", request.path));
        if request.path == "/old" {
            reply.with_delay(Duration::from_millis(600))
        } else {
            reply
        }
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon.insert(&server.url("/old")).await;
    wait_until("the old URL's request", || async {
        !server.hits().is_empty()
    })
    .await;
    // Resetting attempts too makes the new claim's attempt number equal the old one's:
    // only the lease token tells the two attempts apart.
    daemon
        .sql
        .query("UPDATE jobs SET url = $1, attempts = 0 WHERE id = $2")
        .bind(server.url("/new"))
        .bind(id)
        .execute()
        .await;
    wait_until("the new URL's result", || async {
        daemon
            .result(id)
            .await
            .is_some_and(|r| r.title.as_deref() == Some("/new"))
    })
    .await;
    // Let the old attempt finish: its result must not replace the new one.
    let sql = daemon.sql.clone();
    let report = daemon.stop().await;
    assert_eq!(report.lost, 1);
    let job = sql.job(id).await;
    assert_eq!(job.status, "done");
    assert_eq!(job.attempts, 1);
    let result = sql.result(id).await.unwrap();
    assert_eq!(
        (result.url, result.title.as_deref()),
        (server.url("/new"), Some("/new"))
    );
}

#[test]
fn a_locked_database_pauses_the_daemon_without_losing_or_repeating_work() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| {
            let reply = Reply::html(format!("<title>{}</title>", request.path));
            // Outlasts the lock below, so the job is still running when the lock goes away.
            if request.path == "/long" {
                reply.with_delay(Duration::from_millis(5000))
            } else {
                reply
            }
        });
        let daemon = RunningDaemon::start(|s| {
            s.database.busy_timeout = Duration::from_millis(100);
            s.fetch.timeout = Duration::from_secs(10);
            s.daemon.lease = Duration::from_secs(3);
            s.daemon.shutdown_grace = Duration::from_secs(1);
        })
        .await;
        let long = daemon.insert(&server.url("/long")).await;
        wait_until("the long request", || async { !server.hits().is_empty() }).await;

        // A user holds the write lock for longer than the lease: every daemon write fails.
        common::hold_write_lock(&daemon.db.path, Duration::from_secs(4)).await;

        // The daemon comes back by itself and keeps going.
        let after = daemon.insert(&server.url("/after")).await;
        assert_eq!(daemon.wait_finished(after).await.status, "done");
        let job = daemon.wait_finished(long).await;
        assert_eq!(job.status, "done");
        assert_eq!(job.attempts, 1, "its lease was renewed, not taken back");
        assert_eq!(server.hits_for("/long").len(), 1, "fetched once");
        let report = daemon.stop().await;
        assert!(report.store_errors > 0, "the lock was noticed: {report:?}");
    });
}

#[test]
fn an_idle_daemon_recovers_from_a_locked_database() {
    block_on(async {
        let server = TestServer::pages("127.0.0.1");
        let daemon = RunningDaemon::start(|s| {
            s.database.busy_timeout = Duration::from_millis(100);
        })
        .await;
        // Running first: its start-up write (its `workers` row) meeting the lock would
        // stop it before its loop began, which is start-up failing, not what this is about.
        daemon.sql.wait_for_workers(1).await;
        // Nothing is in flight, so no finished job will be what finds the database usable.
        common::hold_write_lock(&daemon.db.path, Duration::from_millis(1500)).await;
        let id = daemon.insert(&server.url("/after-lock")).await;
        assert_eq!(daemon.wait_finished(id).await.status, "done");
        let report = daemon.stop().await;
        assert!(report.store_errors > 0, "the lock was noticed: {report:?}");
    });
}

#[test]
fn an_unanswered_connect_times_out_with_its_own_reason() {
    block_on(async {
        use socket2::{Domain, Socket, Type};
        // A listener whose accept queue is full: the kernel leaves further SYNs unanswered,
        // which is what a black-holed address looks like to the client.
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let _fillers: Vec<_> = (0..4)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
            .collect();
        let daemon = RunningDaemon::start(|s| {
            s.fetch.connect_timeout = Duration::from_millis(500);
        })
        .await;
        let id: i64 =
            sqlx::query_scalar("INSERT INTO jobs (url, max_attempts) VALUES (?1, 1) RETURNING id")
                .bind(format!("http://{addr}/"))
                .fetch_one(daemon.sql.sqlite())
                .await
                .unwrap();
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(
            error.contains("timed out after 0.5 s connecting to 127.0.0.1"),
            "{error}"
        );
        daemon.stop().await;
    });
}

async fn a_refused_connection_is_retried_then_failed_with_a_reason(backend: Backend) {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon
        .sql
        .query("INSERT INTO jobs (url, max_attempts) VALUES ($1, 2) RETURNING id")
        .bind(format!("http://127.0.0.1:{port}/"))
        .int()
        .await;
    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.attempts, 2);
    let error = job.error.unwrap();
    assert!(error.contains("could not connect to 127.0.0.1"), "{error}");
    assert!(error.ends_with("(gave up after 2 attempts)"), "{error}");
    assert!(daemon.result(id).await.is_none());
    daemon.stop().await;
}

#[test]
fn pages_are_decoded_by_their_declared_charset() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |request| match request.path.as_str() {
            "/sjis" => {
                let (body, _, _) = encoding_rs::SHIFT_JIS.encode("<title>日本語のページ</title>");
                Reply::bytes("text/html; charset=Shift_JIS", body.into_owned())
            }
            "/latin1" => Reply::bytes(
                "text/html; charset=ISO-8859-1",
                b"<title>Caf\xe9</title>".to_vec(),
            ),
            "/meta" => Reply::bytes(
                "text/html",
                b"<head><meta charset=\"windows-1252\"><title>na\xefve \x93quotes\x94</title>"
                    .to_vec(),
            ),
            _ => Reply::bytes("text/html", b"<title>bad \xff byte</title>".to_vec()),
        });
        let daemon = RunningDaemon::start(|_| {}).await;
        let cases = [
            ("/sjis", "日本語のページ"),
            ("/latin1", "Café"),
            ("/meta", "naïve \u{201c}quotes\u{201d}"),
            ("/invalid", "bad \u{fffd} byte"),
        ];
        for (path, title) in cases {
            let id = daemon.insert(&server.url(path)).await;
            assert_eq!(daemon.wait_finished(id).await.status, "done");
            assert_eq!(
                daemon.result(id).await.unwrap().title.as_deref(),
                Some(title),
                "{path}"
            );
        }
        daemon.stop().await;
    });
}

/// A handler that answers the first request with 429 and `Retry-After: <retry_after>` and
/// every later one with a page, and the instant that 429 went out.
fn says_wait_once(
    retry_after: &'static str,
) -> (
    impl Fn(&common::server::Request) -> Reply,
    Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let answered = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let seen = answered.clone();
    let handler = move |_: &common::server::Request| {
        let mut first = seen.lock().unwrap();
        if first.is_none() {
            *first = Some(Instant::now());
            return Reply::status(429).with_header("Retry-After", retry_after);
        }
        Reply::html("<title>ok</title>")
    };
    (handler, answered)
}

/// Asserts no request in `hits` arrived before `resume_at` (server-side arrival times).
fn assert_none_before(hits: &[common::server::Hit], resume_at: Instant) {
    for hit in hits {
        assert!(
            hit.at >= resume_at,
            "{} came {:?} early",
            hit.path,
            resume_at - hit.at
        );
    }
}

async fn retry_after_seconds_pauses_the_whole_host(backend: Backend) {
    let (handler, answered_429) = says_wait_once("2");
    let server = TestServer::start("127.0.0.1", handler);
    let other = TestServer::pages("127.0.0.2");
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let limited = daemon.insert(&server.url("/limited")).await;
    wait_until("the 429", || async {
        answered_429.lock().unwrap().is_some()
    })
    .await;
    let mut later = Vec::new();
    for i in 0..3 {
        later.push(daemon.insert(&server.url(&format!("/later{i}"))).await);
    }
    let elsewhere = daemon.insert(&other.url("/free")).await;
    assert_eq!(daemon.wait_finished(elsewhere).await.status, "done");
    let job = daemon.wait_finished(limited).await;
    assert_eq!(job.status, "done");
    assert_eq!(job.attempts, 2, "the retry counts as an attempt");
    daemon.wait_all_done(&later).await;
    let resume_at = answered_429.lock().unwrap().unwrap() + Duration::from_secs(2);
    let hits = server.hits();
    assert_eq!(hits.len(), 5);
    assert_none_before(&hits[1..], resume_at);
    assert!(other.hits()[0].at < resume_at, "another host is not paused");
    let paused = daemon
        .sql
        .int("SELECT COUNT(*) FROM hosts WHERE host = '127.0.0.1' AND paused_until IS NOT NULL")
        .await;
    assert_eq!(paused, 1, "the pause is kept with the host");
    daemon.stop().await;
}

async fn retry_after_as_an_http_date_is_honoured(backend: Backend) {
    // The server says "not before <date>", and notes the instant that date stands for.
    let not_before = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let noted = not_before.clone();
    let server = TestServer::start("127.0.0.1", move |_| {
        let mut resume = noted.lock().unwrap();
        if resume.is_some() {
            return Reply::html("<title>back</title>");
        }
        let now = std::time::SystemTime::now();
        let date = now + Duration::from_secs(2);
        // HTTP-dates have whole seconds: the wait ends at the start of that second.
        let whole = std::time::UNIX_EPOCH
            + Duration::from_secs(
                date.duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            );
        *resume = Some(Instant::now() + whole.duration_since(now).unwrap());
        Reply::status(503).with_header("Retry-After", &httpdate::fmt_http_date(whole))
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon.insert(&server.url("/busy")).await;
    let job = daemon.wait_finished(id).await;
    assert_eq!(job.status, "done");
    let hits = server.hits();
    assert_eq!(hits.len(), 2);
    let resume = not_before.lock().unwrap().unwrap();
    assert!(hits[1].at >= resume, "came {:?} early", resume - hits[1].at);
    daemon.stop().await;
}

async fn a_request_already_waiting_for_its_turn_respects_a_new_pause(backend: Backend) {
    // Whichever request comes first is told to wait.
    let (handler, answered_429) = says_wait_once("2");
    let server = TestServer::start("127.0.0.1", handler);
    let (first, second) = (server.url("/first"), server.url("/second"));
    // Both jobs are claimed together; the other one waits 0.5 s for the host's quota
    // and is still waiting when the 429 arrives.
    let daemon = RunningDaemon::start_on(
        TempDb::on(backend).await,
        |s| s.limits.per_host.rate.rps = 2.0,
        |sql| async move {
            sql.insert(&first).await;
            sql.insert(&second).await;
        },
    )
    .await;
    assert_eq!(daemon.wait_finished(1).await.status, "done");
    assert_eq!(daemon.wait_finished(2).await.status, "done");
    let resume_at = answered_429.lock().unwrap().unwrap() + Duration::from_secs(2);
    let hits = server.hits();
    assert_eq!(hits.len(), 3, "the 429, then both jobs after the pause");
    assert_none_before(&hits[1..], resume_at);
    daemon.stop().await;
}

async fn the_workers_row_carries_a_heartbeat_and_counters(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let daemon =
        RunningDaemon::on(backend, |s| s.daemon.heartbeat = Duration::from_millis(100)).await;
    let ids = [
        daemon.insert(&server.url("/a")).await,
        daemon.insert(&server.url("/b")).await,
    ];
    daemon.wait_all_done(&ids).await;
    wait_until("the heartbeat to count both pages", || async {
        daemon.sql.int("SELECT done FROM workers").await == 2
    })
    .await;
    let (hostname, pid, state, claimed, bytes): (String, i64, String, i64, i64) = daemon
        .sql
        .query("SELECT hostname, pid, state, claimed, bytes FROM worker_status")
        .one()
        .await;
    assert_eq!(hostname, crawlq::daemon::this_host());
    assert_eq!(pid, i64::from(std::process::id()));
    assert_eq!(state, "running");
    assert_eq!(claimed, 2);
    assert!(bytes > 0);
    let sql = daemon.sql.clone();
    let report = daemon.stop().await;
    let (state, done): (String, i64) = sql
        .query("SELECT state, done FROM worker_status")
        .one()
        .await;
    assert_eq!((state.as_str(), done), ("stopped", report.done as i64));
}

async fn hostile_rows_end_with_a_reason_or_a_documented_meaning(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let failed = [
        ("   ", "invalid URL: empty"),
        ("http://[::1]:99999/", "invalid URL"),
        ("http://user@/nohost", "invalid URL"),
    ];
    let mut ids = Vec::new();
    for (url, _) in failed {
        ids.push(daemon.insert(url).await);
    }
    let huge = format!("http://127.0.0.1/{}", "a".repeat(100 * 1024));
    ids.push(daemon.insert(&huge).await);
    for (id, expected) in ids.iter().zip(
        failed
            .iter()
            .map(|(_, e)| *e)
            .chain(["bytes long, the limit is 8192"]),
    ) {
        let job = daemon.wait_finished(*id).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(error.contains(expected), "{error}");
        assert!(
            error.len() < 300,
            "the reason does not echo 100 KB: {error}"
        );
    }

    // Extreme numbers are taken as they are; surrounding whitespace is trimmed.
    let sql = &daemon.sql;
    for (column, value) in [
        ("priority", i64::MIN),
        ("priority", i64::MAX),
        ("max_depth", i64::MAX),
        ("max_depth", -5),
    ] {
        sql.query(format!("INSERT INTO jobs (url, {column}) VALUES ($1, $2)"))
            .bind(format!("  {}  ", server.url(&format!("/{column}/{value}"))))
            .bind(value)
            .execute()
            .await;
    }
    daemon.wait_all_done(&[5, 6, 7, 8]).await;

    // An IDN host is admitted in its ASCII (punycode) form; run_after keeps it from
    // being fetched (no test leaves loopback).
    sql.execute(
        "INSERT INTO jobs (url, run_after) VALUES ('http://Bücher.example/', '2999-01-01')",
    )
    .await;
    wait_until("the IDN job's admission", || async {
        sql.text("SELECT host FROM jobs WHERE id = 9")
            .await
            .is_some()
    })
    .await;
    let host = sql.text("SELECT host FROM jobs WHERE id = 9").await;
    assert_eq!(host.as_deref(), Some("xn--bcher-kva.example"));

    // What the database itself refuses, with a message that names the column (the
    // constraint, on PostgreSQL).
    let refusals = match backend {
        Backend::Sqlite => [
            "NOT NULL constraint failed: jobs.url",
            "NOT NULL constraint failed: jobs.priority",
            "CHECK constraint failed",
        ],
        Backend::Postgres => [
            r#"null value in column "url" of relation "jobs" violates not-null constraint"#,
            r#"null value in column "priority" of relation "jobs" violates not-null constraint"#,
            r#"violates check constraint "jobs_status_check""#,
        ],
    };
    for (statement, expected) in [
        "INSERT INTO jobs (url) VALUES (NULL)",
        "INSERT INTO jobs (url, priority) VALUES ('http://x/', NULL)",
        "INSERT INTO jobs (url, status) VALUES ('http://x/', 'paused')",
    ]
    .into_iter()
    .zip(refusals)
    {
        let error = sql.query(statement).try_execute().await.unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
    daemon.stop().await;
}

async fn results_that_cannot_be_stored_keep_their_slots_so_claiming_stops_and_nothing_is_lost(
    backend: Backend,
) {
    let server = TestServer::pages("127.0.0.1");
    let daemon = RunningDaemon::on(backend, |s| {
        s.limits.max_in_flight = std::num::NonZeroUsize::new(3).unwrap();
        // A healthy daemon renews its leases every lease / 3: with 600 s leases, not
        // during this test, so each renewal it makes is one of a failing turn (below).
        s.daemon.lease = Duration::from_secs(600);
    })
    .await;
    // Results cannot be written (as on a full disk), while claims still can.
    // Each turn that failed to store (it retries once a second) renews the leases of the
    // jobs the daemon holds, so that they do not lapse while it cannot store. The failed
    // store itself leaves no trace in the database; those renewals do: one row per job
    // renewed, all of one renewal with the same expiry.
    let (no_room, renewals, room_again): (&[&str], &[&str], &str) = match backend {
        Backend::Sqlite => (
            &["CREATE TRIGGER no_room BEFORE INSERT ON results
               BEGIN SELECT RAISE(ABORT, 'simulated full disk'); END"],
            &[
                "CREATE TABLE renewals (lease_expires_at TEXT NOT NULL)",
                "CREATE TRIGGER renewal AFTER UPDATE OF lease_expires_at ON jobs
                 WHEN OLD.status = 'running' AND NEW.status = 'running'
                 BEGIN INSERT INTO renewals VALUES (NEW.lease_expires_at); END",
            ],
            "DROP TRIGGER no_room",
        ),
        Backend::Postgres => (
            &[
                "CREATE FUNCTION no_room() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'simulated full disk'; END $$",
                "CREATE TRIGGER no_room BEFORE INSERT ON results
                 FOR EACH ROW EXECUTE FUNCTION no_room()",
            ],
            &[
                "CREATE TABLE renewals (lease_expires_at TIMESTAMPTZ NOT NULL)",
                "CREATE FUNCTION renewal() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO renewals VALUES (NEW.lease_expires_at); RETURN NULL; END $$",
                "CREATE TRIGGER renewal AFTER UPDATE OF lease_expires_at ON jobs
                 FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status = 'running')
                 EXECUTE FUNCTION renewal()",
            ],
            "DROP TRIGGER no_room ON results",
        ),
    };
    for statement in no_room.iter().chain(renewals) {
        daemon.sql.execute(statement).await;
    }
    let count = |query: &'static str| daemon.sql.int(query);
    let failed_turns = || count("SELECT COUNT(DISTINCT lease_expires_at) FROM renewals");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(daemon.insert(&server.url(&format!("/p{i}"))).await);
    }
    wait_until("the first three fetches", || async {
        server.hits().len() >= 3
    })
    .await;
    wait_until("a turn that failed to store", || async {
        failed_turns().await >= 1
    })
    .await;
    // A response that is in frees its request's slot, so one more round of three may be
    // claimed before the first failed store is known; after it, results hold their
    // slots until they are stored, and what was claimed is all that is fetched.
    wait_until("every claimed job to be fetched", || async {
        let claimed = count("SELECT COUNT(*) FROM jobs WHERE status = 'running'").await;
        server.hits().len() as i64 == claimed
    })
    .await;
    let settled = server.hits().len();
    assert!(settled <= 6, "{settled} fetched before claiming stopped");
    // Several store retries (one a second) later, nothing more has been claimed.
    let before = failed_turns().await;
    wait_until("three more turns that failed to store", || async {
        failed_turns().await >= before + 3
    })
    .await;
    assert_eq!(
        server.hits().len(),
        settled,
        "it claimed while it could not store"
    );
    let claimed = count("SELECT COUNT(*) FROM jobs WHERE status = 'running'").await;
    assert_eq!(
        claimed as usize, settled,
        "jobs claimed while it could not store"
    );
    let failed = count("SELECT COUNT(*) FROM jobs WHERE status = 'failed'").await;
    assert_eq!(failed, 0);
    let retried = failed_turns().await;

    daemon.sql.execute(room_again).await;
    daemon.wait_all_done(&ids).await;
    assert_eq!(
        server.hits().len(),
        10,
        "each page fetched once, none again"
    );
    let report = daemon.stop().await;
    // Each of those turns had first tried to store, and failed.
    assert!(
        report.store_errors >= retried as u64,
        "{retried} failing turns seen, {report:?}"
    );
}
