//! Sitemaps through the real daemon against local servers: a sitemap job queues the pages
//! it lists as jobs of its crawl (scope, dedupe and `max_pages` as for links), an index
//! queues sitemaps, gzip is read either way it comes, robots.txt `Sitemap:` lines are
//! followed when asked, a re-read queues only pages whose lastmod moved, and what is not a
//! usable sitemap fails with a reason that names it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};
use crate::common::{crawlq, on_both_backends, wait_until, Backend, RunningDaemon, TempDb};

on_both_backends!(
    a_sitemap_queues_its_pages_in_scope_once_within_the_budget,
    an_index_queues_its_sitemaps_and_gzip_is_read_either_way,
    robots_txt_sitemaps_are_queued_only_when_asked,
    a_reread_sitemap_queues_only_pages_whose_lastmod_moved,
    what_is_not_a_usable_sitemap_fails_with_a_reason,
    crawlq_add_sitemap_starts_a_sitemap_crawl,
);

fn urlset(entries: &[(String, Option<&str>)]) -> String {
    let urls: String = entries
        .iter()
        .map(|(loc, lastmod)| {
            let lastmod = lastmod
                .map(|l| format!("<lastmod>{l}</lastmod>"))
                .unwrap_or_default();
            format!("<url><loc>{loc}</loc>{lastmod}</url>\n")
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n{urls}</urlset>\n"
    )
}

fn xml(body: impl Into<String>) -> Reply {
    Reply::bytes("application/xml", body.into().into_bytes())
}

fn html_linking(to: &str) -> Reply {
    Reply::html(format!(
        "<html><head><title>page</title></head><body><a href=\"{to}\">x</a></body></html>"
    ))
}

/// The crawl's jobs: path → (status, kind, depth).
async fn crawl_jobs(
    daemon: &RunningDaemon,
    server: &TestServer,
    root: i64,
) -> BTreeMap<String, (String, String, i64)> {
    let rows: Vec<(String, String, String, i64)> = daemon
        .sql
        .query("SELECT url, status, kind, depth FROM jobs WHERE root_id = $1 ORDER BY id")
        .bind(root)
        .all()
        .await;
    let base = server.url("/").trim_end_matches('/').to_owned();
    rows.into_iter()
        .map(|(url, status, kind, depth)| (url.replace(&base, ""), (status, kind, depth)))
        .collect()
}

/// Inserts a sitemap job for `url`, with more columns and their values (SQL text) if
/// given; returns its id.
async fn insert_sitemap(daemon: &RunningDaemon, url: &str, columns: &str, values: &str) -> i64 {
    daemon
        .sql
        .query(format!(
            "INSERT INTO jobs (url, kind{columns}) VALUES ($1, 'sitemap'{values}) RETURNING id"
        ))
        .bind(url)
        .int()
        .await
}

async fn a_sitemap_queues_its_pages_in_scope_once_within_the_budget(backend: Backend) {
    let other = TestServer::pages("127.0.0.2");
    let off_host = other.url("/off");
    let main = TestServer::start("127.0.0.1", move |request| match request.path.as_str() {
        "/sitemap.xml" => {
            let here = |p: &str| format!("http://{}{p}", request.header("host").unwrap());
            xml(urlset(&[
                (here("/p1"), Some("2026-11-01")),
                (here("/p2"), None),
                (here("/p2#again"), None),
                (here("/p3?utm_source=mail"), None),
                (off_host.clone(), None),
                (here("/p4"), None),
                (here("/p5"), None),
            ]))
        }
        _ => html_linking("/linked"),
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    // Budget: the sitemap and four pages.
    let root = insert_sitemap(&daemon, &main.url("/sitemap.xml"), ", max_pages", ", 5").await;
    daemon.wait_crawl_settled(root).await;

    let jobs = crawl_jobs(&daemon, &main, root).await;
    let expected: BTreeMap<String, (String, String, i64)> = [
        ("/sitemap.xml", "sitemap"),
        ("/p1", "page"),
        ("/p2", "page"),
        ("/p3", "page"),
        ("/p4", "page"),
    ]
    .into_iter()
    .map(|(path, kind)| (path.to_owned(), ("done".to_owned(), kind.to_owned(), 0)))
    .collect();
    assert_eq!(
        jobs, expected,
        "in scope, canonical, once, within max_pages"
    );
    for page in ["/p1", "/p2", "/p3", "/p4"] {
        assert_eq!(main.hits_for(page).len(), 1, "{page} fetched once");
    }
    assert!(main.hits_for("/p5").is_empty(), "past the budget");
    assert!(
        main.hits_for("/linked").is_empty(),
        "max_depth 0: no links followed"
    );
    assert!(other.hits().is_empty(), "out of scope");

    let lastmod: Option<String> = daemon
        .sql
        .query("SELECT lastmod FROM jobs WHERE root_id = $1 AND url LIKE '%/p1'")
        .bind(root)
        .scalar()
        .await;
    assert_eq!(lastmod.as_deref(), Some("2026-11-01"));
    let result = daemon.result(root).await.expect("the sitemap has a result");
    assert_eq!(result.http_status, 200);
    assert_eq!(result.data["sitemap_kind"][0], "urlset");
    assert_eq!(result.data["sitemap_urls"][0], "7");
    assert_eq!(result.data["sitemap_in_scope"][0], "5");
    assert_eq!(result.links.as_array().unwrap().len(), 7);
    daemon.stop().await;
}

async fn an_index_queues_its_sitemaps_and_gzip_is_read_either_way(backend: Backend) {
    let main = TestServer::start("127.0.0.1", |request| {
        let here = |p: &str| format!("http://{}{p}", request.header("host").unwrap());
        let listing = |page: &str| urlset(&[(here(page), None)]);
        match request.path.as_str() {
            "/index.xml" => xml(format!(
                "<sitemapindex xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\
                 <sitemap><loc>{}</loc></sitemap>\
                 <sitemap><loc>{}</loc><lastmod>2026-11-30</lastmod></sitemap>\
                 <sitemap><loc>{}</loc></sitemap></sitemapindex>",
                here("/plain.xml"),
                here("/packed.xml.gz"),
                here("/encoded.xml")
            )),
            "/plain.xml" => xml(listing("/from-plain")),
            // A .xml.gz file: gzip bytes as the body, no Content-Encoding. It lists a page
            // another sitemap of the crawl lists too.
            "/packed.xml.gz" => Reply::bytes(
                "application/gzip",
                crawlq::body::gzip(
                    urlset(&[(here("/from-packed"), None), (here("/from-plain"), None)]).as_bytes(),
                ),
            ),
            // gzip as a Content-Encoding of the response.
            "/encoded.xml" => Reply::bytes(
                "application/xml",
                crawlq::body::gzip(listing("/from-encoded").as_bytes()),
            )
            .with_header("Content-Encoding", "gzip"),
            _ => Reply::html("<html><title>p</title></html>"),
        }
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let root = insert_sitemap(&daemon, &main.url("/index.xml"), "", "").await;
    daemon.wait_crawl_settled(root).await;
    let jobs = crawl_jobs(&daemon, &main, root).await;
    let done = |kind: &str| ("done".to_owned(), kind.to_owned(), 0);
    assert_eq!(
        jobs,
        BTreeMap::from([
            ("/index.xml".to_owned(), done("sitemap")),
            ("/plain.xml".to_owned(), done("sitemap")),
            ("/packed.xml.gz".to_owned(), done("sitemap")),
            ("/encoded.xml".to_owned(), done("sitemap")),
            ("/from-plain".to_owned(), done("page")),
            ("/from-packed".to_owned(), done("page")),
            ("/from-encoded".to_owned(), done("page")),
        ])
    );
    for page in ["/from-plain", "/from-packed", "/from-encoded"] {
        assert_eq!(main.hits_for(page).len(), 1, "{page} fetched once");
    }
    let result = daemon.result(root).await.unwrap();
    assert_eq!(result.data["sitemap_kind"][0], "sitemapindex");
    daemon.stop().await;
}

async fn robots_txt_sitemaps_are_queued_only_when_asked(backend: Backend) {
    let main = TestServer::start("127.0.0.1", |request| {
        let here = |p: &str| format!("http://{}{p}", request.header("host").unwrap());
        match request.path.as_str() {
            "/robots.txt" => Reply::bytes(
                "text/plain",
                format!("User-agent: *\nAllow: /\nSitemap: {}\n", here("/sm.xml")).into_bytes(),
            ),
            "/sm.xml" => xml(urlset(&[(here("/listed"), None)])),
            "/" => html_linking("/a"),
            _ => Reply::html("<html><title>p</title></html>"),
        }
    });
    // robots.txt is read for its Sitemap: lines even when its rules are not obeyed.
    for (follow, obey) in [(false, true), (true, true), (true, false)] {
        let daemon = RunningDaemon::on(backend, |s| {
            s.crawl.obey_robots = obey;
            s.crawl.follow_sitemaps = follow;
        })
        .await;
        let root = daemon
            .sql
            .query("INSERT INTO jobs (url, max_depth) VALUES ($1, 1) RETURNING id")
            .bind(main.url("/"))
            .int()
            .await;
        daemon.wait_crawl_settled(root).await;
        let jobs = crawl_jobs(&daemon, &main, root).await;
        let done = |kind: &str, depth| ("done".to_owned(), kind.to_owned(), depth);
        let mut expected = BTreeMap::from([
            ("/".to_owned(), done("page", 0)),
            ("/a".to_owned(), done("page", 1)),
        ]);
        if follow {
            // The sitemap and what it lists are where the crawl starts: depth 0.
            expected.insert("/sm.xml".to_owned(), done("sitemap", 0));
            expected.insert("/listed".to_owned(), done("page", 0));
        }
        assert_eq!(
            jobs, expected,
            "follow_sitemaps = {follow}, obey_robots = {obey}"
        );
        daemon.stop().await;
    }
    assert_eq!(main.hits_for("/sm.xml").len(), 2, "read only when asked");
}

async fn a_reread_sitemap_queues_only_pages_whose_lastmod_moved(backend: Backend) {
    let version = Arc::new(AtomicUsize::new(1));
    let served = Arc::clone(&version);
    let main = TestServer::start("127.0.0.1", move |request| {
        let here = |p: &str| format!("http://{}{p}", request.header("host").unwrap());
        match request.path.as_str() {
            "/sitemap.xml" => {
                let moved = format!("2026-11-0{}", served.load(Ordering::SeqCst));
                xml(urlset(&[
                    (here("/same"), Some("2026-10-01")),
                    (here("/moved"), Some(moved.as_str())),
                    (here("/undated"), None),
                ]))
            }
            _ => Reply::html("<html><title>p</title></html>"),
        }
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let root = insert_sitemap(&daemon, &main.url("/sitemap.xml"), ", recrawl_every", ", 1").await;
    let hits = |path: &str| main.hits_for(path).len();
    wait_until("the pages to be fetched once", || async {
        hits("/same") == 1 && hits("/moved") == 1 && hits("/undated") == 1
    })
    .await;
    version.store(2, Ordering::SeqCst);
    wait_until("the moved page to be fetched again", || async {
        hits("/moved") == 2
    })
    .await;
    // Two more reads of the sitemap, each after the page's second fetch was queued: the
    // lastmod it was queued with is current, so it is not queued again.
    let reads = hits("/sitemap.xml");
    wait_until("two more reads of the sitemap", || async {
        hits("/sitemap.xml") >= reads + 2
    })
    .await;
    // The last read's pages are stored with it: wait for nothing of the crawl to run.
    wait_until("the re-read's pages to settle", || async {
        daemon
            .sql
            .query(
                "SELECT COUNT(*) FROM jobs
                  WHERE root_id = $1 AND kind = 'page' AND status IN ('queued', 'running')",
            )
            .bind(root)
            .int()
            .await
            == 0
    })
    .await;
    assert_eq!(hits("/same"), 1, "lastmod unchanged: not fetched again");
    assert_eq!(
        hits("/moved"),
        2,
        "fetched again once, when its lastmod moved"
    );
    assert!(hits("/undated") >= 3, "no lastmod: fetched at each read");
    let (lastmod, fetches): (Option<String>, i64) = daemon
        .sql
        .query(
            "SELECT j.lastmod, (SELECT COUNT(*) FROM results r WHERE r.job_id = j.id)
               FROM jobs j WHERE j.root_id = $1 AND j.url LIKE '%/moved'",
        )
        .bind(root)
        .one()
        .await;
    assert_eq!(lastmod.as_deref(), Some("2026-11-02"));
    assert_eq!(fetches, 2, "each fetch has its results row");
    let recrawled: Option<i64> = daemon
        .sql
        .query("SELECT recrawl_every FROM jobs WHERE root_id = $1 AND url LIKE '%/same'")
        .bind(root)
        .scalar()
        .await;
    assert_eq!(
        recrawled, None,
        "a sitemap's pages have no clock of their own"
    );
    daemon.stop().await;
}

/// A server that answers every request with an endless (1 GiB at most) chunked XML body,
/// until the client hangs up.
fn endless_sitemap_server() -> (String, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.3:0").unwrap();
    let url = format!("http://{}/huge.xml", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // A client that stops reading without hanging up ends the loop too.
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head);
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        let mut sent = 0u64;
        let started = Instant::now();
        let _ = stream.write_all(b"1a\r\n<urlset><url><loc>x</loc>\r\n");
        while sent < 1 << 30 && started.elapsed() < Duration::from_secs(30) {
            if stream.write_all(chunk.as_bytes()).is_err() {
                break;
            }
            sent += 64 * 1024;
        }
        sent
    });
    (url, thread)
}

async fn what_is_not_a_usable_sitemap_fails_with_a_reason(backend: Backend) {
    let main = TestServer::start("127.0.0.1", |request| {
        let here = |p: &str| format!("http://{}{p}", request.header("host").unwrap());
        match request.path.as_str() {
            "/bad.xml" => xml("<urlset><url><loc>http://x/</loc></urlset>"),
            "/page.xml" => Reply::html("<html><body>not a sitemap</body></html>"),
            "/big.xml" => xml(format!("<urlset>{}</urlset>", " ".repeat(8 << 20))),
            "/bomb.xml.gz" => Reply::bytes(
                "application/gzip",
                crawlq::body::gzip(format!("<urlset>{}</urlset>", " ".repeat(16 << 20)).as_bytes()),
            ),
            "/many.xml" => {
                let entries: Vec<(String, Option<&str>)> = (0..50_001)
                    .map(|n| (here(&format!("/m{n}")), None))
                    .collect();
                xml(urlset(&entries))
            }
            _ => Reply::html("<html><title>p</title></html>"),
        }
    });
    let (huge, huge_server) = endless_sitemap_server();
    let daemon = RunningDaemon::on(backend, |s| {
        // Room for 50 001 URLs (2.5 MB), not for the 8 MB ones.
        s.crawl.sitemap_max_bytes = 4 << 20;
    })
    .await;
    let failing = [
        (
            main.url("/bad.xml"),
            "the sitemap is not well-formed XML".to_owned(),
        ),
        (
            main.url("/page.xml"),
            "not a sitemap: the root element is <html>, not <urlset> or <sitemapindex>".to_owned(),
        ),
        (
            main.url("/big.xml"),
            "response body is larger than crawl.sitemap_max_bytes (4194304 bytes)".to_owned(),
        ),
        (
            main.url("/bomb.xml.gz"),
            "larger than crawl.sitemap_max_bytes (4194304 bytes) once uncompressed".to_owned(),
        ),
        (
            huge.clone(),
            "response body is larger than crawl.sitemap_max_bytes (4194304 bytes)".to_owned(),
        ),
    ];
    let mut ids = Vec::new();
    for (url, _) in &failing {
        ids.push(insert_sitemap(&daemon, url, "", "").await);
    }
    // 50 001 URLs: the first 50 000 are read (none queued: the budget is the sitemap).
    let many = insert_sitemap(&daemon, &main.url("/many.xml"), ", max_pages", ", 1").await;
    let page = daemon.insert(&main.url("/after")).await;

    for (id, (url, reason)) in ids.iter().zip(&failing) {
        let job = daemon.wait_finished(*id).await;
        assert_eq!(job.status, "failed", "{url}: {job:?}");
        let error = job.error.unwrap_or_default();
        assert!(error.contains(reason.as_str()), "{url}: {error}");
        assert!(error.contains(url.as_str()), "names the URL: {error}");
    }
    let sent = huge_server.join().unwrap();
    assert!(
        sent < 1 << 30,
        "the daemon hung up long before 1 GiB ({sent} bytes sent)"
    );

    let job = daemon.wait_finished(many).await;
    assert_eq!(job.status, "done", "{job:?}");
    let result = daemon.result(many).await.unwrap();
    assert_eq!(result.data["sitemap_urls"][0], "50001");
    assert_eq!(
        result.data["sitemap_left_out"][0],
        "1 of 50001 URLs left out: only the first 50000 are read (crawl.sitemap_max_urls)"
    );
    assert_eq!(result.links.as_array().unwrap().len(), 50_000);
    let queued = daemon
        .sql
        .query("SELECT COUNT(*) FROM jobs WHERE root_id = $1")
        .bind(many)
        .int()
        .await;
    assert_eq!(queued, 1, "max_pages = 1 holds for a sitemap's URLs");
    // The daemon went on with other work.
    assert_eq!(daemon.wait_finished(page).await.status, "done");
    daemon.stop().await;
}

async fn crawlq_add_sitemap_starts_a_sitemap_crawl(backend: Backend) {
    let main = TestServer::start("127.0.0.1", |request| {
        let here = |p: &str| format!("http://{}{p}", request.header("host").unwrap());
        match request.path.as_str() {
            "/sitemap.xml" => xml(urlset(&[(here("/one"), None), (here("/two"), None)])),
            _ => Reply::html("<html><title>p</title></html>"),
        }
    });
    let db = TempDb::on(backend).await;
    let out = crawlq(db.dir.path())
        .args(["add", "--database", &db.arg(), "--sitemap"])
        .arg(main.url("/sitemap.xml"))
        .output()
        .expect("crawlq add runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let daemon = RunningDaemon::start_on(db, |_| {}, |_| async {}).await;
    daemon.wait_crawl_settled(id).await;
    let jobs = crawl_jobs(&daemon, &main, id).await;
    let done = |kind: &str| ("done".to_owned(), kind.to_owned(), 0);
    assert_eq!(
        jobs,
        BTreeMap::from([
            ("/sitemap.xml".to_owned(), done("sitemap")),
            ("/one".to_owned(), done("page")),
            ("/two".to_owned(), done("page")),
        ])
    );
    daemon.stop().await;
}
