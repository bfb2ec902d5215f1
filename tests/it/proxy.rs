//! Proxies: `fetch.proxy`, `fetch.no_proxy` and `limits.hosts."NAME".proxy`, through the
//! real daemon and the test proxy (`common::proxy`): what each proxy carried, what the
//! sites saw, credentials, failures named by the proxy, and limits kept per site.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crawlq::runtime::block_on;
use crawlq::settings::{Proxy, Settings};

use crate::common::proxy::{refusing_address, TestProxy};
use crate::common::server::{Reply, TestServer};
use crate::common::tls::{TestCa, Validity};
use crate::common::{
    assert_spaced, sigterm, stderr_of, wait_until, RunningDaemon, TempDb, DEADLINE,
};

fn proxy(url: &str) -> Option<Proxy> {
    Proxy::parse_setting(url).expect("a valid proxy URL")
}

fn host_of(server: &TestServer) -> String {
    server.addr().ip().to_string()
}

#[test]
fn a_global_proxy_carries_robots_txt_and_every_page_and_results_name_the_site() {
    block_on(async {
        let site = TestServer::start("127.0.0.61", |req| match req.path.as_str() {
            "/robots.txt" => Reply::bytes(
                "text/plain",
                b"User-agent: *\nDisallow: /private\n".to_vec(),
            ),
            path => Reply::html(format!("<title>page {path}</title><a href=\"/b\">b</a>")),
        });
        let carrier = TestProxy::http("127.0.0.62");
        let daemon = RunningDaemon::start(|s| {
            s.crawl.obey_robots = true;
            s.fetch.proxies.default = proxy(&carrier.url());
        })
        .await;
        let a = daemon.insert(&site.url("/a")).await;
        let b = daemon.insert(&site.url("/b?x=1")).await;
        let private = daemon.insert(&site.url("/private")).await;
        daemon.wait_all_done(&[a, b]).await;
        assert_eq!(daemon.wait_finished(private).await.status, "skipped");

        let result = daemon.result(a).await.expect("a results row");
        assert_eq!(result.url, site.url("/a"));
        assert_eq!(result.final_url, site.url("/a"));
        assert_eq!(result.http_status, 200);
        assert_eq!(result.title.as_deref(), Some("page /a"));
        // Forwarded, not tunnelled: absolute-form requests naming the site, and nothing
        // reached the site except through the proxy.
        let mut carried = carrier.targets();
        carried.sort();
        assert_eq!(
            carried,
            vec![site.url("/a"), site.url("/b?x=1"), site.url("/robots.txt")],
            "{:?}",
            carrier.hits()
        );
        assert!(carrier.hits().iter().all(|hit| hit.method == "GET"));
        assert_eq!(site.hits().len(), 3, "{:?}", site.hits());
        daemon.stop().await;
    });
}

#[test]
fn a_host_can_have_its_own_proxy_or_none_and_no_proxy_hosts_go_direct() {
    block_on(async {
        let through_global = TestServer::pages("127.0.0.63");
        let through_socks = TestServer::pages("127.0.0.64");
        let exempt = TestServer::pages("127.0.0.65");
        let own_none = TestServer::pages("127.0.0.66");
        let global = TestProxy::http("127.0.0.67");
        let socks = TestProxy::socks5("127.0.0.68");
        let daemon = RunningDaemon::start(|s| {
            let proxies = &mut s.fetch.proxies;
            proxies.default = proxy(&global.url());
            proxies.no_proxy = vec![host_of(&exempt)];
            proxies
                .hosts
                .insert(host_of(&through_socks), proxy(&socks.url()));
            proxies.hosts.insert(host_of(&own_none), proxy("none"));
        })
        .await;
        let servers = [&through_global, &through_socks, &exempt, &own_none];
        let mut ids = Vec::new();
        for server in servers {
            ids.push(daemon.insert(&server.url("/page")).await);
        }
        daemon.wait_all_done(&ids).await;
        for (server, id) in servers.iter().zip(&ids) {
            assert_eq!(server.hits_for("/page").len(), 1, "{}", server.addr());
            let result = daemon.result(*id).await.expect("a results row");
            assert_eq!(result.title.as_deref(), Some("/page"));
        }
        assert_eq!(global.targets(), vec![through_global.url("/page")]);
        assert_eq!(
            socks.targets(),
            vec![through_socks.addr().to_string()],
            "{:?}",
            socks.hits()
        );
        daemon.stop().await;
    });
}

