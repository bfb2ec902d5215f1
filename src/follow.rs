//! Link following: which of a page's links a crawl takes, and in what canonical form.
//!
//! A crawl is a root job with `max_depth > 0` and the child jobs its pages produce. A link
//! becomes a child when the page is at a depth below `max_depth`, the link is in the
//! crawl's scope (relative to the root URL's host), it matches `allow` (if set) and not
//! `deny` (if set). Links are compared in canonical form, which is also what is fetched:
//! scheme and host lower-cased, default port dropped, dot segments resolved (the `url`
//! crate does those), fragment dropped, and tracking parameters (`crawl.strip_query_params`)
//! removed from the query.

use std::net::IpAddr;

use regex::Regex;
use url::Url;

use crate::job::JobKind;
use crate::urls;

/// The crawl columns of a job, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrawlSpec {
    pub max_depth: i64,
    pub depth: i64,
    pub scope: String,
    pub allow: Option<String>,
    pub deny: Option<String>,
    /// The root job's host; scope is measured from it.
    pub crawl_host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Host,
    Domain,
    Any,
}

fn scope(name: &str) -> Result<Scope, String> {
    match name {
        "host" => Ok(Scope::Host),
        "domain" => Ok(Scope::Domain),
        "any" => Ok(Scope::Any),
        other => Err(format!(
            "scope {other:?}: must be 'host', 'domain' or 'any'"
        )),
    }
}

fn pattern(column: &str, source: Option<&str>) -> Result<Option<Regex>, String> {
    source
        .filter(|s| !s.is_empty())
        .map(|s| {
            Regex::new(s)
                .map_err(|e| format!("{column} {s:?} is not a valid regular expression: {e}"))
        })
        .transpose()
}

/// Checks a job's crawl columns at admission, so a bad pattern fails before any fetch.
pub fn check(scope_name: &str, allow: Option<&str>, deny: Option<&str>) -> Result<(), String> {
    scope(scope_name)?;
    pattern("allow", allow)?;
    pattern("deny", deny)?;
    Ok(())
}

/// Which query parameters canonical URLs drop: exact names, or prefixes written `name*`.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl QueryFilter {
    pub fn new(patterns: &[String]) -> QueryFilter {
        let mut filter = QueryFilter::default();
        for p in patterns {
            match p.strip_suffix('*') {
                Some(prefix) => filter.prefixes.push(prefix.to_owned()),
                None => filter.exact.push(p.clone()),
            }
        }
        filter
    }

    fn drops(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// The canonical form of an absolute URL (see the module comment).
pub fn canonical(url: &Url, filter: &QueryFilter) -> Url {
    let mut url = url.clone();
    url.set_fragment(None);
    if let Some(query) = url.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                let name = url::form_urlencoded::parse(name.as_bytes())
                    .next()
                    .map(|(n, _)| n.into_owned())
                    .unwrap_or_default();
                !filter.drops(&name)
            })
            .collect();
        let kept = kept.join("&");
        url.set_query((!kept.is_empty()).then_some(kept.as_str()));
    }
    url
}

/// The registrable domain of a host ("www.example.co.uk" → "example.co.uk"); an IP
/// address or a name without a public suffix is its own domain.
fn registrable_domain(host: &str) -> String {
    if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return host.to_owned();
    }
    psl::domain_str(host).unwrap_or(host).to_owned()
}

/// A link the crawl will follow: a child job to be, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub url: String,
    pub host: String,
    /// A page (a link, a sitemap's URL) or a sitemap (a sitemap index's entry, a
    /// robots.txt `Sitemap:` line).
    pub kind: JobKind,
    /// The `<lastmod>` a sitemap gave for it, as written.
    pub lastmod: Option<String>,
}

/// A job's compiled crawl rules.
#[derive(Debug)]
pub struct Follow {
    follows: bool,
    scope: Scope,
    crawl_host: String,
    crawl_domain: String,
    allow: Option<Regex>,
    deny: Option<Regex>,
}

impl Follow {
    /// `own_host` is the job's host, standing in for a crawl host that is not set.
    pub fn new(spec: &CrawlSpec, own_host: &str) -> Result<Follow, String> {
        let crawl_host = spec
            .crawl_host
            .clone()
            .unwrap_or_else(|| own_host.to_owned());
        Ok(Follow {
            follows: spec.depth < spec.max_depth,
            scope: scope(&spec.scope)?,
            crawl_domain: registrable_domain(&crawl_host),
            crawl_host,
            allow: pattern("allow", spec.allow.as_deref())?,
            deny: pattern("deny", spec.deny.as_deref())?,
        })
    }

    /// The page's links this crawl follows, canonical, first occurrence kept, in order.
    pub fn children(&self, links: &[String], filter: &QueryFilter) -> Vec<Child> {
        if !self.follows {
            return Vec::new();
        }
        self.listed(
            links
                .iter()
                .map(|link| (link.as_str(), JobKind::Page, None)),
            filter,
        )
    }

