//! Crawls: link following through the real daemon, against a small generated site on two
//! loopback hosts, with exact expected page sets; every test on both backends.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::server::{Reply, TestServer};
use crate::common::{on_both_backends, Backend, RunningDaemon};

on_both_backends!(
    depth_zero_one_and_two_fetch_exactly_the_expected_pages_once,
    children_record_their_parent_root_and_depth,
    scope_any_follows_other_hosts,
    allow_and_deny_patterns_filter_links,
    a_page_budget_stops_the_crawl,
    bad_crawl_rules_fail_the_job_before_any_fetch,
    a_seed_added_to_a_crawl_shares_its_scope_budget_and_dedupe,
    a_page_reached_through_several_redirects_is_fetched_once_per_crawl,
    a_link_queued_while_a_redirect_fetches_its_page_is_not_fetched_again,
    a_crawl_whose_root_was_inserted_with_its_own_id_follows_its_links,
    a_crawl_deleted_and_started_again_under_the_same_id_follows_its_links_again,
);

/// The site on 127.0.0.1: each path and the links on its page. "{other}" is the second
/// host. There is a cycle (/a → /), a page linked from two pages (/c), a link that differs
/// only by a fragment or a tracking parameter, and links off the host.
fn site(other: &str) -> BTreeMap<&'static str, Vec<String>> {
    let links = |ls: &[&str]| {
        ls.iter()
            .map(|l| l.replace("{other}", other))
            .collect::<Vec<_>>()
    };
    BTreeMap::from([
        (
            "/",
            links(&["/a", "/b", "/b#part", "/?utm_source=mail", "{other}/x"]),
        ),
        ("/a", links(&["/c", "/", "/a?utm_campaign=z"])),
        ("/b", links(&["/c", "/d"])),
        ("/c", links(&["/e"])),
        ("/d", links(&[])),
        ("/e", links(&[])),
    ])
}

fn page(links: &[String]) -> Reply {
    let anchors: String = links
        .iter()
        .map(|l| format!("<a href=\"{l}\">link</a>"))
        .collect();
    Reply::html(format!(
        "<html><head><title>page</title></head><body>{anchors}</body></html>"
    ))
}

struct Site {
    main: TestServer,
    other: TestServer,
}

impl Site {
    fn start() -> Site {
        let other = TestServer::start("127.0.0.2", |request| {
            page(&[format!("/elsewhere{}", request.path)])
        });
        let other_url = format!("http://{}", other.addr());
        let pages = site(&other_url);
        let pages: BTreeMap<String, Vec<String>> =
            pages.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let main = TestServer::start("127.0.0.1", move |request| {
            let path = request.path.split('?').next().unwrap_or_default();
            match pages.get(path) {
                Some(links) => page(links),
                None => Reply::status(404),
            }
        });
        Site { main, other }
    }

    /// Paths fetched on the main host, each with how often.
    fn fetched(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for hit in self.main.hits() {
            *counts.entry(hit.path).or_default() += 1;
        }
        counts
    }
}

/// Starts a crawl of the site's root with extra column values, waits until it settles, and
/// returns the crawl's job URLs with their status.
async fn crawl(
    daemon: &RunningDaemon,
    site: &Site,
    columns: &str,
    values: &str,
) -> BTreeMap<String, String> {
    let root = daemon
        .sql
        .query(format!(
            "INSERT INTO jobs (url{columns}) VALUES ($1{values}) RETURNING id"
        ))
        .bind(site.main.url("/"))
        .int()
        .await;
    daemon.wait_crawl_settled(root).await;
    let rows: Vec<(String, String)> = daemon
        .sql
        .query("SELECT url, status FROM jobs WHERE root_id = $1 ORDER BY id")
        .bind(root)
        .all()
        .await;
    let base = format!("http://{}", site.main.addr());
    rows.into_iter()
        .map(|(url, status)| (url.replace(&base, ""), status))
        .collect()
}

fn paths(jobs: &BTreeMap<String, String>) -> BTreeSet<&str> {
    jobs.keys().map(String::as_str).collect()
}

