//! Fetching a URL again: recrawls keep one results row per fetch, conditional GETs turn an
//! unchanged page into a 304 stored as `not_modified`, and non-HTML bodies are stored as
//! they are (optionally the raw body too). Every test on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::server::{Reply, TestServer};
use crate::common::{on_both_backends, wait_until, Backend, RunningDaemon};

on_both_backends!(
    a_recrawled_job_keeps_one_result_per_fetch_and_asks_only_for_changes,
    a_new_job_for_a_fetched_url_is_a_conditional_get,
    with_conditional_get_off_every_fetch_is_plain,
    a_pdf_is_stored_with_its_type_and_size_and_its_body_kept_when_asked,
    bodies_are_not_kept_by_default,
    recrawl_every_must_be_a_number_of_seconds,
    a_version_is_reused_only_for_the_same_selectors_and_never_for_a_page_whose_links_are_followed,
);

/// A page with an ETag and a Last-Modified date whose version becomes "v2" from the
/// `changes_at`-th request on. A request naming the current ETag gets a 304.
fn versioned_page(changes_at: usize) -> (TestServer, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let server = TestServer::start("127.0.0.1", move |request| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let version = if n >= changes_at { "v2" } else { "v1" };
        let etag = format!("\"{version}\"");
        if request.header("If-None-Match") == Some(etag.as_str()) {
            return Reply::status(304).with_header("ETag", &etag);
        }
        Reply::html(format!(
            "<title>{version}</title><a href=\"/{version}/link\">next</a>"
        ))
        .with_header("ETag", &etag)
        .with_header("Last-Modified", "Sat, 21 Nov 2026 10:00:00 GMT")
    });
    (server, requests)
}

/// fetch_no, http_status, not_modified (0 or 1), title, links (JSON text)
type FetchRow = (i64, i64, i64, Option<String>, String);

async fn fetches(daemon: &RunningDaemon, job: i64) -> Vec<FetchRow> {
    daemon
        .sql
        .query(
            "SELECT fetch_no, http_status, not_modified, title, CAST(links AS TEXT) FROM results
              WHERE job_id = $1 ORDER BY fetch_no",
        )
        .bind(job)
        .all()
        .await
}

async fn a_recrawled_job_keeps_one_result_per_fetch_and_asks_only_for_changes(backend: Backend) {
    let (server, _) = versioned_page(3);
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let job = daemon
        .sql
        .query("INSERT INTO jobs (url, recrawl_every) VALUES ($1, 1) RETURNING id")
        .bind(server.url("/watched"))
        .int()
        .await;
    wait_until("three fetches", || async {
        fetches(&daemon, job).await.len() >= 3
    })
    .await;
    let rows = fetches(&daemon, job).await;
    let v1_links = r#"["http://ADDR/v1/link"]"#.replace("ADDR", &server.addr().to_string());
    let v2_links = r#"["http://ADDR/v2/link"]"#.replace("ADDR", &server.addr().to_string());
    assert_eq!(
        rows[..3],
        [
            (1, 200, 0, Some("v1".to_owned()), v1_links.clone()),
            // Unchanged: a 304, with the content of the fetch it confirmed.
            (2, 304, 1, Some("v1".to_owned()), v1_links),
            (3, 200, 0, Some("v2".to_owned()), v2_links),
        ]
    );

    let hits = server.hits();
    assert_eq!(
        hits[0].header("If-None-Match"),
        None,
        "first fetch is plain"
    );
    for hit in &hits[1..3] {
        assert_eq!(hit.header("If-None-Match"), Some("\"v1\""));
        assert_eq!(
            hit.header("If-Modified-Since"),
            Some("Sat, 21 Nov 2026 10:00:00 GMT")
        );
    }
    for pair in hits.windows(2).take(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(900),
            "recrawled after about recrawl_every: {:?}",
            pair[1].at - pair[0].at
        );
    }

    // The job waits for its next fetch, with fresh attempts; the view shows the newest.
    let (status, fetch_no, attempts): (String, i64, i64) = daemon
        .sql
        .query("SELECT status, fetch_no, attempts FROM jobs WHERE id = $1")
        .bind(job)
        .one()
        .await;
    // (It may already be running its next fetch: recrawl_every is one second.)
    assert!(status == "queued" || status == "running", "{status}");
    assert!(fetch_no >= 4, "{fetch_no}");
    assert!(attempts <= 1, "{attempts}");
    let (latest, stored): (i64, i64) = daemon
        .sql
        .query(
            "SELECT (SELECT fetch_no FROM latest_results WHERE job_id = $1),
                    (SELECT MAX(fetch_no) FROM results WHERE job_id = $1)",
        )
        .bind(job)
        .one()
        .await;
    assert_eq!(latest, stored);
    assert!(latest >= 3);
    daemon.stop().await;
}

