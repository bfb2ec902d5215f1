//! Domain types: a job as the daemon holds it, the checks a new job must pass, and what an
//! attempt came to. Whether a failure is retried is decided here and nowhere else.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::fetch::{self, Validators};
use crate::follow::{self, Child, CrawlSpec, QueryFilter};
use crate::parse::SelectorSet;
use crate::settings::RetrySettings;
use crate::urls::{check_url, host_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The values `jobs.status` may hold (the table's CHECK constraint allows exactly these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    Skipped,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Done,
        Status::Failed,
        Status::Cancelled,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
        }
    }
}

/// What a job fetches (`jobs.kind`; the table's CHECK allows exactly these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JobKind {
    /// A page: parsed as HTML, its links followed in a crawl.
    #[default]
    Page,
    /// A sitemap: its URLs (or, for an index, its sitemaps) are queued in its crawl.
    Sitemap,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Page => "page",
            JobKind::Sitemap => "sitemap",
        }
    }

    /// From the column as stored; anything else (the CHECK forbids it) reads as a page.
    pub fn from_column(value: Option<&str>) -> JobKind {
        match value {
            Some("sitemap") => JobKind::Sitemap,
            _ => JobKind::Page,
        }
    }
}

/// A new job that passed admission: its URL parses, is http(s) and has a host, and its
/// selectors and crawl rules (if any) are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The rate-limit key: host name in lower case, without port.
    pub host: String,
    /// What per-crawl dedupe compares (see [`crate::follow::canonical`]).
    pub canonical_url: String,
}

/// Checks a new job before anything is fetched. The error is the text stored in
/// `jobs.error`, written for the person who inserted the row.
pub fn admit(
    url: &str,
    selectors: Option<&str>,
    crawl: &CrawlSpec,
    filter: &QueryFilter,
) -> Result<Admitted, String> {
    let url = check_url(url)?;
    if let Some(json) = selectors {
        SelectorSet::from_json(json).map_err(|e| e.to_string())?;
    }
    follow::check(&crawl.scope, crawl.allow.as_deref(), crawl.deny.as_deref())?;
    Ok(Admitted {
        host: host_key(&url).expect("check_url ensures a host"),
        canonical_url: follow::canonical(&url, filter).into(),
    })
}

/// A job this daemon holds the lease on. `attempt` (1-based) is part of the lease: a later
/// claim of the same job has a higher attempt, so a stale write cannot touch it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    /// The lease token this attempt runs under (`jobs.lease_owner`), unique per claim.
    pub lease: String,
    pub url: String,
    pub host: String,
    /// As stored (a user may write any number there); the lease check compares it exactly.
    pub attempt: i64,
    /// NULL in the table means the configured default.
    pub max_attempts: Option<u32>,
    pub selectors: Option<String>,
    /// The crawl this job belongs to (its own id for a root) and its crawl columns.
    pub root_id: i64,
    pub crawl: CrawlSpec,
    /// Which fetch of the job this is (1, then one more per recrawl): its `results` row.
    pub fetch_no: i64,
    /// Its URL in canonical form (set at admission; jobs older than crawls lack it).
    pub canonical_url: Option<String>,
    /// The version of this URL stored before, if the server gave it validators.
    pub known_version: Option<KnownVersion>,
    /// A page or a sitemap.
    pub kind: JobKind,
}

impl ClaimedJob {
    /// Whether the job belongs to a multi-page crawl (it follows links, or was found by
    /// one that does): such pages are fetched at most once per crawl, redirects included.
    pub fn in_crawl(&self) -> bool {
        self.crawl.max_depth > 0
    }

    /// Whether this is a later read of a sitemap (`recrawl_every`): what it lists may have
    /// changed since the crawl queued it (see `lastmod` in the README).
    pub fn is_sitemap_reread(&self) -> bool {
        self.kind == JobKind::Sitemap && self.fetch_no > 1
    }
}

/// A version of a URL we already have: its validators, and the result holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownVersion {
    pub validators: Validators,
    pub result_id: i64,
}

/// What the server answered, as stored in `results`.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRecord {
    pub url: String,
    pub final_url: String,
    pub http_status: u16,
    pub content_type: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub links: Vec<String>,
    pub data: BTreeMap<String, Vec<String>>,
    pub bytes: u64,
    pub elapsed: Duration,
    /// A 304 to our conditional GET: the result it confirmed (content is copied from it).
    pub unchanged_since: Option<i64>,
    /// The ETag / Last-Modified this version came with (kept for the next fetch).
    pub validators: Validators,
    /// The body gzip-compressed, when `fetch.store_body` is on.
    pub gzipped_body: Option<Vec<u8>>,
    /// In a crawl, where a redirect led: the crawl records it as seen, so links to it are
    /// not fetched again.
    pub redirect_target: Option<RedirectTarget>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedirectTarget {
    /// `final_url` in canonical form (what crawl dedupe compares).
    pub canonical_url: String,
    pub host: String,
}

