//! The store on a real database: its claim queries at sizes the daemon tests do not reach,
//! and batches of results stored in one go, on both backends; and what only SQLite has
//! (loose types, its upgrade path from older releases' files).

use std::time::Duration;

use crate::common::{
    execute, on_both_backends, test_settings, user_connection, Backend, TempDb, UserSql,
};
use crawlq::runtime::block_on;
use crawlq::store::{HostPick, Store};

on_both_backends!(
    one_claim_can_span_more_hosts_than_a_compound_select_allows,
    hosts_whose_jobs_all_wait_for_later_are_not_offered_for_claiming,
    hosts_are_offered_round_robin_from_the_cursor_each_once,
    a_paused_host_is_not_offered_and_its_pause_is_reloaded,
    a_link_two_pages_of_one_batch_share_takes_one_place_in_the_crawl_budget,
);

/// A fresh SQLite file, opened.
async fn open() -> (TempDb, Store) {
    let db = TempDb::new();
    let store = Store::open(&test_settings(&db.path).database)
        .await
        .unwrap();
    (db, store)
}

/// A fresh database on `backend`, opened, and the user's connection to it.
async fn open_on(backend: Backend) -> (TempDb, Store, UserSql) {
    let db = TempDb::on(backend).await;
    let store = Store::open(&db.settings().database).await.unwrap();
    let sql = db.user().await;
    (db, store, sql)
}

async fn one_claim_can_span_more_hosts_than_a_compound_select_allows(backend: Backend) {
    let (_db, store, sql) = open_on(backend).await;
    // 600 hosts with three jobs each.
    sql.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1799)
         INSERT INTO jobs (url, host)
         SELECT 'http://h' || (i % 600) || '.test/' || i, 'h' || (i % 600) || '.test' FROM n",
    )
    .await;
    let hosts = store.hosts_with_due_jobs("", 1000).await.unwrap();
    assert_eq!(hosts.len(), 600);
    // Hosts picked for one job share one statement; the 300 picked for two need a term
    // each, more than one compound SELECT takes. Hosts with nothing due give nothing.
    let mut picks: Vec<HostPick> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| HostPick {
            host: host.clone(),
            jobs: 1 + i % 2,
        })
        .collect();
    for (host, jobs) in [("idle.test", 1), ("idle-too.test", 2)] {
        picks.push(HostPick {
            host: host.to_owned(),
            jobs,
        });
    }
    let claimed = store
        .claim("me", Duration::from_secs(60), &picks, true)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 900);
    let mut per_host = std::collections::HashMap::<&str, usize>::new();
    for job in &claimed {
        *per_host.entry(job.host.as_str()).or_default() += 1;
    }
    for pick in &picks[..600] {
        assert_eq!(
            per_host.get(pick.host.as_str()),
            Some(&pick.jobs),
            "{}",
            pick.host
        );
    }
    let running = sql
        .int("SELECT COUNT(*) FROM jobs WHERE status = 'running' AND lease_owner = 'me'")
        .await;
    assert_eq!(running, 900);
}

async fn hosts_whose_jobs_all_wait_for_later_are_not_offered_for_claiming(backend: Backend) {
    let (_db, store, sql) = open_on(backend).await;
    // 300 hosts whose only job waits an hour (as after a retry backoff), and one that is due.
    // An hour from now, as a user of each database would write it.
    let in_an_hour = match backend {
        Backend::Sqlite => "datetime('now', '+1 hour')",
        Backend::Postgres => "now() + interval '1 hour'",
    };
    sql.execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 299)
         INSERT INTO jobs (url, host, run_after)
         SELECT 'http://a' || i || '.test/', 'a' || i || '.test', {in_an_hour} FROM n"
    ))
    .await;
    sql.execute("INSERT INTO jobs (url, host) VALUES ('http://z.test/', 'z.test')")
        .await;
    assert_eq!(
        store.hosts_with_due_jobs("", 4).await.unwrap(),
        vec!["z.test"]
    );
    // Going round from the last host comes back to it.
    assert_eq!(
        store.hosts_with_due_jobs("z.test", 4).await.unwrap(),
        vec!["z.test"]
    );
}

async fn hosts_are_offered_round_robin_from_the_cursor_each_once(backend: Backend) {
    let (_db, store, sql) = open_on(backend).await;
    sql.execute(
        "INSERT INTO jobs (url, host) VALUES
           ('http://a.test/', 'a.test'), ('http://b.test/', 'b.test'),
           ('http://b.test/2', 'b.test'), ('http://c.test/', 'c.test'),
           ('http://d.test/', 'd.test')",
    )
    .await;
    let from = |after: &'static str, limit| {
        let store = store.clone();
        async move { store.hosts_with_due_jobs(after, limit).await.unwrap() }
    };
    assert_eq!(from("", 10).await, ["a.test", "b.test", "c.test", "d.test"]);
    assert_eq!(
        from("b.test", 10).await,
        ["c.test", "d.test", "a.test", "b.test"]
    );
    assert_eq!(from("b.test", 3).await, ["c.test", "d.test", "a.test"]);
    // A cursor host that has no work left any more: the walk still goes round once.
    assert_eq!(
        from("bb.test", 10).await,
        ["c.test", "d.test", "a.test", "b.test"]
    );
    assert_eq!(from("z.test", 2).await, ["a.test", "b.test"]);
}