#[test]
fn proxy_credentials_are_sent_masked_in_logs_and_the_environment_proxy_is_ignored() {
    block_on(async {
        let site = TestServer::pages("127.0.0.69");
        let direct = TestServer::pages("127.0.0.70");
        let guarded = TestProxy::http_with_login("127.0.0.71", "ann", "s3cret");
        let from_environment = TestProxy::http("127.0.0.72");
        let db = TempDb::new();
        let dir = db.dir.path();
        let mut command = crate::common::crawlq(dir);
        command
            .args(["run", "--database", &db.arg()])
            .env("CRAWLQ__LOG__LEVEL", "crawlq=debug")
            .env(
                "CRAWLQ__FETCH__PROXY",
                guarded.url_with_login("ann", "s3cret"),
            )
            .env(
                "CRAWLQ__LIMITS__HOSTS",
                format!("{{\"{}\": {{\"proxy\": \"none\"}}}}", host_of(&direct)),
            )
            // curl reads these unless told which proxy to use; crawlq always tells it.
            .env("http_proxy", from_environment.url())
            .env("HTTPS_PROXY", from_environment.url())
            .env("ALL_PROXY", from_environment.url())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut daemon = crate::common::KillOnDrop(command.spawn().expect("crawlq starts"));
        let sql = db.wait_for_daemon().await;
        let through = sql.insert(&site.url("/a")).await;
        let around = sql.insert(&direct.url("/b")).await;
        for id in [through, around] {
            wait_until("both jobs done", || {
                let sql = sql.clone();
                async move { sql.status_of(id).await == "done" }
            })
            .await;
        }
        sigterm(&daemon.0);
        let started = Instant::now();
        while daemon.0.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < DEADLINE, "the daemon did not stop");
            crawlq::runtime::sleep(Duration::from_millis(20)).await;
        }
        let log = stderr_of(&mut daemon.0);

        // A daemon run as a process obeys robots.txt (the default): asked first, through
        // the proxy too, and with the credentials ("ann:s3cret", as Basic) each time.
        let hits = guarded.hits();
        let targets: Vec<&str> = hits.iter().map(|hit| hit.target.as_str()).collect();
        assert_eq!(
            targets,
            [site.url("/robots.txt"), site.url("/a")],
            "{hits:?}"
        );
        assert!(
            hits.iter()
                .all(|hit| hit.credentials.as_deref() == Some("Basic YW5uOnMzY3JldA==")),
            "{hits:?}"
        );
        assert_eq!(direct.hits_for("/b").len(), 1);
        assert_eq!(from_environment.hits(), vec![]);
        let masked = format!(
            "http://ann:***@{}",
            guarded.url().trim_start_matches("http://")
        );
        assert!(log.contains(&masked), "{log}");
        assert!(!log.contains("s3cret"), "{log}");
    });
}

#[test]
fn a_socks5_proxy_gets_its_login_and_a_socks5h_one_resolves_the_name_itself() {
    block_on(async {
        let site = TestServer::pages("127.0.0.1");
        let socks = TestProxy::socks5_with_login("127.0.0.85", "bob", "pa:ss");
        let resolving = TestProxy::socks5("127.0.0.86");
        let by_name = format!("http://localhost:{}/n", site.addr().port());
        let daemon = RunningDaemon::start(|s| {
            // ":" in a password is percent-encoded in the URL and sent decoded.
            s.fetch.proxies.default = proxy(&socks.url_with_login("bob", "pa%3Ass"));
            s.fetch.proxies.hosts.insert(
                "localhost".to_owned(),
                proxy(&resolving.url().replace("socks5://", "socks5h://")),
            );
        })
        .await;
        let by_address = daemon.insert(&site.url("/a")).await;
        let named = daemon.insert(&by_name).await;
        daemon.wait_all_done(&[by_address, named]).await;
        let hits = socks.hits();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].target, site.addr().to_string());
        assert_eq!(hits[0].credentials.as_deref(), Some("bob:pa:ss"));
        // socks5h: the name, not an address crawlq looked up.
        assert_eq!(
            resolving.targets(),
            vec![format!("localhost:{}", site.addr().port())]
        );
        assert_eq!(site.hits().len(), 2);
        daemon.stop().await;
    });
}

#[test]
fn a_proxy_refusing_the_credentials_fails_the_job_at_once_naming_it_masked() {
    block_on(async {
        let site = TestServer::pages("127.0.0.73");
        let guarded = TestProxy::http_with_login("127.0.0.74", "ann", "s3cret");
        let daemon = RunningDaemon::start(|s| {
            s.fetch.proxies.default = proxy(&guarded.url_with_login("ann", "n0pe"));
        })
        .await;
        let id = daemon.insert(&site.url("/a")).await;
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "failed");
        assert_eq!(job.attempts, 1, "a 407 is not retried");
        let error = job.error.unwrap();
        let masked = format!(
            "http://ann:***@{}",
            guarded.url().trim_start_matches("http://")
        );
        assert!(
            error.contains(&format!("proxy {masked} answered 407")),
            "{error}"
        );
        assert!(!error.contains("n0pe"), "{error}");
        assert_eq!(guarded.hits().len(), 1);
        assert!(site.hits().is_empty());
        daemon.stop().await;
    });
}