/// How an attempt ended, before the retry policy is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// A final HTTP response (after redirects).
    Response(u16),
    /// 304 to a conditional GET: the version we have is current.
    NotModified,
    /// Worth trying again: a network error or a timeout.
    Transient(String),
    /// Trying again cannot help: bad input, redirect loop, body too large...
    Fatal(String),
    /// Crawl policy says no (robots.txt, a page this crawl already has): not fetched.
    Skipped(String),
    /// The job's origin cannot be asked yet (its robots.txt answered 5xx or 429, or did
    /// not answer in time): the job is tried again in `after`, when robots.txt is asked
    /// again. The job whose own request found it so (`asked_now`) spends an attempt, like
    /// after a 503, so a site that never answers still ends its jobs; the origin's other
    /// jobs only wait, so one bad answer does not cost a whole queue an attempt. Other
    /// origins of the same host name (another port, the other scheme) are not held back.
    RobotsUnreachable {
        after: Duration,
        reason: String,
        asked_now: bool,
    },
    /// crawlq's own fault, not the site's (it ran out of file descriptors, its HTTP
    /// client stopped): the job goes back to the queue without using up an attempt.
    Internal(String),
}

/// What the store does with the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Done,
    Retry {
        after: Duration,
        reason: String,
    },
    /// Back to the queue after `after`, this attempt not counted: the fault was crawlq's.
    Requeue {
        after: Duration,
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// Ends as `skipped`: policy forbids fetching it.
    Skipped {
        reason: String,
    },
}

/// One finished attempt, ready to be stored.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub job: ClaimedJob,
    pub page: Option<PageRecord>,
    pub verdict: Verdict,
    /// A host that asked (Retry-After) not to be contacted for a while, and for how long.
    pub pause: Option<(String, Duration)>,
    /// Links to queue as child jobs if the verdict is `Done`.
    pub children: Vec<Child>,
}

/// The retry policy, in one place: 2xx is done; 408, 429, 5xx and transient errors are
/// retried with backoff until the attempts run out; everything else fails at once. A
/// retry waits at least `not_before` (a Retry-After), and still counts as an attempt, so a
/// host that always answers 429 cannot keep a job forever.
pub fn decide(
    ending: &Ending,
    attempt: i64,
    max_attempts: u32,
    retry: &RetrySettings,
    not_before: Option<Duration>,
) -> Verdict {
    let (retryable, reason) = match ending {
        Ending::Response(status) if (200..300).contains(status) => return Verdict::Done,
        Ending::NotModified => return Verdict::Done,
        Ending::Response(status) => (
            matches!(status, 408 | 429 | 500..=599),
            format!("HTTP {}", fetch::describe_status(*status)),
        ),
        Ending::Transient(reason) => (true, reason.clone()),
        Ending::Fatal(reason) => (false, reason.clone()),
        Ending::Skipped(reason) => {
            return Verdict::Skipped {
                reason: reason.clone(),
            }
        }
        Ending::RobotsUnreachable {
            reason,
            after,
            asked_now: true,
        } => {
            return retry_or_give_up(reason.clone(), attempt, max_attempts, retry, Some(*after));
        }
        Ending::RobotsUnreachable {
            reason,
            after,
            asked_now: false,
        } => {
            return Verdict::Requeue {
                after: *after,
                reason: format!(
                    "{reason} (waiting {:.1} s for robots.txt to be asked again; not counted as an attempt)",
                    after.as_secs_f64()
                ),
            }
        }
        Ending::Internal(reason) => {
            return Verdict::Requeue {
                after: INTERNAL_FAULT_PAUSE,
                reason: format!("{reason} (not counted as an attempt; trying again)"),
            }
        }
    };
    if !retryable {
        return Verdict::Failed { reason };
    }
    retry_or_give_up(reason, attempt, max_attempts, retry, not_before)
}

