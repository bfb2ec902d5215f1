//! robots.txt (RFC 9309): what a site lets crawlq fetch, and how slowly.
//!
//! One robots.txt per origin (scheme, host, port), fetched at most once per
//! `crawl.robots_cache_secs` by whichever job needs it first; other jobs of that origin
//! wait for that fetch instead of starting their own. Answers are kept in the `robots`
//! table, so a restart or a second daemon does not fetch them again, and in a bounded
//! in-memory map in front of it. Rules are parsed with `texting_robots`.
//!
//! How an answer is read (RFC 9309 §2.3.1):
//! - 2xx: the rules in the body (the first 512 KiB), for our product token or else `*`;
//! - 4xx other than 429, or a redirect chain that goes nowhere: no rules, all allowed;
//! - 5xx, 429, or no answer in time: everything disallowed until
//!   `robots_unreachable_wait_secs` has passed and robots.txt is tried again. The origin's
//!   jobs wait meanwhile: the one whose request found it so spends an attempt (so a site
//!   that never answers ends its jobs in turn), the others do not; other origins of the
//!   same host name do not wait;
//! - no connection at all (refused, no such host): nothing is kept, and the job fails or
//!   retries as any request that cannot connect.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use url::Url;

use crate::runtime::{self, AsyncMutex};
use crate::settings::CrawlSettings;

use crate::store::{FetchedRobots, RobotsAnswer, Store};

/// The most of a robots.txt body that is read; RFC 9309 asks for at least 500 KiB.
pub const MAX_ROBOTS_BYTES: u64 = 512 * 1024;

/// Origins whose rules are kept in memory; past this, idle ones are dropped at the next
/// prune (they are read back from the `robots` table when needed).
const MAX_CACHED_ORIGINS: usize = 4096;

/// What robots.txt says about one URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    /// Fetch it, leaving at least `crawl_delay` between requests to its host if set.
    Allowed { crawl_delay: Option<Duration> },
    /// Do not fetch it; the reason is stored with the skipped job.
    Disallowed(String),
    /// robots.txt could not be read: touch nothing on this origin for `wait`. `asked_now`
    /// when this job's own request found it so (that costs the job an attempt); otherwise
    /// the job met an answer already known, and only waits.
    Unreachable {
        wait: Duration,
        reason: String,
        asked_now: bool,
    },
    /// robots.txt was not asked for, through a fault of crawlq's own: nothing is known
    /// (or kept) about the site.
    NotAsked(String),
    /// Nothing answered there (refused, no such host): nothing is kept about the site.
    NoConnection(String),
    /// robots.txt could not be asked for, and retrying cannot change that (the site's TLS
    /// certificate was not accepted): the job fails; nothing is kept about the site.
    Fatal(String),
}

/// How an answer reads in a log line.
fn describe(answer: &RobotsAnswer) -> String {
    match answer {
        RobotsAnswer::Fetched { status, body } => {
            format!("HTTP {status}, {} bytes", body.len())
        }
        RobotsAnswer::Failed(reason)
        | RobotsAnswer::NotAsked(reason)
        | RobotsAnswer::NoConnection(reason)
        | RobotsAnswer::Fatal(reason) => reason.clone(),
    }
}

/// A site's rules, ready to be asked about URLs.
enum Policy {
    AllowAll,
    Rules(texting_robots::Robot),
    Unreachable(String),
    /// Not asked (crawlq's fault): never cached.
    NotAsked(String),
    /// Nothing answered: never cached.
    NoConnection(String),
    /// Retrying cannot help: never cached.
    Fatal(String),
}

struct Cached {
    policy: Arc<Policy>,
    expires: Instant,
}

/// One slot per origin; its lock is held while that origin's robots.txt is loaded, so
/// concurrent jobs of one site cause one fetch.
type Slot = Arc<AsyncMutex<Option<Cached>>>;

pub struct Robots {
    store: Store,
    /// The product token rules are matched against: the first word of the User-Agent.
    agent: String,
    settings: CrawlSettings,
    slots: Mutex<HashMap<String, Slot>>,
    /// Answers fetched but not yet stored: the scheduler stores them in batches.
    unsaved: Mutex<Unsaved>,
}

/// Answers fetched and not yet in the table, numbered in the order they came. One stays
/// here until a save that included it has committed, not only until it is handed out:
/// while it is being saved it is in neither place, and a failed answer that is in
/// neither reads as one `crawlq unpause` deleted.
#[derive(Default)]
struct Unsaved {
    next: u64,
    answers: Vec<(u64, FetchedRobots)>,
}

