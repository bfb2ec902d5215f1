//! The store's decisions that are not SQL, shared by every backend and tested without a
//! database: which attempts of a batch take the fast path, which validators to keep or
//! forget, which links to queue and in which runs, how a claim's hosts are split, and
//! what a stored version means for a claimed job.

use std::collections::{HashMap, HashSet};

use crate::fetch::Validators;
use crate::job::{Attempt, ClaimedJob, JobId, JobKind, KnownVersion, PageRecord, Verdict};

use super::known_links::KnownLinks;
use super::HostPick;

/// The `lease_owner` a claim writes: the daemon's id and the claim's number. Unique per
/// claim, so an attempt that outlived its lease (the user re-queued the job) can never
/// match the lease of a later claim, whatever the user did to `attempts`.
pub fn lease_token(owner: &str, claim: u64) -> String {
    format!("{owner}/{claim}")
}

/// The leases of `held` that a renewal did not push back (`renewed` lists the ones it
/// did, as job id and lease token): those jobs are no longer ours (the user cancelled one
/// or edited its URL, or its lease expired and was taken back), so their attempts can stop.
pub(super) fn leases_lost(held: &[&ClaimedJob], renewed: &[(i64, String)]) -> Vec<(JobId, String)> {
    let renewed: HashSet<(i64, &str)> = renewed.iter().map(|(id, l)| (*id, l.as_str())).collect();
    held.iter()
        .filter(|job| !renewed.contains(&(job.id.0, job.lease.as_str())))
        .map(|job| (job.id, job.lease.clone()))
        .collect()
}

/// A claim's picks, split: the hosts given one job each (the usual case with many hosts at
/// polite rates, which a backend can send as one array) and the hosts given more.
pub(super) fn split_picks(picks: &[HostPick]) -> (Vec<&str>, Vec<&HostPick>) {
    let (single, several): (Vec<&HostPick>, Vec<&HostPick>) =
        picks.iter().partition(|pick| pick.jobs == 1);
    (
        single.iter().map(|pick| pick.host.as_str()).collect(),
        several,
    )
}

/// A finished batch, split: plain first fetches, which a backend stores for the whole
/// batch in a few statements (see [`is_plain_first_fetch`]; each job once), and the rest,
/// stored one by one.
pub(super) fn split_batch(attempts: &[Attempt]) -> (Vec<&Attempt>, Vec<&Attempt>) {
    let mut seen = HashSet::new();
    attempts
        .iter()
        .partition(|a| is_plain_first_fetch(a) && seen.insert(a.job.id))
}

/// A done first fetch with nothing but a result, validators and links to store: no body,
/// no 304 copy, no redirect to record, no host pause, no earlier attempt's row to replace,
/// no re-read sitemap whose pages may go back to the queue.
pub(super) fn is_plain_first_fetch(attempt: &Attempt) -> bool {
    let Some(page) = &attempt.page else {
        return false;
    };
    attempt.verdict == Verdict::Done
        && !attempt.job.is_sitemap_reread()
        && attempt.pause.is_none()
        && attempt.job.attempt == 1
        && page.unchanged_since.is_none()
        && page.gzipped_body.is_none()
        && page.redirect_target.is_none()
}

/// The page of an attempt [`split_batch`] found plain.
pub(super) fn plain_page(attempt: &Attempt) -> &PageRecord {
    attempt.page.as_ref().expect("plain fetches have a page")
}

/// Why a host is paused, as its `hosts` row says.
pub(super) fn pause_reason(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Retry { reason, .. }
        | Verdict::Requeue { reason, .. }
        | Verdict::Failed { reason }
        | Verdict::Skipped { reason } => reason.as_str(),
        Verdict::Done => "Retry-After",
    }
}

/// What the answers of a batch do to the stored validators.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ValidatorChanges<'a> {
    /// (canonical URL, ETag, Last-Modified, result id) to keep.
    pub keep: Vec<(&'a str, &'a Option<String>, &'a Option<String>, i64)>,
    /// Canonical URLs whose validators no longer hold.
    pub forget: Vec<&'a str>,
}