#[test]
fn claiming_reads_odd_attempt_values_and_takes_the_best_jobs_first() {
    block_on(async {
        let (db, store) = open().await;
        let sql = user_connection(&db.path).await;
        execute(
            &sql,
            "INSERT INTO jobs (url, host, attempts, priority) VALUES
               ('http://h.test/a', 'h.test', 0.5, 1),
               ('http://h.test/b', 'h.test', 'x', 5),
               ('http://h.test/c', 'h.test', 0, 0)",
        )
        .await;
        let picks = [HostPick {
            host: "h.test".into(),
            jobs: 2,
        }];
        let mut claimed = store
            .claim("me", Duration::from_secs(60), &picks, true)
            .await
            .unwrap();
        claimed.sort_by_key(|j| j.id);
        let got: Vec<(i64, i64)> = claimed.iter().map(|j| (j.id.0, j.attempt)).collect();
        assert_eq!(
            got,
            vec![(1, 1), (2, 1)],
            "priority 5 and 1 first; odd attempts count as 0"
        );
    });
}

async fn a_paused_host_is_not_offered_and_its_pause_is_reloaded(backend: Backend) {
    let (_db, store, sql) = open_on(backend).await;
    sql.execute("INSERT INTO jobs (url, host) VALUES ('http://p.test/', 'p.test'), ('http://q.test/', 'q.test')").await;
    sql.execute(&format!(
        "INSERT INTO hosts (host, paused_until) VALUES ('p.test', {}), ('q.test', {})",
        sql.seconds_from_now(60),
        sql.seconds_from_now(-1)
    ))
    .await;
    assert_eq!(
        store.hosts_with_due_jobs("", 10).await.unwrap(),
        vec!["q.test"]
    );
    let pauses = store.active_pauses().await.unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].0, "p.test");
    assert!(
        (55.0..=60.0).contains(&pauses[0].1.as_secs_f64()),
        "{pauses:?}"
    );
}

#[test]
fn upgrading_a_database_keeps_its_results_as_first_fetches() {
    block_on(async {
        // A database as crawlq left it before results kept history (migrations 1–5).
        let db = TempDb::new();
        let old_migrations = db.dir.path().join("old-migrations");
        std::fs::create_dir(&old_migrations).unwrap();
        for entry in
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap()
        {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.as_str() < "20261121000006" {
                std::fs::copy(&path, old_migrations.join(&name)).unwrap();
            }
        }
        std::fs::File::create(&db.path).unwrap(); // an empty file is an empty database
        {
            let sql = user_connection(&db.path).await;
            sqlx::migrate::Migrator::new(old_migrations.as_path())
                .await
                .unwrap()
                .run(&sql)
                .await
                .unwrap();
            execute(
                &sql,
                "INSERT INTO jobs (url, status, host) VALUES ('http://a.test/', 'done', 'a.test')",
            )
            .await;
            execute(
                &sql,
                "INSERT INTO results (job_id, url, final_url, http_status, title, bytes, elapsed_ms)
                 VALUES (1, 'http://a.test/', 'http://a.test/', 200, 'kept', 10, 1)",
            )
            .await;
            sql.close().await;
        }

        let store = Store::open(&test_settings(&db.path).database)
            .await
            .expect("the new migrations apply on top");
        store.close().await;
        let sql = user_connection(&db.path).await;
        let row: (i64, i64, String, bool) =
            sqlx::query_as("SELECT job_id, fetch_no, title, not_modified FROM latest_results")
                .fetch_one(&sql)
                .await
                .unwrap();
        assert_eq!(row, (1, 1, "kept".to_owned(), false));
        let fetch_no: i64 = sqlx::query_scalar("SELECT fetch_no FROM jobs WHERE id = 1")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(fetch_no, 1);
    });
}

#[test]
fn a_database_made_by_release_0_1_0_opens_without_a_checksum_error() {
    block_on(async {
        // Made by `crawlq migrate` of release 0.1.0 (every migration it had), with one job
        // and its result added by hand; the migrations' files have moved since, their bytes
        // have not, and sqlx refuses a database whose recorded checksums differ.
        let db = TempDb::new();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/database-made-by-0.1.0.db"
            ),
            &db.path,
        )
        .unwrap();
        let store = Store::open(&test_settings(&db.path).database)
            .await
            .expect("a database made by 0.1.0 opens and migrates");
        assert_eq!(store.status_counts().await.unwrap().done, 1);
        store.close().await;
        let sql = user_connection(&db.path).await;
        let title: String = sqlx::query_scalar("SELECT title FROM latest_results WHERE job_id = 1")
            .fetch_one(&sql)
            .await
            .unwrap();
        assert_eq!(title, "kept");
    });
}