impl Unsaved {
    fn push(&mut self, fetched: FetchedRobots) {
        self.answers.push((self.next, fetched));
        self.next += 1;
    }

    /// The newest answer of each origin, in the order they came.
    fn batch(&self) -> UnsavedRobots {
        let mut seen = std::collections::HashSet::new();
        let mut answers: Vec<FetchedRobots> = self
            .answers
            .iter()
            .rev()
            .filter(|(_, fetched)| seen.insert(fetched.origin.clone()))
            .map(|(_, fetched)| fetched.clone())
            .collect();
        answers.reverse();
        UnsavedRobots {
            answers,
            up_to: self.answers.last().map(|(number, _)| *number),
        }
    }

    fn saved(&mut self, batch: &UnsavedRobots) {
        if let Some(up_to) = batch.up_to {
            self.answers.retain(|(number, _)| *number > up_to);
        }
    }

    fn has(&self, origin: &str) -> bool {
        self.answers
            .iter()
            .any(|(_, fetched)| fetched.origin == origin)
    }
}

/// Answers to store in one go (the newest for each origin), up to answer number `up_to`
/// (None: there were none).
pub struct UnsavedRobots {
    pub answers: Vec<FetchedRobots>,
    up_to: Option<u64>,
}

impl Robots {
    pub fn new(store: Store, user_agent: &str, settings: &CrawlSettings) -> Robots {
        Robots {
            store,
            agent: product_token(user_agent),
            settings: settings.clone(),
            slots: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(Unsaved::default()),
        }
    }