async fn depth_zero_one_and_two_fetch_exactly_the_expected_pages_once(backend: Backend) {
    for (depth, expected) in [
        (0, vec!["/"]),
        (1, vec!["/", "/a", "/b"]),
        (2, vec!["/", "/a", "/b", "/c", "/d"]),
    ] {
        let site = Site::start();
        let daemon = RunningDaemon::on(backend, |_| {}).await;
        let jobs = crawl(&daemon, &site, ", max_depth", &format!(", {depth}")).await;
        assert_eq!(
            paths(&jobs),
            expected.iter().copied().collect(),
            "depth {depth}"
        );
        assert!(jobs.values().all(|s| s == "done"), "{jobs:?}");
        let fetched = site.fetched();
        assert_eq!(
            fetched.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            expected.iter().copied().collect()
        );
        assert!(
            fetched.values().all(|&n| n == 1),
            "each page once: {fetched:?}"
        );
        assert!(
            site.other.hits().is_empty(),
            "scope 'host' stays on the host"
        );
        daemon.stop().await;
    }
}

/// url, parent_id, root_id, depth, max_depth, selectors
type CrawlRow = (String, Option<i64>, i64, i64, i64, Option<String>);

async fn children_record_their_parent_root_and_depth(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    crawl(
        &daemon,
        &site,
        ", max_depth, selectors",
        ", 2, '{\"t\": \"title\"}'",
    )
    .await;
    let rows: Vec<CrawlRow> = daemon
        .sql
        .query(
            "SELECT url, parent_id, root_id, depth, max_depth, CAST(selectors AS TEXT)
               FROM jobs ORDER BY id",
        )
        .all()
        .await;
    let by_path: BTreeMap<String, _> = rows
        .into_iter()
        .map(|(url, parent, root, depth, max, sel)| {
            (
                url.replace(&format!("http://{}", site.main.addr()), ""),
                (parent, root, depth, max, sel),
            )
        })
        .collect();
    assert_eq!(by_path["/"].0, None);
    assert_eq!(by_path["/"].1, 1);
    assert_eq!(by_path["/a"].0, Some(1));
    assert_eq!(by_path["/a"].2, 1);
    assert_eq!(by_path["/c"].2, 2);
    assert!(by_path
        .values()
        .all(|v| v.1 == 1 && v.3 == 2 && v.4.as_deref() == Some("{\"t\": \"title\"}")));
    // The children's pages were parsed with the inherited selectors.
    let first_title = match backend {
        Backend::Sqlite => "SELECT json_extract(data, '$.t[0]') FROM results",
        Backend::Postgres => "SELECT data -> 't' ->> 0 FROM results",
    };
    let titles: Vec<(String,)> = daemon.sql.query(first_title).all().await;
    assert_eq!(titles.len(), 5);
    assert!(titles.iter().all(|(t,)| t == "page"));
    daemon.stop().await;
}

async fn scope_any_follows_other_hosts(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let jobs = crawl(&daemon, &site, ", max_depth, scope", ", 1, 'any'").await;
    assert_eq!(paths(&jobs).len(), 4, "{jobs:?}");
    assert_eq!(site.other.hits().len(), 1);
    assert_eq!(site.other.hits()[0].path, "/x");
    daemon.stop().await;
}

async fn allow_and_deny_patterns_filter_links(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let jobs = crawl(&daemon, &site, ", max_depth, deny", ", 2, '/b$'").await;
    assert_eq!(paths(&jobs), BTreeSet::from(["/", "/a", "/c"]));
    assert!(!site.fetched().contains_key("/b"));
    daemon.stop().await;

    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let jobs = crawl(&daemon, &site, ", max_depth, allow", ", 2, '/[ab]$'").await;
    assert_eq!(paths(&jobs), BTreeSet::from(["/", "/a", "/b"]));
    daemon.stop().await;
}

