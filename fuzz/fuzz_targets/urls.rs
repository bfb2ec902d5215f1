//! URL admission and canonical form: a job's URL, crawl rules and query filter as a user
//! could write them, then a page's links through link following. What is admitted or
//! followed must be fetchable, canonical (canonical again gives the same text) and keep
//! its host; nothing may panic.
//!
//! Input, one field a line (missing lines are empty): the job's URL;
//! `crawl.strip_query_params` (space-separated, `name*` for a prefix); the scope; `allow`;
//! `deny` (an empty pattern is none); then a link a line, absolute or relative.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use url::Url;

use crawlq::follow::{canonical, CrawlSpec, Follow, QueryFilter};
use crawlq::{job, urls};

/// What every URL crawlq stores as canonical must satisfy.
fn assert_canonical(text: &str, filter: &QueryFilter, what: &str) -> Url {
    let url = Url::parse(text).unwrap_or_else(|e| panic!("{what} {text:?} does not parse: {e}"));
    assert_eq!(
        url.as_str(),
        text,
        "{what} is not in the url crate's own form"
    );
    urls::check_fetchable(&url).unwrap_or_else(|e| panic!("{what} is not fetchable: {e}"));
    assert_eq!(url.fragment(), None, "{what} {text:?} keeps a fragment");
    assert_eq!(
        canonical(&url, filter).as_str(),
        text,
        "canonical form of {what} is not stable"
    );
    url
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut field = || lines.next().unwrap_or_default();
    let (raw, strip, scope, allow, deny) = (field(), field(), field(), field(), field());
    let links: Vec<&str> = lines.collect();

    let strip: Vec<String> = strip.split(' ').map(str::to_owned).collect();
    let filter = QueryFilter::new(&strip);
    let pattern = |p: &str| (!p.is_empty()).then(|| p.to_owned());
    let spec = CrawlSpec {
        max_depth: 1,
        depth: 0,
        scope: scope.to_owned(),
        allow: pattern(allow),
        deny: pattern(deny),
        crawl_host: None,
    };

    let checked = urls::check_url(raw);
    let Ok(admitted) = job::admit(raw, None, &spec, &filter) else {
        return;
    };
    assert!(
        matches!(scope, "host" | "domain" | "any"),
        "scope {scope:?} admitted"
    );
    let url = checked.expect("admitted, so the URL passed check_url");
    // The daemon stores the URL as text and parses it again at every claim: written back
    // out, an admitted URL is admitted again as the same URL.
    assert_eq!(
        urls::check_url(url.as_str()).as_ref(),
        Ok(&url),
        "an admitted URL does not re-parse to itself"
    );
    let canonical_url = assert_canonical(&admitted.canonical_url, &filter, "canonical URL");
    assert_eq!(
        urls::host_key(&canonical_url).as_deref(),
        Some(admitted.host.as_str()),
        "the canonical form changed the host"
    );

    // Links as parse_html hands them over: resolved against the page.
    let links: Vec<String> = links
        .iter()
        .flat_map(|link| {
            [
                Some((*link).to_owned()),
                url.join(link).ok().map(String::from),
            ]
        })
        .flatten()
        .collect();
    let follow = Follow::new(&spec, &admitted.host).expect("admitted, so the rules compile");
    let mut seen = HashSet::new();
    for child in follow.children(&links, &filter) {
        assert!(
            child.url.len() <= urls::MAX_URL_BYTES,
            "an overlong link was followed"
        );
        let child_url = assert_canonical(&child.url, &filter, "followed link");
        assert_eq!(urls::host_key(&child_url).as_ref(), Some(&child.host));
        if scope == "host" {
            assert_eq!(child.host, admitted.host, "scope 'host' left the host");
        }
        assert!(seen.insert(child.url), "a link was followed twice");
    }
});