#[test]
fn a_proxy_that_refuses_connections_or_hangs_up_fails_jobs_after_retries_naming_it() {
    block_on(async {
        let site = TestServer::pages("127.0.0.75");
        let other = TestServer::pages("127.0.0.76");
        let dead = refusing_address("127.0.0.77");
        let hanging = TestProxy::http_hanging_up("127.0.0.78");
        let daemon = RunningDaemon::start(|s| {
            s.retry.max_attempts = std::num::NonZeroU32::new(2).unwrap();
            s.crawl.obey_robots = true;
            s.fetch.proxies.default = proxy(&format!("http://bob:pw@{dead}"));
            s.fetch
                .proxies
                .hosts
                .insert(host_of(&other), proxy(&hanging.url()));
        })
        .await;
        let refused = daemon.insert(&site.url("/a")).await;
        let hung_up = daemon.insert(&other.url("/b")).await;

        let job = daemon.wait_finished(refused).await;
        assert_eq!(job.status, "failed");
        assert_eq!(job.attempts, 2, "a dead proxy is retried: {job:?}");
        let error = job.error.unwrap();
        assert!(
            error.contains(&format!(
                "proxy http://bob:***@{dead}: refused the connection or is unreachable"
            )),
            "{error}"
        );
        // robots.txt first: a dead proxy is no verdict on the site's robots.txt.
        assert!(error.contains("robots.txt not fetched"), "{error}");

        let job = daemon.wait_finished(hung_up).await;
        assert_eq!(job.status, "failed");
        assert_eq!(job.attempts, 2, "{job:?}");
        let error = job.error.unwrap();
        assert!(
            error.contains(&format!(
                "proxy {}: network error on the way to {}",
                hanging.url(),
                host_of(&other)
            )),
            "{error}"
        );
        assert!(site.hits().is_empty() && other.hits().is_empty());
        assert_eq!(
            hanging.targets(),
            vec![other.url("/robots.txt"); 2],
            "one robots.txt request per attempt"
        );
        daemon.stop().await;
    });
}

#[test]
fn rate_limits_stay_per_site_through_one_proxy() {
    block_on(async {
        let a = TestServer::pages("127.0.0.79");
        let b = TestServer::pages("127.0.0.80");
        let carrier = TestProxy::http("127.0.0.81");
        let period = Duration::from_millis(400);
        let daemon = RunningDaemon::start(|s: &mut Settings| {
            s.limits.per_host.rate.rps = 2.5;
            s.fetch.proxies.default = proxy(&carrier.url());
        })
        .await;
        let mut ids = Vec::new();
        for n in 0..4 {
            ids.push(daemon.insert(&a.url(&format!("/{n}"))).await);
            ids.push(daemon.insert(&b.url(&format!("/{n}"))).await);
        }
        daemon.wait_all_done(&ids).await;
        let times = |server: &TestServer| server.hits().iter().map(|h| h.at).collect::<Vec<_>>();
        let (at_a, at_b) = (times(&a), times(&b));
        assert_eq!((at_a.len(), at_b.len()), (4, 4));
        assert_spaced(&at_a, period);
        assert_spaced(&at_b, period);
        // One quota per site, not one for the proxy: the two sites' requests overlap in
        // time (with one shared quota, eight requests would need 7 periods).
        let first = at_a[0].min(at_b[0]);
        let last = at_a[3].max(at_b[3]);
        assert!(
            last - first < period * 5,
            "{:?} for 8 requests to two sites",
            last - first
        );
        assert_eq!(carrier.hits().len(), 8);
        daemon.stop().await;
    });
}

#[test]
fn with_the_address_guard_on_the_proxy_is_asked_for_the_checked_address_only() {
    block_on(async {
        // `localhost` resolves to 127.0.0.1 here, which the guard allows below.
        let allowed = TestServer::pages("127.0.0.1");
        let refused = TestServer::pages("127.0.0.82");
        let carrier = TestProxy::http("127.0.0.83");
        let socks = TestProxy::socks5("127.0.0.84");
        let daemon = RunningDaemon::start(|s| {
            s.fetch.addresses.block_private = true;
            // ::1 too, where `localhost` also has it: every address of a name is checked.
            s.fetch.addresses.allowed =
                vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
            s.fetch.proxies.default = proxy(&carrier.url());
            s.fetch
                .proxies
                .hosts
                .insert(host_of(&refused), proxy(&socks.url()));
        })
        .await;
        let by_name = format!("http://localhost:{}/a", allowed.addr().port());
        let ok = daemon.insert(&by_name).await;
        let no = daemon.insert(&refused.url("/b")).await;
        daemon.wait_all_done(&[ok]).await;
        let job = daemon.wait_finished(no).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(
            error.contains("refused to connect to 127.0.0.82"),
            "{error}"
        );

        // The name was resolved and checked by crawlq, and the proxy was asked to tunnel
        // to that address, not to the name.
        let hits = carrier.hits();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].method, "CONNECT");
        assert_eq!(hits[0].target, allowed.addr().to_string());
        let result = daemon.result(ok).await.expect("a results row");
        assert_eq!(result.url, by_name);
        assert_eq!(allowed.hits_for("/a").len(), 1);
        assert_eq!(
            allowed.hits_for("/a")[0].header("Host"),
            Some(format!("localhost:{}", allowed.addr().port()).as_str())
        );
        assert_eq!(socks.hits(), vec![]);
        assert!(refused.hits().is_empty());
        daemon.stop().await;
    });
}