async fn a_page_budget_stops_the_crawl(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let jobs = crawl(&daemon, &site, ", max_depth, max_pages", ", 5, 3").await;
    assert_eq!(paths(&jobs), BTreeSet::from(["/", "/a", "/b"]));
    assert_eq!(site.fetched().len(), 3);
    let size = daemon
        .sql
        .int("SELECT crawl_size FROM jobs WHERE id = 1")
        .await;
    assert_eq!(size, 3);
    daemon.stop().await;
}

async fn bad_crawl_rules_fail_the_job_before_any_fetch(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    crawl(&daemon, &site, ", max_depth, allow", ", 1, '(unclosed'").await;
    let (status, error): (String, String) = daemon
        .sql
        .query("SELECT status, error FROM jobs WHERE id = 1")
        .one()
        .await;
    assert_eq!(status, "failed");
    assert!(
        error.starts_with("allow \"(unclosed\" is not a valid regular expression"),
        "{error}"
    );
    assert!(site.main.hits().is_empty());
    daemon.stop().await;
}

async fn a_seed_added_to_a_crawl_shares_its_scope_budget_and_dedupe(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    crawl(&daemon, &site, ", max_depth", ", 1").await;
    // A new seed on the other host joins crawl 1, and one it already has.
    daemon
        .sql
        .query("INSERT INTO jobs (url, root_id, max_depth) VALUES ($1, 1, 1), ($2, 1, 1)")
        .bind(site.other.url("/joined"))
        .bind(site.main.url("/a"))
        .execute()
        .await;
    let joined = daemon.wait_finished(4).await;
    assert_eq!(joined.status, "done");
    let duplicate = daemon.wait_finished(5).await;
    assert_eq!(duplicate.status, "skipped");
    assert_eq!(
        duplicate.error.as_deref(),
        Some("already in this crawl as job 2")
    );
    // Scope is measured from the crawl's first URL: the joined page's own-host link
    // (/elsewhere/joined on the other host) is not followed.
    let jobs = daemon
        .sql
        .int("SELECT COUNT(*) FROM jobs WHERE root_id = 1")
        .await;
    assert_eq!(
        jobs, 5,
        "root, /a, /b, the joined seed and the skipped duplicate"
    );
    assert_eq!(site.other.hits().len(), 1);
    let size = daemon
        .sql
        .int("SELECT crawl_size FROM jobs WHERE id = 1")
        .await;
    assert_eq!(
        size, 4,
        "the joined seed counts; the skipped duplicate does not"
    );
    daemon.stop().await;
}

async fn a_page_reached_through_several_redirects_is_fetched_once_per_crawl(backend: Backend) {
    let server = TestServer::start("127.0.0.1", |request| match request.path.as_str() {
        "/" => page(&["/old1".into(), "/old2".into(), "/later".into()]),
        "/old1" | "/old2" => Reply::redirect(301, "/new"),
        "/later" => page(&["/new".into()]),
        // Slow enough that both redirects arrive while it is being fetched.
        "/new" => page(&[]).with_delay(std::time::Duration::from_millis(300)),
        _ => Reply::status(404),
    });
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let root = daemon
        .sql
        .query("INSERT INTO jobs (url, max_depth) VALUES ($1, 3) RETURNING id")
        .bind(server.url("/"))
        .int()
        .await;
    daemon.wait_crawl_settled(root).await;
    assert_eq!(server.hits_for("/new").len(), 1, "{:?}", server.hits());
    let rows: Vec<(String, String, Option<String>)> = daemon
        .sql
        .query("SELECT url, status, error FROM jobs WHERE root_id = $1 ORDER BY id")
        .bind(root)
        .all()
        .await;
    // Every job that did not fetch /new itself says where its twin is.
    let skipped: Vec<_> = rows.iter().filter(|(_, s, _)| s == "skipped").collect();
    assert!(!skipped.is_empty(), "{rows:?}");
    for (url, _, error) in &skipped {
        let error = error.as_deref().unwrap_or_default();
        assert!(
            error.contains("/new") || error.contains("redirect target"),
            "{url}: {error}"
        );
    }
    assert!(
        rows.iter().all(|(_, s, _)| s == "done" || s == "skipped"),
        "{rows:?}"
    );
    daemon.stop().await;
}