    /// Whether `url` may be fetched. `fetch_robots` is called with the origin's robots.txt
    /// URL when its rules are neither in memory nor fresh in the database; it must go
    /// through the rate limiter like any request.
    pub async fn permission<F, Fut>(&self, url: &Url, fetch_robots: F) -> Permission
    where
        F: FnOnce(Url) -> Fut,
        Fut: Future<Output = RobotsAnswer>,
    {
        if !self.settings.obey_robots || url.path() == "/robots.txt" {
            return Permission::Allowed { crawl_delay: None };
        }
        let origin = url.origin().ascii_serialization();
        let (policy, expires, asked_now) = self.policy(&origin, fetch_robots).await;
        match &*policy {
            Policy::AllowAll => Permission::Allowed { crawl_delay: None },
            Policy::Rules(robot) => rule_on(
                robot,
                url,
                &origin,
                &self.agent,
                self.settings.max_crawl_delay,
            ),
            Policy::NotAsked(reason) => Permission::NotAsked(reason.clone()),
            Policy::NoConnection(reason) => Permission::NoConnection(reason.clone()),
            Policy::Fatal(reason) => Permission::Fatal(reason.clone()),
            Policy::Unreachable(reason) => Permission::Unreachable {
                wait: expires
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1)),
                reason: reason.clone(),
                asked_now,
            },
        }
    }

    /// The sitemaps the robots.txt of `url`'s origin names in `Sitemap:` lines (for
    /// `crawl.follow_sitemaps`), as written. Read from the same cached answer as the rules
    /// (asked for through `fetch_robots` if there is none, even with `obey_robots` off);
    /// none when robots.txt has no rules for us to read.
    pub async fn sitemaps<F, Fut>(&self, url: &Url, fetch_robots: F) -> Vec<String>
    where
        F: FnOnce(Url) -> Fut,
        Fut: Future<Output = RobotsAnswer>,
    {
        let origin = url.origin().ascii_serialization();
        match &*self.policy(&origin, fetch_robots).await.0 {
            Policy::Rules(robot) => robot.sitemaps.clone(),
            _ => Vec::new(),
        }
    }

    /// The origin's policy, until when it holds, and whether robots.txt was asked for it
    /// just now (by this call).
    async fn policy<F, Fut>(&self, origin: &str, fetch_robots: F) -> (Arc<Policy>, Instant, bool)
    where
        F: FnOnce(Url) -> Fut,
        Fut: Future<Output = RobotsAnswer>,
    {
        let slot = self
            .slots
            .lock()
            .expect("robots slots lock")
            .entry(origin.to_owned())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        let stored = match cached.as_ref().filter(|c| c.expires > Instant::now()) {
            None => self.store.robots(origin).await,
            // A failed answer holds the origin's jobs back for minutes: before it does,
            // check that the table still has it (`crawlq unpause` deletes it). An answer
            // not saved yet is not there anyway.
            Some(c) if matches!(*c.policy, Policy::Unreachable(_)) && !self.is_unsaved(origin) => {
                match self.store.robots(origin).await {
                    Ok(None) => Ok(None),
                    _ => return (c.policy.clone(), c.expires, false),
                }
            }
            Some(c) => return (c.policy.clone(), c.expires, false),
        };
        let ((answer, fresh_for), asked_now) = match stored {
            Ok(Some(stored)) => (stored, false),
            Ok(None) => (self.fetch_and_keep(origin, fetch_robots).await, true),
            Err(e) => {
                tracing::warn!(%origin, error = %e, "could not read the robots.txt cache; fetching it again");
                (self.fetch_and_keep(origin, fetch_robots).await, true)
            }
        };
        match answer {
            RobotsAnswer::NotAsked(reason) => {
                return (
                    Arc::new(Policy::NotAsked(reason)),
                    Instant::now(),
                    asked_now,
                )
            }
            RobotsAnswer::NoConnection(reason) => {
                return (
                    Arc::new(Policy::NoConnection(reason)),
                    Instant::now(),
                    asked_now,
                )
            }
            RobotsAnswer::Fatal(reason) => {
                return (Arc::new(Policy::Fatal(reason)), Instant::now(), asked_now)
            }
            _ => {}
        }
        let agent = self.agent.clone();
        let origin_owned = origin.to_owned();
        // Parsing a large robots.txt compiles many patterns: keep it off the I/O threads.
        let policy =
            runtime::run_cpu_bound(move || policy_of(&answer, &agent, &origin_owned)).await;
        let entry = Cached {
            policy: Arc::new(policy),
            expires: Instant::now() + fresh_for,
        };
        let found = (entry.policy.clone(), entry.expires, asked_now);
        *cached = Some(entry);
        found
    }

    /// Fetches robots.txt and stores the answer; returns it with how long it holds.
    async fn fetch_and_keep<F, Fut>(
        &self,
        origin: &str,
        fetch_robots: F,
    ) -> (RobotsAnswer, Duration)
    where
        F: FnOnce(Url) -> Fut,
        Fut: Future<Output = RobotsAnswer>,
    {
        let robots_url = Url::parse(&format!("{origin}/robots.txt"))
            .expect("an http(s) origin plus a path is a URL");
        let answer = fetch_robots(robots_url).await;
        if let RobotsAnswer::NotAsked(_) | RobotsAnswer::NoConnection(_) | RobotsAnswer::Fatal(_) =
            answer
        {
            return (answer, Duration::ZERO);
        }
        let fresh_for = match &answer {
            RobotsAnswer::Fetched { status, .. } if !is_unreachable(*status) => {
                self.settings.robots_cache
            }
            _ => self.settings.robots_unreachable_wait,
        };
        tracing::info!(%origin, answer = %describe(&answer), "robots.txt fetched");
        self.unsaved
            .lock()
            .expect("unsaved robots lock")
            .push(FetchedRobots {
                origin: origin.to_owned(),
                answer: answer.clone(),
                expires: Instant::now() + fresh_for,
            });
        (answer, fresh_for)
    }

    /// The answers not stored yet, for the scheduler to store in one go (only the newest
    /// of an origin's: one statement cannot upsert a row twice). They stay unsaved until
    /// [`Robots::saved`]; until then (and if storing fails) they are obeyed from memory,
    /// and a restart fetches them again.
    pub fn unsaved(&self) -> UnsavedRobots {
        self.unsaved.lock().expect("unsaved robots lock").batch()
    }

    /// `batch` is in the table now: its answers (and older ones of the same origins) are
    /// no longer unsaved. Answers fetched since it was taken stay.
    pub fn saved(&self, batch: &UnsavedRobots) {
        self.unsaved
            .lock()
            .expect("unsaved robots lock")
            .saved(batch)
    }

    /// Drops expired and surplus origins nobody is using, so memory does not grow with
    /// the number of sites ever crawled.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("robots slots lock");
        // A slot someone else holds a handle to is about to be used: keep it, or a second
        // slot (and a second fetch) could be made for the same origin.
        slots.retain(|_, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            match slot.try_lock() {
                Some(cached) => cached.as_ref().is_some_and(|c| c.expires > now),
                None => true,
            }
        });
        if slots.len() > MAX_CACHED_ORIGINS {
            let surplus = slots.len() - MAX_CACHED_ORIGINS;
            let idle: Vec<String> = slots
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1 && slot.try_lock().is_some())
                .map(|(origin, _)| origin.clone())
                .take(surplus)
                .collect();
            for origin in idle {
                slots.remove(&origin);
            }
        }
    }

    /// Whether an answer for `origin` was fetched but is not in the table yet.
    fn is_unsaved(&self, origin: &str) -> bool {
        self.unsaved
            .lock()
            .expect("unsaved robots lock")
            .has(origin)
    }

    /// Origins whose rules are in memory (for tests and stats).
    pub fn cached_origins(&self) -> usize {
        self.slots.lock().expect("robots slots lock").len()
    }
}

