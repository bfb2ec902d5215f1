//! The private-address guard (`fetch.block_private_addresses`) through the real daemon:
//! loopback, link-local and other non-public destinations are refused, by address or by a
//! name that resolves to one, on the first request and on a redirect hop.

use crate::common::server::{Reply, TestServer};
use crate::common::RunningDaemon;
use crawlq::destinations::AddressPolicy;
use crawlq::runtime::block_on;

fn guard(allowed: &[&str]) -> AddressPolicy {
    AddressPolicy {
        block_private: true,
        allowed: allowed.iter().map(|net| net.parse().unwrap()).collect(),
    }
}

#[test]
fn non_public_destinations_fail_at_once_without_a_request() {
    block_on(async {
        let server = TestServer::pages("127.0.0.1");
        let port = server.addr().port();
        let daemon = RunningDaemon::start(|s| {
            s.fetch.addresses = guard(&[]);
            // robots.txt is asked first: the refusal must come before it.
            s.crawl.obey_robots = true;
        })
        .await;
        let cases = [
            (server.url("/by-address"), "127.0.0.1, a loopback address"),
            (
                format!("http://localhost:{port}/by-name"),
                "a loopback address",
            ),
            (format!("http://[::1]:{port}/v6"), "::1, a loopback address"),
            (
                "http://169.254.169.254/latest/meta-data/".to_owned(),
                "169.254.169.254, a link-local (cloud metadata) address",
            ),
            (
                format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
                "a loopback address",
            ),
            ("http://10.0.0.1/".to_owned(), "10.0.0.1, a private address"),
        ];
        for (url, expected) in &cases {
            let id = daemon.insert(url).await;
            let job = daemon.wait_finished(id).await;
            assert_eq!(job.status, "failed", "{url}");
            let error = job.error.unwrap();
            assert!(
                error.contains("refused to connect") && error.contains(expected),
                "{url}: {error}"
            );
            assert!(
                error.contains("fetch.block_private_addresses"),
                "the error names the setting: {error}"
            );
        }
        assert!(server.hits().is_empty(), "{:?}", server.hits());
        daemon.stop().await;
    });
}

#[test]
fn an_allowed_host_redirecting_to_a_private_one_is_refused_at_the_hop() {
    block_on(async {
        let private = TestServer::pages("127.0.0.1");
        let target = private.url("/secret");
        let allowed = TestServer::start("127.0.0.2", move |req| match req.path.as_str() {
            "/page" => Reply::html("<title>allowed</title>"),
            _ => Reply::redirect(302, &target),
        });
        let daemon = RunningDaemon::start(|s| {
            s.fetch.addresses = guard(&["127.0.0.2/32"]);
        })
        .await;
        let id = daemon.insert(&allowed.url("/go")).await;
        let job = daemon.wait_finished(id).await;
        assert_eq!(job.status, "failed");
        let error = job.error.unwrap();
        assert!(error.contains("refused to connect to 127.0.0.1"), "{error}");
        assert_eq!(allowed.hits().len(), 1, "the allowed host was fetched");
        assert!(
            private.hits().is_empty(),
            "the hop was refused before connecting"
        );

        // The allowed network is an exception: its own pages are fetched.
        let id = daemon.insert(&allowed.url("/page")).await;
        assert_eq!(daemon.wait_finished(id).await.status, "done");
        assert_eq!(allowed.hits().len(), 2);
        daemon.stop().await;
    });
}