#[test]
fn a_proxy_refusing_a_connect_tunnel_fails_the_job_after_retries_naming_it() {
    block_on(async {
        let site = TestServer::pages("127.0.0.1");
        let guarded = TestProxy::http_with_login("127.0.0.87", "ann", "s3cret");
        let daemon = RunningDaemon::start(|s| {
            s.retry.max_attempts = std::num::NonZeroU32::new(2).unwrap();
            // The guard makes curl tunnel to the checked address (see the test above).
            s.fetch.addresses.block_private = true;
            s.fetch.addresses.allowed =
                vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
            s.fetch.proxies.default = proxy(&guarded.url());
        })
        .await;
        let id = daemon
            .insert(&format!("http://localhost:{}/a", site.addr().port()))
            .await;
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "failed");
        // curl 8 reports a refused CONNECT (here a 407) as a failure to connect ("refused
        // the connection or is unreachable, or could not connect to localhost"), curl 7 as
        // a broken exchange ("network error on the way to localhost"); never as an answer.
        // Either way it is retried like a proxy that is down, and the error names it.
        assert_eq!(job.attempts, 2, "{job:?}");
        let error = job.error.unwrap();
        assert!(
            error.contains(&format!(
                "GET http://localhost:{}/a: proxy {}: ",
                site.addr().port(),
                guarded.url()
            )) && (error.contains("could not connect to localhost")
                || error.contains("network error on the way to localhost")),
            "{error}"
        );
        let hits = guarded.hits();
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(hits.iter().all(|hit| hit.method == "CONNECT"), "{hits:?}");
        assert!(site.hits().is_empty());
        daemon.stop().await;
    });
}

/// An https:// page goes through a CONNECT tunnel named by host and port, never forwarded
/// in the clear; the certificate is checked against the site (through the tunnel), so a
/// bad one fails the job with the site's name, not the proxy's.
#[test]
fn an_https_page_goes_through_a_connect_tunnel_with_its_certificate_checked() {
    block_on(async {
        let ca = TestCa::new("through a proxy");
        let site = TestServer::start_tls(
            "127.0.0.88",
            &ca.issue(&["127.0.0.88"], Validity::Current),
            |_| Reply::html("<title>tunnelled</title>"),
        );
        let expired = TestServer::start_tls(
            "127.0.0.90",
            &ca.issue(&["127.0.0.90"], Validity::Expired),
            |_| Reply::html("<title>expired</title>"),
        );
        let carrier = TestProxy::http("127.0.0.89");
        let daemon = RunningDaemon::start(|s| {
            s.fetch.ca_file = Some(ca.pem_file());
            s.fetch.proxies.default = proxy(&carrier.url());
        })
        .await;
        let id = daemon.insert(&site.url("/a")).await;
        let bad = daemon.insert(&expired.url("/a")).await;
        daemon.wait_all_done(&[id]).await;
        let result = daemon.result(id).await.expect("a results row");
        assert_eq!(result.title.as_deref(), Some("tunnelled"));
        assert_eq!(site.hits_for("/a").len(), 1);
        let job = daemon.wait_finished(bad).await;
        assert_eq!(job.status, "failed");
        assert_eq!(job.attempts, 1, "a certificate failure is not retried");
        let error = job.error.unwrap_or_default();
        assert!(
            error.contains("the TLS certificate of 127.0.0.90 was not accepted")
                && error.contains("certificate has expired"),
            "{error}"
        );
        let hits = carrier.hits();
        assert!(hits.iter().all(|hit| hit.method == "CONNECT"), "{hits:?}");
        let targets: Vec<&str> = hits.iter().map(|hit| hit.target.as_str()).collect();
        assert!(
            targets.contains(&site.addr().to_string().as_str()),
            "{targets:?}"
        );
        assert!(
            targets.contains(&expired.addr().to_string().as_str()),
            "{targets:?}"
        );
        daemon.stop().await;
    });
}