/// 5xx and 429 mean the site could not say what it allows (RFC 9309 §2.3.1.4; a 429 is
/// the site asking us to slow down, so it is read the same way).
fn is_unreachable(status: u16) -> bool {
    status == 429 || status >= 500
}

fn policy_of(answer: &RobotsAnswer, agent: &str, origin: &str) -> Policy {
    match answer {
        RobotsAnswer::Fetched { status, body } if (200..300).contains(status) => {
            match texting_robots::Robot::new(agent, body) {
                Ok(robot) => Policy::Rules(robot),
                Err(e) => {
                    // The parser is lenient; what it still refuses holds no usable rule.
                    tracing::warn!(%origin, error = %e, "robots.txt could not be parsed; treating it as empty");
                    Policy::AllowAll
                }
            }
        }
        RobotsAnswer::Fetched { status, .. } if is_unreachable(*status) => {
            Policy::Unreachable(format!(
                "robots.txt unreachable ({origin}/robots.txt answered {})",
                crate::fetch::describe_status(*status)
            ))
        }
        RobotsAnswer::Fetched { .. } => Policy::AllowAll,
        RobotsAnswer::Failed(reason) => {
            Policy::Unreachable(format!("robots.txt unreachable ({reason})"))
        }
        RobotsAnswer::NotAsked(reason) => Policy::NotAsked(reason.clone()),
        RobotsAnswer::NoConnection(reason) => Policy::NoConnection(reason.clone()),
        RobotsAnswer::Fatal(reason) => Policy::Fatal(reason.clone()),
    }
}

/// What a site's rules say about `url`: allowed, with the Crawl-delay crawlq honours (at
/// most `max_crawl_delay`), or disallowed.
fn rule_on(
    robot: &texting_robots::Robot,
    url: &Url,
    origin: &str,
    agent: &str,
    max_crawl_delay: Duration,
) -> Permission {
    if !robot.allowed(url.as_str()) {
        return Permission::Disallowed(format!(
            "disallowed by robots.txt ({origin}/robots.txt, rules for {agent:?})"
        ));
    }
    Permission::Allowed {
        crawl_delay: robot
            .delay
            .filter(|d| *d > 0.0)
            // A delay too large for a Duration (1e30) is simply "the most we honour".
            .map(|d| {
                Duration::try_from_secs_f32(d)
                    .unwrap_or(Duration::MAX)
                    .min(max_crawl_delay)
            }),
    }
}

/// What a robots.txt body, fetched with a 2xx status, says about `url` for `user_agent`:
/// the reading [`Robots::permission`] makes of such an answer, without its cache and store
/// (one parse per call). The fuzz target `robots` drives the parser through it.
pub fn read_rules(
    body: &[u8],
    user_agent: &str,
    url: &Url,
    max_crawl_delay: Duration,
) -> Permission {
    let agent = product_token(user_agent);
    let origin = url.origin().ascii_serialization();
    let answer = RobotsAnswer::Fetched {
        status: 200,
        body: body.to_vec(),
    };
    match policy_of(&answer, &agent, &origin) {
        Policy::Rules(robot) => rule_on(&robot, url, &origin, &agent, max_crawl_delay),
        // A 2xx answer is rules or, when the parser refuses it, no rules at all.
        _ => Permission::Allowed { crawl_delay: None },
    }
}

