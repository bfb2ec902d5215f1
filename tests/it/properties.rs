//! Property tests (proptest) for the code that takes arbitrary input: URL admission and
//! canonicalisation, HTML parsing, and the log scrubber. 256 cases each in `cargo test`;
//! `PROPTEST_CASES=100000 cargo test --release --test it properties::` runs longer
//! (scripts/soak.sh). A failing case is saved in `tests/proptest-regressions/properties.txt`
//! (proptest's place for it, beside the directory of the test program's `main.rs`) and
//! replayed on every run.

use std::collections::BTreeSet;

use proptest::prelude::*;

use crawlq::follow::{canonical, CrawlSpec, QueryFilter};
use crawlq::job;
use crawlq::parse::{parse_html, SelectorSet};
use crawlq::telemetry::mask_url_passwords;

fn filter() -> QueryFilter {
    QueryFilter::new(&["utm_*".to_owned(), "gclid".to_owned()])
}

/// URL-like strings: mostly valid http(s) URLs with odd paths, ports, queries and hosts,
/// some not URLs at all.
fn url_like() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        "[a-zA-Z0-9-]{1,12}(\\.[a-zA-Z0-9-]{1,8}){0,3}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        Just("[::1]".to_owned()),
        "[a-zé日本]{1,8}\\.example",
    ];
    let path = "(/([a-zA-Z0-9._~%!$&'()*+,;=:@-]|\\.\\.|\\.){0,6}){0,5}";
    let query = "(\\?([a-z_]{1,8}=[a-zA-Z0-9%]{0,6}&?){0,4})?";
    let valid = (
        prop_oneof![Just("http"), Just("https"), Just("HTTP"), Just("ftp")],
        host,
        "(:[0-9]{1,6})?",
        path,
        query,
        "(#[a-z]{0,5})?",
    )
        .prop_map(|(scheme, host, port, path, query, fragment)| {
            format!("{scheme}://{host}{port}{path}{query}{fragment}")
        });
    prop_oneof![4 => valid, 1 => any::<String>()]
}

proptest! {
    #[test]
    fn admission_never_panics_and_canonical_urls_are_stable(raw in url_like()) {
        let plain = CrawlSpec { scope: "host".to_owned(), ..CrawlSpec::default() };
        // Admission either refuses with a reason or admits; it never panics.
        if let Ok(admitted) = job::admit(&raw, None, &plain, &filter()) {
            let url = url::Url::parse(&admitted.canonical_url).expect("canonical URLs parse");
            let again = canonical(&url, &filter());
            prop_assert_eq!(again.as_str(), admitted.canonical_url.as_str());
            prop_assert!(url.fragment().is_none());
            // No parameter the filter strips is left (`_utm_` or `xutm_a` are other names).
            prop_assert!(url
                .query_pairs()
                .all(|(name, _)| !name.starts_with("utm_") && name != "gclid"));
            prop_assert!(matches!(url.scheme(), "http" | "https"));
        }
    }

    #[test]
    fn parsing_never_panics_and_links_are_absolute_http(
        html in prop_oneof![
            any::<String>(),
            "(<(a|div|p|title|base|meta|span)( (href|content|name)=\"[^\"]{0,20}\")?>|</(a|div|p|title)>|[a-z &;#]{0,10}){0,40}",
        ],
        selectors in prop_oneof![
            Just(None),
            Just(Some(r#"{"t":"title","h":"a@href","s":"div > p"}"#.to_owned())),
        ],
    ) {
        let page_url = url::Url::parse("http://example.com/dir/page.html").unwrap();
        let selectors = SelectorSet::from_optional_json(selectors.as_deref()).unwrap();
        let page = parse_html(&html, &page_url, &selectors);
        let mut seen = BTreeSet::new();
        for link in &page.links {
            let url = url::Url::parse(link).expect("links are absolute URLs");
            prop_assert!(matches!(url.scheme(), "http" | "https"), "{}", link);
            prop_assert!(url.fragment().is_none());
            prop_assert!(seen.insert(link.clone()), "duplicate link {}", link);
        }
    }

    #[test]
    fn passwords_never_reach_the_log(
        user in "[a-zA-Z0-9]{1,8}",
        password in "[a-zA-Z0-9%!$]{1,12}",
        around in "[a-z \"=]{0,10}",
    ) {
        let line = format!("{around}url=http://{user}:{password}@host.example/p {around}");
        let masked = mask_url_passwords(&line);
        let expected = format!("{user}:***@host.example");
        prop_assert!(masked.contains(&expected), "{}", masked);
        prop_assert!(!masked.contains(&format!(":{password}@")), "{}", masked);
    }

    #[test]
    fn the_scrubber_leaves_lines_without_credentials_alone(line in "[^@]{0,80}") {
        prop_assert_eq!(mask_url_passwords(&line), line);
    }
}
