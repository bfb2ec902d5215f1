//! HTML parsing with selectors, by the path a fetched page takes: the body's bytes decoded
//! by Content-Type and `<meta charset>`, then parsed with a job's selectors. Nothing may
//! panic, and what comes out has the shape the `results` table promises.
//!
//! Input: the Content-Type (an empty line: none), the page's path on
//! `https://example.com/dir/`, the job's `selectors` JSON (an empty line: NULL), each on a
//! line; the rest is the body, bytes as fetched.

#![no_main]

use std::collections::{BTreeSet, HashSet};

use libfuzzer_sys::fuzz_target;
use url::Url;

use crawlq::parse::{self, SelectorSet};

/// Text crawlq stores is trimmed, with each run of whitespace one space.
fn assert_collapsed(text: &str, what: &str) {
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>().join(" "),
        text,
        "{what} is not whitespace-collapsed"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (content_type, path, json) = (field(), field(), field());
    let body = parts.next().unwrap_or_default();
    let content_type = (!content_type.is_empty()).then_some(content_type.as_str());
    let json = (!json.is_empty()).then_some(json.as_str());

    // A job whose selectors do not compile is refused at admission: nothing to parse.
    let Ok(selectors) = SelectorSet::from_optional_json(json) else {
        return;
    };
    let names: BTreeSet<String> = match json.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(serde_json::Value::Object(object))) => object.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    let Ok(page_url) = Url::parse("https://example.com/dir/").and_then(|u| u.join(&path)) else {
        return;
    };

    let text = parse::decode_html(body, content_type);
    let page = parse::parse_html(&text, &page_url, &selectors);

    for (what, value) in [("title", &page.title), ("description", &page.description)] {
        if let Some(value) = value {
            assert!(!value.is_empty(), "an empty {what} is kept");
            assert_collapsed(value, what);
        }
    }
    let mut seen = HashSet::new();
    for link in &page.links {
        let url = Url::parse(link).unwrap_or_else(|e| panic!("link {link:?}: {e}"));
        assert!(matches!(url.scheme(), "http" | "https"), "link {link:?}");
        assert_eq!(url.fragment(), None, "link {link:?} keeps its fragment");
        assert!(seen.insert(link), "link {link:?} listed twice");
    }
    assert_eq!(
        page.data.keys().cloned().collect::<BTreeSet<_>>(),
        names,
        "data holds exactly one list per selector name"
    );
});