async fn a_new_job_for_a_fetched_url_is_a_conditional_get(backend: Backend) {
    let (server, requests) = versioned_page(usize::MAX);
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let first = daemon.insert(&server.url("/page")).await;
    daemon.wait_all_done(&[first]).await;
    let second = daemon.insert(&server.url("/page")).await;
    daemon.wait_all_done(&[second]).await;

    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        server.hits()[1].header("If-None-Match"),
        Some("\"v1\""),
        "the second job sent the first one's ETag"
    );
    let rows = fetches(&daemon, second).await;
    assert_eq!(rows.len(), 1);
    let (fetch_no, status, not_modified, title, _) = &rows[0];
    assert_eq!(
        (*fetch_no, *status, *not_modified, title.as_deref()),
        (1, 304, 1, Some("v1"))
    );
    daemon.stop().await;
}

async fn with_conditional_get_off_every_fetch_is_plain(backend: Backend) {
    let (server, _) = versioned_page(usize::MAX);
    let daemon = RunningDaemon::on(backend, |s| s.fetch.conditional_get = false).await;
    let first = daemon.insert(&server.url("/page")).await;
    daemon.wait_all_done(&[first]).await;
    let second = daemon.insert(&server.url("/page")).await;
    daemon.wait_all_done(&[second]).await;
    assert!(server
        .hits()
        .iter()
        .all(|h| h.header("If-None-Match").is_none()));
    assert_eq!(fetches(&daemon, second).await[0].1, 200);
    daemon.stop().await;
}

async fn a_pdf_is_stored_with_its_type_and_size_and_its_body_kept_when_asked(backend: Backend) {
    let pdf: Vec<u8> = b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\n<a href=\"/x\">\n%%EOF\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(5000))
        .collect();
    let served = pdf.clone();
    let server = TestServer::start("127.0.0.1", move |_| {
        Reply::bytes("application/pdf", served.clone())
    });
    let daemon = RunningDaemon::on(backend, |s| s.fetch.store_body = true).await;
    let id = daemon.insert(&server.url("/report.pdf")).await;
    daemon.wait_all_done(&[id]).await;
    let result = daemon.result(id).await.expect("a result row");
    assert_eq!(result.content_type.as_deref(), Some("application/pdf"));
    assert_eq!(result.bytes, pdf.len() as i64);
    assert_eq!(result.title, None);
    assert_eq!(result.links, serde_json::json!([]), "not parsed as HTML");

    let (encoding, gzipped): (String, Vec<u8>) = daemon
        .sql
        .query(
            "SELECT b.encoding, b.body FROM bodies b JOIN results r ON r.id = b.result_id
              WHERE r.job_id = $1",
        )
        .bind(id)
        .one()
        .await;
    assert_eq!(encoding, "gzip");
    assert_eq!(crawlq::body::gunzip(&gzipped).unwrap(), pdf);
    daemon.stop().await;
}

async fn bodies_are_not_kept_by_default(backend: Backend) {
    let server = TestServer::pages("127.0.0.1");
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let id = daemon.insert(&server.url("/p")).await;
    daemon.wait_all_done(&[id]).await;
    let kept = daemon.sql.int("SELECT COUNT(*) FROM bodies").await;
    assert_eq!(kept, 0);
    daemon.stop().await;
}

async fn recrawl_every_must_be_a_number_of_seconds(backend: Backend) {
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    for bad in ["0", "'daily'", "-5"] {
        let sql = format!("INSERT INTO jobs (url, recrawl_every) VALUES ('http://a.test/', {bad})");
        let refused = daemon.sql.query(sql).try_execute().await;
        assert!(refused.is_err(), "recrawl_every = {bad} was accepted");
    }
    daemon.stop().await;
}

async fn a_version_is_reused_only_for_the_same_selectors_and_never_for_a_page_whose_links_are_followed(
    backend: Backend,
) {
    let (server, _) = versioned_page(usize::MAX);
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let url = server.url("/page");
    let first = daemon.insert(&url).await;
    daemon.wait_all_done(&[first]).await;

    // Other selectors: the stored `data` would be wrong for it, so a full GET.
    let other_selectors = daemon
        .sql
        .query(r#"INSERT INTO jobs (url, selectors) VALUES ($1, '{"t": "title"}') RETURNING id"#)
        .bind(&url)
        .int()
        .await;
    daemon.wait_all_done(&[other_selectors]).await;
    // A new crawl from the same page needs its links: a full GET too.
    let crawl = daemon
        .sql
        .query("INSERT INTO jobs (url, max_depth) VALUES ($1, 1) RETURNING id")
        .bind(&url)
        .int()
        .await;
    daemon.wait_all_done(&[crawl]).await;
    let child = daemon
        .sql
        .query("SELECT id FROM jobs WHERE parent_id = $1")
        .bind(crawl)
        .int()
        .await;
    daemon.wait_finished(child).await;

    let page_hits = server.hits_for("/page");
    assert_eq!(page_hits.len(), 3);
    assert!(
        page_hits
            .iter()
            .all(|h| h.header("If-None-Match").is_none()),
        "{page_hits:?}"
    );
    let data = daemon.result(other_selectors).await.unwrap().data;
    assert_eq!(data, serde_json::json!({"t": ["v1"]}));
    daemon.stop().await;
}