/// A link to a page that a redirect of the crawl is fetching, queued before that redirect's
/// result is stored: the link's job must not fetch the page again after the redirect's
/// result is stored. One job per host at a time makes the order certain: /later, on the
/// second host, queues /new while /old1 is fetching it, and that job for /new cannot be
/// claimed before /old1's attempt is stored (it holds the main host's only slot).
async fn a_link_queued_while_a_redirect_fetches_its_page_is_not_fetched_again(backend: Backend) {
    let new_url = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let later = TestServer::start("127.0.0.2", {
        let new_url = new_url.clone();
        move |request| match request.path.as_str() {
            // Answers while /new is being fetched through /old1's redirect.
            "/later" => page(&[new_url.get().expect("set before the crawl").clone()])
                .with_delay(std::time::Duration::from_millis(150)),
            _ => Reply::status(404),
        }
    });
    let main = TestServer::start("127.0.0.1", {
        let later = later.url("/later");
        move |request| match request.path.as_str() {
            "/" => page(&["/old1".into(), later.clone()]),
            "/old1" => Reply::redirect(301, "/new"),
            "/new" => page(&[]).with_delay(std::time::Duration::from_millis(600)),
            _ => Reply::status(404),
        }
    });
    new_url.set(main.url("/new")).expect("set once");
    let daemon = RunningDaemon::on(backend, |s| {
        s.limits.per_host.in_flight = std::num::NonZeroUsize::new(1).expect("1 > 0");
    })
    .await;
    let root = daemon
        .sql
        .query("INSERT INTO jobs (url, max_depth, scope) VALUES ($1, 3, 'any') RETURNING id")
        .bind(main.url("/"))
        .int()
        .await;
    daemon.wait_crawl_settled(root).await;
    assert_eq!(later.hits_for("/later").len(), 1, "{:?}", later.hits());
    assert_eq!(main.hits_for("/new").len(), 1, "{:?}", main.hits());
    let rows: Vec<(String, String, Option<String>)> = daemon
        .sql
        .query("SELECT url, status, error FROM jobs WHERE root_id = $1 ORDER BY id")
        .bind(root)
        .all()
        .await;
    let new_jobs: Vec<_> = rows
        .iter()
        .filter(|(url, _, _)| url.ends_with("/new"))
        .collect();
    assert_eq!(new_jobs.len(), 1, "{rows:?}");
    let (_, status, error) = new_jobs[0];
    assert_eq!(status, "skipped", "{rows:?}");
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("redirect target of job"),
        "{rows:?}"
    );
    daemon.stop().await;
}

/// Ids a user writes by hand: the jobs the daemon queues get others (on PostgreSQL the
/// identity is moved past them), so no link meets a taken id and is lost.
async fn a_crawl_whose_root_was_inserted_with_its_own_id_follows_its_links(backend: Backend) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let jobs = crawl(&daemon, &site, ", id, max_depth", ", 1, 1").await;
    assert_eq!(paths(&jobs), BTreeSet::from(["/", "/a", "/b"]));
    daemon.stop().await;
}

/// The daemon remembers the links it queued per crawl root: a root id used again (a user
/// deleting a crawl and writing its id again; SQLite also gives a deleted newest row's id
/// again) must not find the old crawl's links remembered.
async fn a_crawl_deleted_and_started_again_under_the_same_id_follows_its_links_again(
    backend: Backend,
) {
    let site = Site::start();
    let daemon = RunningDaemon::on(backend, |_| {}).await;
    let first = crawl(&daemon, &site, ", id, max_depth", ", 1, 1").await;
    assert_eq!(paths(&first), BTreeSet::from(["/", "/a", "/b"]));
    daemon.sql.execute("DELETE FROM jobs").await;
    let again = crawl(&daemon, &site, ", id, max_depth", ", 1, 1").await;
    assert_eq!(paths(&again), BTreeSet::from(["/", "/a", "/b"]));
    daemon.stop().await;
}