/// A retryable ending: tried again after the backoff (and at least `not_before`), or
/// failed once the attempts are used up.
fn retry_or_give_up(
    reason: String,
    attempt: i64,
    max_attempts: u32,
    retry: &RetrySettings,
    not_before: Option<Duration>,
) -> Verdict {
    if attempt >= i64::from(max_attempts) {
        return Verdict::Failed {
            reason: format!("{reason} (gave up after {attempt} attempts)"),
        };
    }
    let after = backoff(attempt, retry).max(not_before.unwrap_or_default());
    Verdict::Retry {
        reason: format!(
            "{reason} (attempt {attempt} of {max_attempts}; retrying in {:.1} s)",
            after.as_secs_f64()
        ),
        after,
    }
}

/// How long a job waits after a fault of crawlq's own before it is tried again: long
/// enough for descriptors to be given back, short enough not to be noticed.
const INTERNAL_FAULT_PAUSE: Duration = Duration::from_secs(1);

/// Exponential backoff with ±20 % jitter: about `initial` after the first attempt, doubling,
/// capped at `max`. Jitter keeps many jobs that failed together from retrying together.
pub fn backoff(attempt: i64, retry: &RetrySettings) -> Duration {
    let exponent = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let base = retry
        .backoff_initial
        .saturating_mul(1u32 << exponent)
        .min(retry.backoff_max);
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn retry() -> RetrySettings {
        RetrySettings {
            max_attempts: NonZeroU32::new(3).unwrap(),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn statuses_are_judged_by_the_documented_policy() {
        let r = retry();
        assert_eq!(
            decide(&Ending::Response(200), 1, 3, &r, None),
            Verdict::Done
        );
        assert_eq!(
            decide(&Ending::Response(204), 3, 3, &r, None),
            Verdict::Done
        );
        for status in [408, 429, 500, 503] {
            assert!(matches!(
                decide(&Ending::Response(status), 1, 3, &r, None),
                Verdict::Retry { .. }
            ));
            assert!(matches!(
                decide(&Ending::Response(status), 3, 3, &r, None),
                Verdict::Failed { .. }
            ));
        }
        for status in [301, 400, 403, 404, 410] {
            assert!(matches!(
                decide(&Ending::Response(status), 1, 3, &r, None),
                Verdict::Failed { .. }
            ));
        }
        let Verdict::Failed { reason } = decide(&Ending::Response(404), 1, 3, &r, None) else {
            panic!()
        };
        assert_eq!(reason, "HTTP 404 Not Found");
        assert!(matches!(
            decide(&Ending::Transient("x".into()), 1, 3, &r, None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            decide(&Ending::Fatal("x".into()), 1, 3, &r, None),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let r = retry();
        for _ in 0..100 {
            let first = backoff(1, &r).as_secs_f64();
            assert!((0.8..=1.2).contains(&first), "{first}");
            let second = backoff(2, &r).as_secs_f64();
            assert!((1.6..=2.4).contains(&second), "{second}");
            let late = backoff(40, &r).as_secs_f64();
            assert!((8.0..=12.0).contains(&late), "{late}");
        }
    }

    fn admit_plain(url: &str, selectors: Option<&str>) -> Result<Admitted, String> {
        let crawl = CrawlSpec {
            scope: "host".into(),
            ..CrawlSpec::default()
        };
        admit(url, selectors, &crawl, &QueryFilter::default())
    }

    #[test]
    fn admission_explains_what_is_wrong() {
        assert_eq!(
            admit_plain("http://Example.COM:8080/a", None).unwrap().host,
            "example.com"
        );
        assert!(admit_plain("  https://example.com/  ", None).is_ok());
        assert!(admit_plain("ftp://example.com/x", None)
            .unwrap_err()
            .contains("unsupported URL scheme \"ftp\""));
        assert!(admit_plain("not a url", None)
            .unwrap_err()
            .starts_with("invalid URL"));
        assert!(admit_plain("", None).unwrap_err().contains("empty"));
        assert!(admit_plain(
            &format!("http://e.com/{}", "a".repeat(crate::urls::MAX_URL_BYTES)),
            None
        )
        .is_err());
        assert!(admit_plain("http://e.com/", Some("{\"a\": \"p..\"}"))
            .unwrap_err()
            .contains("\"a\""));
        let crawl = CrawlSpec {
            scope: "site".into(),
            ..CrawlSpec::default()
        };
        let filter = QueryFilter::default();
        assert!(admit("http://e.com/", None, &crawl, &filter)
            .unwrap_err()
            .contains("scope \"site\""));
        assert_eq!(
            admit_plain("HTTP://E.com:80/a/../b#x", None)
                .unwrap()
                .canonical_url,
            "http://e.com/b"
        );
    }
}