/// Keeps the validators of 2xx pages fetched without redirects (they describe their URL),
/// so the next fetch of a URL can be conditional, and forgets them when a new version came
/// without any. A 304 (its stored version still holds) and other statuses change nothing.
/// Each answer is (canonical URL, page, result id); per URL the last answer decides, as one
/// after another would.
pub(super) fn validator_changes<'a>(
    answers: &[(&'a str, &'a PageRecord, i64)],
) -> ValidatorChanges<'a> {
    let mut decided: HashMap<&str, Option<(&Validators, i64)>> = HashMap::new();
    let mut order = Vec::new();
    for &(url, page, result_id) in answers {
        if page.unchanged_since.is_some() || !(200..300).contains(&page.http_status) {
            continue;
        }
        let keep = !page.validators.is_empty() && page.final_url == page.url;
        if decided
            .insert(url, keep.then_some((&page.validators, result_id)))
            .is_none()
        {
            order.push(url);
        }
    }
    let mut changes = ValidatorChanges::default();
    for url in order {
        match decided[url] {
            Some((validators, result_id)) => {
                changes
                    .keep
                    .push((url, &validators.etag, &validators.last_modified, result_id))
            }
            None => changes.forget.push(url),
        }
    }
    changes
}

/// A link to queue: (parent job id, crawl root id, URL, host, kind, lastmod).
pub(super) type Link<'a> = (i64, i64, &'a str, &'a str, JobKind, Option<&'a str>);

/// The links of done pages to queue as child jobs of their crawls, in page order. A URL
/// linked from two pages of one crawl is queued once, by the first: a second copy would
/// take a place in the crawl's budget and then lose to the unique index, leaving the crawl
/// short of `max_pages`. Links this daemon knows the crawl has (`known`) are left out: the
/// database would find them and queue nothing.
pub(super) fn links_to_queue<'a>(pages: &[&'a Attempt], known: &KnownLinks) -> Vec<Link<'a>> {
    let mut linked = HashSet::new();
    pages
        .iter()
        .flat_map(|a| {
            a.children.iter().map(|c| {
                (
                    a.job.id.0,
                    a.job.root_id,
                    c.url.as_str(),
                    c.host.as_str(),
                    c.kind,
                    c.lastmod.as_deref(),
                )
            })
        })
        .filter(|(_, root, url, ..)| linked.insert((*root, *url)) && !known.contains(*root, url))
        .collect()
}

/// A run of links that share a parent, a crawl, a host and a kind, as a backend sends it
/// (one JSON array): (parent id, root id, host, URLs, kind, lastmods). `lastmods` is
/// `None` when no URL of the run has one (links never do), else one per URL.
pub(super) type LinkRun<'a> = (
    i64,
    i64,
    &'a str,
    Vec<&'a str>,
    &'static str,
    Option<Vec<Option<&'a str>>>,
);

/// Links grouped into runs (see [`LinkRun`]), in order. A backend sends each run's URLs
/// as one plain array.
pub(super) fn link_runs<'a>(links: &[Link<'a>]) -> Vec<LinkRun<'a>> {
    let mut runs: Vec<LinkRun<'a>> = Vec::new();
    for &(parent, root, url, host, kind, lastmod) in links {
        let kind = kind.as_str();
        let run = match runs.last_mut() {
            Some(run) if (run.0, run.1, run.2, run.4) == (parent, root, host, kind) => run,
            _ => {
                runs.push((parent, root, host, Vec::new(), kind, None));
                runs.last_mut().expect("just pushed")
            }
        };
        if lastmod.is_some() && run.5.is_none() {
            run.5 = Some(vec![None; run.3.len()]);
        }
        if let Some(lastmods) = &mut run.5 {
            lastmods.push(lastmod);
        }
        run.3.push(url);
    }
    runs
}

/// How many jobs were queued per crawl root, from the root id of each queued job.
pub(super) fn count_per_root(roots: &[i64]) -> Vec<(i64, i64)> {
    let mut queued: HashMap<i64, i64> = HashMap::new();
    for root in roots {
        *queued.entry(*root).or_default() += 1;
    }
    let mut queued: Vec<(i64, i64)> = queued.into_iter().collect();
    queued.sort_unstable();
    queued
}

/// A claimed job with the stored version of its URL, from the claim's JSON array
/// `[ETag, Last-Modified, result id, the selectors that result was parsed with]`, kept
/// only if its result was parsed with this job's selectors: a 304 copies that result's
/// `data`. A version that does not decode means a plain GET, which is always right.
pub(super) fn with_known_version(mut job: ClaimedJob, known: Option<&[u8]>) -> ClaimedJob {
    type Version = (Option<String>, Option<String>, i64, Option<String>);
    let known = known.and_then(|json| serde_json::from_slice::<Version>(json).ok());
    if let Some((etag, last_modified, result_id, selectors)) = known {
        if selectors == job.selectors {
            job.known_version = Some(KnownVersion {
                validators: Validators {
                    etag,
                    last_modified,
                },
                result_id,
            });
        }
    }
    job
}

