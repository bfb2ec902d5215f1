//! robots.txt: a body (as a 2xx answer), our User-Agent and the paths a crawl asks about,
//! read as the daemon reads them. Nothing may panic; only Disallow lines take pages away,
//! and a Crawl-delay crawlq honours is above zero and at most `crawl.max_crawl_delay_secs`.
//!
//! Input: `fetch.user_agent`, `crawl.max_crawl_delay_secs`, and the paths asked about
//! (space-separated, relative to `https://example.com/`), each on a line; the rest is the
//! body, bytes as fetched.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use url::Url;

use crawlq::robots::{self, Permission};
use crawlq::urls;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (user_agent, max_delay, paths) = (field(), field(), field());
    let body = parts.next().unwrap_or_default();
    // The settings check allows (0, 86400] seconds; a line that is not such a number is 30.
    let max_crawl_delay = max_delay
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map_or(Duration::from_secs(30), Duration::from_secs_f64);

    let site = Url::parse("https://example.com/").expect("a URL");
    let asked = paths
        .split(' ')
        .filter_map(|path| site.join(path).ok())
        .filter(|url| urls::check_fetchable(url).is_ok());
    for url in std::iter::once(site.clone()).chain(asked) {
        match robots::read_rules(body, &user_agent, &url, max_crawl_delay) {
            Permission::Allowed { crawl_delay } => {
                if let Some(delay) = crawl_delay {
                    assert!(!delay.is_zero(), "a zero Crawl-delay is kept");
                    assert!(
                        delay <= max_crawl_delay,
                        "Crawl-delay {delay:?} above the {max_crawl_delay:?} crawlq honours"
                    );
                }
            }
            // A Disallow line (or a misspelling the parser forgives) takes pages away.
            Permission::Disallowed(_) => assert!(
                body.to_ascii_lowercase().windows(3).any(|w| w == b"dis"),
                "{url} disallowed by a robots.txt without a Disallow line"
            ),
            other => panic!("a 2xx robots.txt read as {other:?}"),
        }
    }
});