/// "crawlq/0.1 (+https://…)" → "crawlq": the name robots.txt groups are matched against.
fn product_token(user_agent: &str) -> String {
    let token: String = user_agent
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if token.is_empty() {
        "*".to_owned()
    } else {
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(status: u16, body: &str) -> RobotsAnswer {
        RobotsAnswer::Fetched {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    fn allows(policy: &Policy, path: &str) -> bool {
        match policy {
            Policy::AllowAll => true,
            Policy::Rules(robot) => robot.allowed(&format!("http://a.example{path}")),
            Policy::Unreachable(_)
            | Policy::NotAsked(_)
            | Policy::NoConnection(_)
            | Policy::Fatal(_) => false,
        }
    }

    #[test]
    fn an_answer_stays_unsaved_until_the_save_that_took_it_has_committed() {
        let answer = |origin: &str, status| FetchedRobots {
            origin: origin.to_owned(),
            answer: fetched(status, ""),
            expires: Instant::now(),
        };
        let mut unsaved = Unsaved::default();
        unsaved.saved(&unsaved.batch());
        unsaved.push(answer("http://a", 503));
        unsaved.push(answer("http://b", 200));
        unsaved.push(answer("http://a", 200));
        let batch = unsaved.batch();
        let origins: Vec<(&str, u16)> = batch
            .answers
            .iter()
            .map(|f| match f.answer {
                RobotsAnswer::Fetched { status, .. } => (f.origin.as_str(), status),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            origins,
            [("http://b", 200), ("http://a", 200)],
            "newest of each"
        );
        // Being saved: still unsaved (the table does not have it yet).
        assert!(unsaved.has("http://a"));
        unsaved.push(answer("http://c", 503));
        unsaved.saved(&batch);
        assert!(!unsaved.has("http://a") && !unsaved.has("http://b"));
        assert!(unsaved.has("http://c"), "fetched after the batch was taken");
        // An empty batch saves nothing, whatever came after it.
        let empty = Unsaved::default().batch();
        unsaved.saved(&empty);
        assert!(unsaved.has("http://c"));
    }

    #[test]
    fn the_agents_own_group_wins_over_the_star_group() {
        let body = "User-agent: *\nDisallow: /\n\nUser-agent: crawlq\nDisallow: /private\nCrawl-delay: 2.5\n";
        let policy = policy_of(&fetched(200, body), "crawlq", "http://a.example");
        assert!(allows(&policy, "/public"));
        assert!(!allows(&policy, "/private/x"));
        let Policy::Rules(robot) = &policy else {
            panic!("parsed")
        };
        assert_eq!(robot.delay, Some(2.5));
        let other = policy_of(&fetched(200, body), "otherbot", "http://a.example");
        assert!(!allows(&other, "/public"));
    }

    #[test]
    fn status_codes_read_as_rfc_9309_says() {
        assert!(matches!(
            policy_of(&fetched(404, "Disallow: /"), "crawlq", "o"),
            Policy::AllowAll
        ));
        assert!(matches!(
            policy_of(&fetched(503, ""), "crawlq", "o"),
            Policy::Unreachable(reason) if reason.contains("503 Service Unavailable")
        ));
        assert!(matches!(
            policy_of(&fetched(429, ""), "crawlq", "o"),
            Policy::Unreachable(_)
        ));
        assert!(matches!(
            policy_of(&RobotsAnswer::Failed("timed out".into()), "crawlq", "o"),
            Policy::Unreachable(reason) if reason.contains("timed out")
        ));
    }

    #[test]
    fn crawl_delays_are_positive_and_capped() {
        let url = Url::parse("http://a.example/page").unwrap();
        let max = Duration::from_secs(30);
        let delay_of = |body: &str| match read_rules(body.as_bytes(), "crawlq/0.1", &url, max) {
            Permission::Allowed { crawl_delay } => crawl_delay,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            delay_of("User-agent: *\nCrawl-delay: 2.5\n"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(delay_of("User-agent: *\nCrawl-delay: 1e30\n"), Some(max));
        assert_eq!(delay_of("User-agent: *\nCrawl-delay: 0\n"), None);
        assert_eq!(delay_of("User-agent: *\nCrawl-delay: -3\n"), None);
        assert_eq!(delay_of(""), None);
        assert!(matches!(
            read_rules(b"User-agent: crawlq\nDisallow: /page\n", "crawlq/0.1", &url, max),
            Permission::Disallowed(reason) if reason.contains("http://a.example/robots.txt")
        ));
    }

    #[test]
    fn the_product_token_is_the_first_word_of_the_user_agent() {
        assert_eq!(product_token("crawlq/0.1 (+https://x)"), "crawlq");
        assert_eq!(product_token("My_Bot-2 rest"), "My_Bot-2");
        assert_eq!(product_token("  "), "*");
    }
}