/// The origins among `origins` ('http://h', 'https://h:8443') whose host is `host`:
/// `crawlq unpause HOST` forgets robots.txt answers for every scheme and port of it.
pub(super) fn origins_of_host(origins: Vec<String>, host: &str) -> Vec<String> {
    origins
        .into_iter()
        .filter(|origin| {
            url::Url::parse(origin)
                .ok()
                .and_then(|url| crate::urls::host_key(&url))
                .is_some_and(|h| h == host)
        })
        .collect()
}

/// Bytes as lower-case hex: how bytes (a robots.txt body) travel in a JSON batch, for
/// SQLite's `unhex()` and PostgreSQL's `decode(…, 'hex')`.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::follow::{Child, CrawlSpec};

    #[test]
    fn leases_not_renewed_are_lost() {
        let (a, b, c) = (job(1, 1), job(2, 1), job(3, 1));
        let renewed = [(1, "d/1".to_owned()), (3, "d/other".to_owned())];
        assert_eq!(
            leases_lost(&[&a, &b, &c], &renewed),
            [(JobId(2), "d/2".to_owned()), (JobId(3), "d/3".to_owned())]
        );
        assert!(leases_lost(&[&a], &renewed).is_empty());
    }

    fn job(id: i64, attempt: i64) -> ClaimedJob {
        ClaimedJob {
            id: JobId(id),
            lease: format!("d/{id}"),
            url: format!("http://a.test/{id}"),
            host: "a.test".to_owned(),
            attempt,
            max_attempts: None,
            selectors: None,
            root_id: 1,
            crawl: CrawlSpec::default(),
            fetch_no: 1,
            canonical_url: Some(format!("http://a.test/{id}")),
            known_version: None,
            kind: JobKind::Page,
        }
    }

    fn page(url: &str, status: u16, etag: Option<&str>) -> PageRecord {
        PageRecord {
            url: url.to_owned(),
            final_url: url.to_owned(),
            http_status: status,
            content_type: None,
            title: None,
            description: None,
            links: Vec::new(),
            data: Default::default(),
            bytes: 0,
            elapsed: Duration::ZERO,
            unchanged_since: None,
            gzipped_body: None,
            redirect_target: None,
            validators: Validators {
                etag: etag.map(str::to_owned),
                last_modified: None,
            },
        }
    }

    fn done(id: i64, attempt: i64, links: &[&str]) -> Attempt {
        let job = job(id, attempt);
        Attempt {
            page: Some(page(&job.url, 200, None)),
            children: links
                .iter()
                .map(|url| Child {
                    url: (*url).to_owned(),
                    host: "a.test".to_owned(),
                    kind: JobKind::Page,
                    lastmod: None,
                })
                .collect(),
            job,
            verdict: Verdict::Done,
            pause: None,
        }
    }

    #[test]
    fn lease_tokens_are_unique_per_claim() {
        assert_eq!(lease_token("crawlq-1-ab", 7), "crawlq-1-ab/7");
        assert_ne!(lease_token("d", 1), lease_token("d", 2));
    }

    #[test]
    fn picks_split_into_hosts_with_one_job_and_hosts_with_more() {
        let picks = [
            HostPick {
                host: "a".into(),
                jobs: 1,
            },
            HostPick {
                host: "b".into(),
                jobs: 3,
            },
            HostPick {
                host: "c".into(),
                jobs: 1,
            },
        ];
        let (single, several) = split_picks(&picks);
        assert_eq!(single, ["a", "c"]);
        assert_eq!(several, [&picks[1]]);
    }

    #[test]
    fn only_first_done_fetches_without_extras_take_the_batch_path_and_each_job_once() {
        let mut retry = done(3, 2, &[]);
        retry.verdict = Verdict::Retry {
            reason: "HTTP 503".into(),
            after: Duration::from_secs(1),
        };
        let mut paused = done(4, 1, &[]);
        paused.pause = Some(("a.test".into(), Duration::from_secs(5)));
        let batch = [
            done(1, 1, &[]),
            done(1, 1, &[]),
            done(2, 2, &[]),
            retry,
            paused,
        ];
        let (plain, others) = split_batch(&batch);
        let ids = |v: &[&Attempt]| v.iter().map(|a| a.job.id.0).collect::<Vec<_>>();
        assert_eq!(ids(&plain), [1]);
        assert_eq!(ids(&others), [1, 2, 3, 4]);
    }

    #[test]
    fn the_last_answer_for_a_url_decides_its_validators() {
        let with = page("http://a.test/x", 200, Some("\"v1\""));
        let without = page("http://a.test/x", 200, None);
        let failed = page("http://a.test/y", 500, Some("\"e\""));
        let mut redirected = page("http://a.test/z", 200, Some("\"r\""));
        redirected.final_url = "http://a.test/elsewhere".into();
        let changes = validator_changes(&[
            ("http://a.test/x", &without, 1),
            ("http://a.test/x", &with, 2),
            ("http://a.test/y", &failed, 3),
            ("http://a.test/z", &redirected, 4),
        ]);
        assert_eq!(
            changes.keep,
            [("http://a.test/x", &with.validators.etag, &None, 2)]
        );
        assert_eq!(changes.forget, ["http://a.test/z"]);
    }

    #[test]
    fn a_host_has_the_origins_of_every_scheme_and_port() {
        let origins = [
            "http://a.test",
            "https://a.test:8443",
            "http://a.test.example",
            "http://b.a.test",
            "http://[::1]:80",
            "not an origin",
        ];
        let of = |host| origins_of_host(origins.iter().map(|o| o.to_string()).collect(), host);
        assert_eq!(of("a.test"), ["http://a.test", "https://a.test:8443"]);
        assert_eq!(of("[::1]"), ["http://[::1]:80"]);
        assert!(of("test").is_empty());
    }

    #[test]
    fn a_link_is_queued_once_per_crawl_and_runs_group_by_parent_and_host() {
        let first = done(1, 1, &["http://a.test/p", "http://a.test/q"]);
        let second = done(2, 1, &["http://a.test/q", "http://a.test/r"]);
        let known = KnownLinks::default();
        let links = links_to_queue(&[&first, &second], &known);
        let urls: Vec<&str> = links.iter().map(|l| l.2).collect();
        assert_eq!(
            urls,
            ["http://a.test/p", "http://a.test/q", "http://a.test/r"]
        );
        // A link the daemon saw queued in this crawl is not sent again; in another it is.
        known.remember([known.key(1, "http://a.test/q")]);
        let mut third = done(3, 1, &["http://a.test/q"]);
        third.job.root_id = 7;
        let urls: Vec<&str> = links_to_queue(&[&first, &second, &third], &known)
            .iter()
            .map(|l| l.2)
            .collect();
        assert_eq!(
            urls,
            ["http://a.test/p", "http://a.test/r", "http://a.test/q"]
        );
        let runs = link_runs(&links);
        assert_eq!(
            runs,
            [
                (
                    1,
                    1,
                    "a.test",
                    vec!["http://a.test/p", "http://a.test/q"],
                    "page",
                    None
                ),
                (2, 1, "a.test", vec!["http://a.test/r"], "page", None),
            ]
        );
        // A sitemap's URLs carry their lastmod, one per URL, and a kind change starts a run.
        let mut listed = links.clone();
        listed[1].5 = Some("2026-11-30");
        listed[2].4 = JobKind::Sitemap;
        listed[2].0 = 1;
        let runs = link_runs(&listed);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].5, Some(vec![None, Some("2026-11-30")]));
        assert_eq!((runs[1].4, runs[1].5.clone()), ("sitemap", None));
        assert_eq!(count_per_root(&[5, 1, 5]), [(1, 1), (5, 2)]);
    }

    #[test]
    fn a_stored_version_counts_only_with_the_same_selectors_and_when_it_decodes() {
        let version = br#"["\"e\"", null, 9, null]"#.as_slice();
        let kept = with_known_version(job(1, 1), Some(version));
        let known = kept.known_version.expect("same selectors: kept");
        assert_eq!(known.result_id, 9);
        assert_eq!(known.validators.etag.as_deref(), Some("\"e\""));
        let mut other = job(1, 1);
        other.selectors = Some(r#"{"t":"title"}"#.into());
        assert!(with_known_version(other, Some(version))
            .known_version
            .is_none());
        assert!(with_known_version(job(1, 1), Some(b"not json"))
            .known_version
            .is_none());
    }

    #[test]
    fn a_pause_says_why() {
        assert_eq!(pause_reason(&Verdict::Done), "Retry-After");
        let failed = Verdict::Failed {
            reason: "HTTP 429".into(),
        };
        assert_eq!(pause_reason(&failed), "HTTP 429");
    }
}