/// A stored page of the test crawl with the links `children`.
fn done(job: &crawlq::job::ClaimedJob, children: &[&str]) -> crawlq::job::Attempt {
    crawlq::job::Attempt {
        job: job.clone(),
        page: Some(crawlq::job::PageRecord {
            url: job.url.clone(),
            final_url: job.url.clone(),
            http_status: 200,
            content_type: Some("text/html".to_owned()),
            title: Some(job.url.clone()),
            description: None,
            links: children.iter().map(|c| c.to_string()).collect(),
            data: Default::default(),
            bytes: 100,
            elapsed: Duration::from_millis(1),
            unchanged_since: None,
            validators: Default::default(),
            gzipped_body: None,
            redirect_target: None,
        }),
        verdict: crawlq::job::Verdict::Done,
        pause: None,
        children: children
            .iter()
            .map(|url| crawlq::follow::Child {
                url: url.to_string(),
                host: "s.test".to_owned(),
                kind: crawlq::job::JobKind::Page,
                lastmod: None,
            })
            .collect(),
    }
}

async fn a_link_two_pages_of_one_batch_share_takes_one_place_in_the_crawl_budget(backend: Backend) {
    let (_db, store, sql) = open_on(backend).await;
    // Crawl 1 has fetched / and found /a and /b: 3 of its 5 pages. (The ids are the
    // database's: on PostgreSQL, ids written by hand do not advance the identity that the
    // links queued below take theirs from.)
    sql.execute(
        "INSERT INTO jobs (url, host, canonical_url, root_id, max_depth, max_pages,
                           crawl_size, status, depth)
         VALUES ('http://s.test/', 's.test', 'http://s.test/', 1, 5, 5, 3, 'done', 0),
                ('http://s.test/a', 's.test', 'http://s.test/a', 1, 5, 5, 1, 'queued', 1),
                ('http://s.test/b', 's.test', 'http://s.test/b', 1, 5, 5, 1, 'queued', 1)",
    )
    .await;
    let pick = HostPick {
        host: "s.test".to_owned(),
        jobs: 2,
    };
    let claimed = store
        .claim("me", Duration::from_secs(60), &[pick], true)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    // /a links to /c; /b to /c and /d. Stored in one batch, the budget's 2 places go to
    // /c and /d, as they would one page after the other.
    let batch = [
        done(&claimed[0], &["http://s.test/c"]),
        done(&claimed[1], &["http://s.test/c", "http://s.test/d"]),
    ];
    let report = store.finish(&batch).await.unwrap();
    assert_eq!(report.stored, 2);
    let urls: Vec<(String,)> = sql.query("SELECT url FROM jobs ORDER BY url").all().await;
    assert_eq!(
        urls,
        ["/", "/a", "/b", "/c", "/d"].map(|p| (format!("http://s.test{p}"),))
    );
    let size = sql.int("SELECT crawl_size FROM jobs WHERE id = 1").await;
    assert_eq!(size, 5);
}

#[test]
fn a_claim_brings_the_stored_version_and_one_that_does_not_decode_means_a_plain_get() {
    block_on(async {
        let (db, store) = open().await;
        let sql = user_connection(&db.path).await;
        // Job 1's selectors are not UTF-8 and its URL's ETag is a blob; job 2 is ordinary.
        // Each was fetched before (result 7, 8) and left validators for its URL.
        execute(
            &sql,
            "INSERT INTO jobs (id, url, host, canonical_url, selectors) VALUES
               (1, 'http://v.test/a', 'v.test', 'http://v.test/a', X'7BE9'),
               (2, 'http://v.test/b', 'v.test', 'http://v.test/b', NULL)",
        )
        .await;
        execute(
            &sql,
            "INSERT INTO results (id, job_id, url, final_url, http_status, bytes, elapsed_ms) VALUES
               (7, 1, 'http://v.test/a', 'http://v.test/a', 200, 1, 1),
               (8, 2, 'http://v.test/b', 'http://v.test/b', 200, 1, 1)",
        )
        .await;
        execute(
            &sql,
            "INSERT INTO validators (url, etag, last_modified, result_id) VALUES
               ('http://v.test/a', X'00FF', NULL, 7),
               ('http://v.test/b', '\"b1\"', 'Sat, 21 Nov 2026 10:00:00 GMT', 8)",
        )
        .await;
        let pick = HostPick {
            host: "v.test".to_owned(),
            jobs: 2,
        };
        let mut claimed = store
            .claim("me", Duration::from_secs(60), &[pick], true)
            .await
            .unwrap();
        claimed.sort_by_key(|job| job.id.0);
        assert_eq!(claimed.len(), 2, "{claimed:?}");
        assert!(claimed[0].known_version.is_none(), "{claimed:?}");
        let known = claimed[1].known_version.as_ref().expect("job 2's version");
        assert_eq!(known.result_id, 8);
        assert_eq!(known.validators.etag.as_deref(), Some("\"b1\""));
        assert_eq!(
            known.validators.last_modified.as_deref(),
            Some("Sat, 21 Nov 2026 10:00:00 GMT")
        );
    });
}