    /// The URLs a sitemap (or robots.txt) lists that this crawl takes, as (URL, kind,
    /// lastmod): the same scope, allow, deny and canonical form as links, whatever the
    /// depth (a sitemap's URLs are where a crawl starts, not links it follows).
    pub fn listed<'a>(
        &self,
        urls: impl IntoIterator<Item = (&'a str, JobKind, Option<&'a str>)>,
        filter: &QueryFilter,
    ) -> Vec<Child> {
        let mut seen = std::collections::HashSet::new();
        let mut children = Vec::new();
        for (link, kind, lastmod) in urls {
            let Ok(url) = Url::parse(link) else { continue };
            let url = canonical(&url, filter);
            let Some(host) = urls::host_key(&url) else {
                continue;
            };
            if urls::check_fetchable(&url).is_err() || !self.in_scope(&host) {
                continue;
            }
            let text = String::from(url);
            if text.len() > urls::MAX_URL_BYTES {
                continue;
            }
            // A sitemap is fetched whatever allow and deny say: they pick pages, and a
            // crawl started from a sitemap would otherwise need its URL in `allow`.
            if kind == JobKind::Page
                && (self.allow.as_ref().is_some_and(|a| !a.is_match(&text))
                    || self.deny.as_ref().is_some_and(|d| d.is_match(&text)))
            {
                continue;
            }
            if seen.insert(text.clone()) {
                children.push(Child {
                    url: text,
                    host,
                    kind,
                    lastmod: lastmod.map(str::to_owned),
                });
            }
        }
        children
    }

    fn in_scope(&self, host: &str) -> bool {
        match self.scope {
            Scope::Host => host == self.crawl_host,
            Scope::Domain => registrable_domain(host) == self.crawl_domain,
            Scope::Any => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> QueryFilter {
        QueryFilter::new(&["utm_*".to_owned(), "gclid".to_owned()])
    }

    fn canon(url: &str) -> String {
        canonical(&Url::parse(url).unwrap(), &filter()).to_string()
    }

    #[test]
    fn canonical_form() {
        assert_eq!(
            canon("HTTP://Example.COM:80/a/./b/../c?x=1#frag"),
            "http://example.com/a/c?x=1"
        );
        assert_eq!(canon("https://e.com:443/"), "https://e.com/");
        assert_eq!(
            canon("https://e.com/p?utm_source=a&id=7&gclid=z&utm_x"),
            "https://e.com/p?id=7"
        );
        assert_eq!(canon("https://e.com/p?utm_source=a"), "https://e.com/p");
        assert_eq!(
            canon("https://e.com/p?b=2&a=1"),
            "https://e.com/p?b=2&a=1",
            "order kept"
        );
    }

    fn spec(scope: &str, allow: Option<&str>, deny: Option<&str>) -> CrawlSpec {
        CrawlSpec {
            max_depth: 1,
            depth: 0,
            scope: scope.to_owned(),
            allow: allow.map(str::to_owned),
            deny: deny.map(str::to_owned),
            crawl_host: Some("www.example.co.uk".to_owned()),
        }
    }

    fn followed(spec: &CrawlSpec, links: &[&str]) -> Vec<String> {
        let links: Vec<String> = links.iter().map(|l| l.to_string()).collect();
        Follow::new(spec, "unused")
            .unwrap()
            .children(&links, &filter())
            .into_iter()
            .map(|c| c.url)
            .collect()
    }

    #[test]
    fn scope_allow_and_deny_pick_the_links() {
        let links = [
            "https://www.example.co.uk/a",
            "https://shop.example.co.uk/b",
            "https://other.org/c",
            "https://www.example.co.uk/a#again",
            "mailto:x@y.z",
        ];
        assert_eq!(
            followed(&spec("host", None, None), &links),
            ["https://www.example.co.uk/a"]
        );
        assert_eq!(
            followed(&spec("domain", None, None), &links),
            [
                "https://www.example.co.uk/a",
                "https://shop.example.co.uk/b"
            ]
        );
        assert_eq!(followed(&spec("any", None, None), &links).len(), 3);
        assert_eq!(
            followed(&spec("any", Some("/[bc]$"), None), &links).len(),
            2
        );
        assert_eq!(followed(&spec("any", None, Some("other")), &links).len(), 2);
    }

    #[test]
    fn nothing_is_followed_at_max_depth_and_bad_rules_are_explained() {
        let mut at_limit = spec("any", None, None);
        at_limit.depth = 1;
        assert!(followed(&at_limit, &["https://a.b/"]).is_empty());
        assert!(check("site", None, None)
            .unwrap_err()
            .contains("scope \"site\""));
        assert!(check("host", Some("(unclosed"), None)
            .unwrap_err()
            .starts_with("allow \"(unclosed\""));
        assert!(registrable_domain("127.0.0.1") == "127.0.0.1");
    }
}
