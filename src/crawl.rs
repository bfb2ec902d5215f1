//! One attempt at one job: ask robots.txt, wait for the host's rate limit, fetch, follow
//! redirects (each hop asks robots.txt and waits for the limiter again), parse, and say
//! how it ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::Instrument;
use url::Url;

use crate::body;
use crate::fetch::{self, FetchError, Fetcher, GetOptions, Response, Validators};
use crate::follow::{self, Child, Follow, QueryFilter};
use crate::job::{self, Attempt, ClaimedJob, Ending, JobKind, PageRecord, RedirectTarget};
use crate::limits::{RateLimits, Ticket};
use crate::parse::{self, SelectorSet};
use crate::robots::{self, Permission, Robots, UnsavedRobots};
use crate::runtime::{self, Counted};
use crate::settings::Settings;
use crate::sitemap::{self, Sitemap, SitemapKind};
use crate::store::{RobotsAnswer, Store};
use crate::urls;

/// Redirects followed for robots.txt (RFC 9309 asks for at least five).
const ROBOTS_MAX_REDIRECTS: usize = 5;

/// What one attempt came to, before the retry policy.
struct Outcome {
    page: Option<PageRecord>,
    ending: Ending,
    children: Vec<Child>,
    pause: Option<(String, Duration)>,
}

impl Outcome {
    fn ended(ending: Ending) -> Outcome {
        Outcome {
            page: None,
            ending,
            children: Vec::new(),
            pause: None,
        }
    }
}

pub struct Crawler {
    store: Store,
    /// The pages (crawl, canonical URL) attempts are fetching, their own URLs and their
    /// redirect targets, until their results are committed (see [`ClaimedTargets`]).
    targets: Arc<Mutex<Targets>>,
    fetcher: Fetcher,
    limits: RateLimits,
    robots: Robots,
    query_filter: QueryFilter,
    settings: Arc<Settings>,
    /// Attempts between their spawn and their last response (see
    /// [`Crawler::on_the_network`]).
    on_the_network: Arc<AtomicUsize>,
}

impl Crawler {
    /// The store is read for robots.txt answers and for the URLs a crawl already has.
    pub fn new(settings: Arc<Settings>, store: Store) -> Result<Crawler, String> {
        Ok(Crawler {
            fetcher: Fetcher::new(&settings.fetch, &settings.limits)?,
            limits: RateLimits::new(&settings.limits),
            robots: Robots::new(store.clone(), &settings.fetch.user_agent, &settings.crawl),
            store,
            targets: Arc::default(),
            query_filter: QueryFilter::new(&settings.crawl.strip_query_params),
            settings,
            on_the_network: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Forgets per-host state nobody used lately (limiter cells, robots.txt rules), so
    /// memory does not grow with the number of hosts ever seen.
    pub fn prune(&self) {
        self.limits.prune();
        self.robots.prune();
    }

    /// Attempts that have not had their last response yet (those waiting for a quota
    /// included): once it is in, an attempt parses and waits to be stored, and sends
    /// nothing more.
    pub fn on_the_network(&self) -> usize {
        self.on_the_network.load(Ordering::Relaxed)
    }

    /// Counts an attempt as on the network from now (the scheduler calls it before it
    /// spawns the attempt, so that the next loop turn sees it) until its last response.
    pub fn network_phase(&self) -> Counted {
        Counted::new(&self.on_the_network)
    }

    /// See [`Fetcher::keep_connections_to`]: the scheduler knows which hosts it is
    /// crawling at their pace (see [`crate::schedule`]).
    pub fn keep_connections_to(&self, host: &str, keep: bool) {
        self.fetcher.keep_connections_to(host, keep);
    }

    /// Hosts whose connections the HTTP client's cache can keep.
    pub fn idle_connections(&self) -> usize {
        self.fetcher.idle_connections()
    }

    /// robots.txt answers fetched and not yet stored (see [`Robots::unsaved`]).
    pub fn unsaved_robots(&self) -> UnsavedRobots {
        self.robots.unsaved()
    }

    /// Those answers are in the table now.
    pub fn robots_saved(&self, batch: &UnsavedRobots) {
        self.robots.saved(batch)
    }

    /// The canonical-URL rules, shared with admission.
    pub fn query_filter(&self) -> &QueryFilter {
        &self.query_filter
    }

    /// For the scheduler, as it starts an attempt of a claimed job: the job's own URL,
    /// held for it unless another attempt of its crawl holds it (a redirect there), in
    /// which case the attempt gives way. Taken in the scheduler's task rather than in the
    /// attempt's, so in a fixed order with the commits that record what other attempts
    /// fetched (see [`ClaimedTargets`]). The scheduler keeps the returned value until the
    /// attempt's result is committed.
    pub fn claim_targets(&self, job: &ClaimedJob) -> ClaimedTargets {
        let mut held = Vec::new();
        let mut own_url_taken = None;
        if let (true, Ok(start)) = (job.in_crawl(), urls::check_url(&job.url)) {
            let key = target_key(job.root_id, &start, &self.query_filter);
            let mut targets = self.targets.lock().expect("targets lock");
            // Redirects only asking about it do not stop it: they will find this job in
            // the database, or its hold.
            let page = targets.pages.entry(key.clone()).or_default();
            if page.held {
                own_url_taken = Some(start);
            } else {
                page.held = true;
                held.push(key);
            }
        }
        ClaimedTargets(Arc::new(Claimed {
            targets: self.targets.clone(),
            held: Mutex::new(held),
            own_url_taken,
        }))
    }

    /// Runs one attempt of a claimed job and applies the retry policy to its ending. The
    /// `ticket` is the request to the job's host that the scheduler was granted when it
    /// claimed the job (see [`RateLimits::grant`]); `network` counts the attempt in
    /// [`Crawler::on_the_network`] until its last response is in; `targets` is what
    /// [`Crawler::claim_targets`] gave for the job.
    pub async fn attempt(
        &self,
        job: ClaimedJob,
        ticket: Ticket,
        network: Counted,
        targets: ClaimedTargets,
    ) -> Attempt {
        let span = tracing::debug_span!(
            "job",
            job.id = %job.id,
            url = %job.url,
            host = %job.host,
            attempt = job.attempt
        );
        async move {
            tracing::debug!("claimed");
            let outcome = self.run(&job, &ticket, network, &targets).await;
            let max_attempts = job
                .max_attempts
                .unwrap_or(self.settings.retry.max_attempts.get());
            let verdict = job::decide(
                &outcome.ending,
                job.attempt,
                max_attempts,
                &self.settings.retry,
                outcome.pause.as_ref().map(|(_, how_long)| *how_long),
            );
            tracing::debug!(?verdict, "attempt finished");
            Attempt {
                job,
                page: outcome.page,
                verdict,
                children: outcome.children,
                pause: outcome.pause,
            }
        }
        .instrument(span)
        .await
    }

    async fn run(
        &self,
        job: &ClaimedJob,
        ticket: &Ticket,
        network: Counted,
        targets: &ClaimedTargets,
    ) -> Outcome {
        // Admission checked these already; the row may have been edited since.
        let selectors = match SelectorSet::from_optional_json(job.selectors.as_deref()) {
            Ok(selectors) => selectors,
            Err(e) => return Outcome::ended(Ending::Fatal(e.to_string())),
        };
        let follow = match Follow::new(&job.crawl, &job.host) {
            Ok(follow) => follow,
            Err(reason) => return Outcome::ended(Ending::Fatal(reason)),
        };
        let start = match urls::check_url(&job.url) {
            Ok(url) => url,
            Err(reason) => return Outcome::ended(Ending::Fatal(reason)),
        };
        // A page whose links this crawl follows is fetched in full: a 304 carries no
        // links to follow. So is a sitemap: a re-read compares what it lists now.
        let is_sitemap = job.kind == JobKind::Sitemap;
        let follows_links = job.crawl.depth < job.crawl.max_depth;
        let known = job
            .known_version
            .as_ref()
            .filter(|_| self.settings.fetch.conditional_get && !follows_links && !is_sitemap);
        let if_changed = known.map(|k| &k.validators);
        // A redirect of another job of the crawl is fetching it (see `claim_targets`).
        if let Some(taken) = targets.own_url_taken() {
            return Outcome::ended(Ending::Skipped(format!(
                "another job of this crawl is fetching {taken} (it redirected there)"
            )));
        }
        let fetched = {
            let _on_the_network = network;
            self.fetch_following_redirects(job, start.clone(), if_changed, targets, ticket)
                .await
        };
        let (final_url, response) = match fetched {
            Ok(found) => found,
            Err(ending) => return Outcome::ended(ending),
        };
        let status = response.status;
        let pause = self.honour_retry_after(&final_url, &response);
        if let Some(known) = known.filter(|_| status == 304 && final_url == start) {
            tracing::debug!(result = known.result_id, "not modified");
            let mut page = Box::pin(self.record(&start, final_url, response, selectors)).await;
            page.unchanged_since = Some(known.result_id);
            page.validators = known.validators.clone();
            return Outcome {
                page: Some(page),
                ..Outcome::ended(Ending::NotModified)
            };
        }
        if is_sitemap {
            return Box::pin(self.read_sitemap(job, &start, final_url, response, pause)).await;
        }
        let mut page = Box::pin(self.record(&start, final_url, response, selectors)).await;
        if job.in_crawl() && page.final_url != page.url {
            let target = Url::parse(&page.final_url).expect("final_url was a Url");
            page.redirect_target = Some(RedirectTarget {
                canonical_url: follow::canonical(&target, &self.query_filter).into(),
                host: urls::host_key(&target).expect("fetched URLs have a host"),
            });
        }
        let mut children = Vec::new();
        if (200..300).contains(&status) {
            if self.settings.crawl.follow_sitemaps && follows_links && job.id.0 == job.root_id {
                children = self.sitemaps_from_robots(&start, &follow, ticket).await;
            }
            children.extend(follow.children(&page.links, &self.query_filter));
        }
        if !children.is_empty() {
            tracing::debug!(children = children.len(), "links to follow");
        }
        Outcome {
            page: Some(page),
            ending: Ending::Response(status),
            children,
            pause,
        }
    }

    /// A sitemap job's response: a sitemap (or index) read on a blocking thread, its URLs
    /// in the crawl's scope become the attempt's children (pages, or for an index,
    /// sitemaps). Its `results` row lists the URLs it kept (`links`) and counts them
    /// (`data`). What cannot be read as a sitemap fails the job, naming the URL and why.
    async fn read_sitemap(
        &self,
        job: &ClaimedJob,
        start: &Url,
        final_url: Url,
        response: Response,
        pause: Option<(String, Duration)>,
    ) -> Outcome {
        let status = response.status;
        let limits = sitemap::Limits {
            max_bytes: self.settings.crawl.sitemap_max_bytes,
            max_urls: self.settings.crawl.sitemap_max_urls,
        };
        let keep_body = self.settings.fetch.store_body;
        let span = tracing::debug_span!("sitemap", bytes = response.body.len());
        let ok = (200..300).contains(&status);
        let mut page = bare_record(start, &final_url, &response);
        let bytes = response.body;
        // Checking 50 000 URLs against scope and patterns takes most of a second: it runs
        // on the blocking thread too, with the crawl rules built again there from the
        // job's columns (cheap, and they stay out of the async task's state).
        let (crawl, host, filter) = (
            job.crawl.clone(),
            job.host.clone(),
            self.query_filter.clone(),
        );
        let (read, gzipped) = runtime::run_cpu_bound(move || {
            span.in_scope(|| {
                let gzipped = keep_body.then(|| body::gzip(&bytes));
                let read = ok.then(|| {
                    let sitemap = sitemap::read(&bytes, limits)?;
                    drop(bytes);
                    let follow = Follow::new(&crawl, &host).map_err(SitemapFailure::Rules)?;
                    let kind = match sitemap.kind {
                        SitemapKind::UrlSet => JobKind::Page,
                        SitemapKind::Index => JobKind::Sitemap,
                    };
                    let children = follow.listed(
                        sitemap
                            .entries
                            .iter()
                            .map(|e| (e.loc.as_str(), kind, e.lastmod.as_deref())),
                        &filter,
                    );
                    Ok::<_, SitemapFailure>((sitemap, children))
                });
                (read, gzipped)
            })
        })
        .await;
        page.gzipped_body = gzipped;
        let (sitemap, children) = match read {
            None => {
                return Outcome {
                    page: Some(page),
                    pause,
                    ..Outcome::ended(Ending::Response(status))
                }
            }
            Some(Err(SitemapFailure::Read(e))) => {
                return Outcome {
                    page: Some(page),
                    pause,
                    ..Outcome::ended(Ending::Fatal(format!("sitemap {final_url}: {e}")))
                }
            }
            Some(Err(SitemapFailure::Rules(reason))) => {
                return Outcome {
                    page: Some(page),
                    pause,
                    ..Outcome::ended(Ending::Fatal(reason))
                }
            }
            Some(Ok(read)) => read,
        };
        if sitemap.left_out() > 0 {
            tracing::warn!(url = %final_url, listed = sitemap.listed, kept = sitemap.entries.len(), "sitemap lists more URLs than crawl.sitemap_max_urls; the rest are left out");
        }
        tracing::debug!(
            listed = sitemap.listed,
            in_scope = children.len(),
            "sitemap read"
        );
        page.data = sitemap_summary(&sitemap, children.len(), limits.max_urls);
        page.links = sitemap.entries.into_iter().map(|e| e.loc).collect();
        Outcome {
            page: Some(page),
            ending: Ending::Response(status),
            children,
            pause,
        }
    }

    /// The sitemaps the crawl root's robots.txt names, as sitemap jobs of its crawl (in
    /// its scope). Asked after the root's own fetch, so its robots.txt is known already.
    async fn sitemaps_from_robots(
        &self,
        start: &Url,
        follow: &Follow,
        ticket: &Ticket,
    ) -> Vec<Child> {
        let named = self
            .robots
            .sitemaps(start, |robots_url| self.fetch_robots(robots_url, ticket))
            .await;
        if !named.is_empty() {
            tracing::debug!(sitemaps = named.len(), "robots.txt names sitemaps");
        }
        follow.listed(
            named
                .iter()
                .map(|url| (url.as_str(), JobKind::Sitemap, None)),
            &self.query_filter,
        )
    }

    /// A 429 or 503 with Retry-After pauses the whole host (at most
    /// `retry.max_retry_after_secs`), at once for requests already waiting here, and, once
    /// stored, for claims and restarts too.
    fn honour_retry_after(&self, url: &Url, response: &Response) -> Option<(String, Duration)> {
        let value = response.retry_after.as_deref()?;
        let how_long = retry_after_pause(
            response.status,
            value,
            SystemTime::now(),
            self.settings.retry.max_retry_after,
        )?;
        let host = urls::host_key(url)?;
        self.limits.pause(&host, how_long);
        tracing::info!(
            %host,
            status = response.status,
            retry_after = value,
            pause_secs = how_long.as_secs_f64(),
            "host asked us to wait; pausing it"
        );
        Some((host, how_long))
    }

    /// Whether robots.txt lets us fetch `url`; with its host's Crawl-delay if so.
    async fn ask_robots(
        &self,
        url: &Url,
        first: bool,
        ticket: &Ticket,
    ) -> Result<Option<Duration>, Ending> {
        let via = if first {
            String::new()
        } else {
            format!("redirect to {url}: ")
        };
        // A destination the address guard refuses fails the job here, before robots.txt
        // (which it would refuse too) could make it look like an unreachable host.
        if let Err(refused @ FetchError::Refused { .. }) = self.fetcher.check_destination(url).await
        {
            return Err(Ending::Fatal(format!("{via}{refused}")));
        }
        // Boxed, like the GETs below: an attempt waiting for its quota holds only its
        // small outer state, not room for the largest future it may await (10 KB).
        let permission = Box::pin(
            self.robots
                .permission(url, |robots_url| self.fetch_robots(robots_url, ticket)),
        );
        match permission.await {
            Permission::Allowed { crawl_delay } => Ok(crawl_delay),
            Permission::Disallowed(reason) => Err(Ending::Skipped(format!("{via}{reason}"))),
            Permission::NotAsked(reason) => Err(Ending::Internal(format!(
                "{via}robots.txt not fetched: {reason}"
            ))),
            // Nothing answers there: an ordinary failure to connect, retried with the
            // usual backoff, not a robots.txt to wait for.
            Permission::NoConnection(reason) => Err(Ending::Transient(format!(
                "{via}robots.txt not fetched: {reason}"
            ))),
            Permission::Fatal(reason) => Err(Ending::Fatal(format!(
                "{via}robots.txt not fetched: {reason}"
            ))),
            // Only this origin waits (RFC 9309 reads robots.txt per origin): its jobs come
            // back when its answer is due again; the host's other ports do not wait.
            Permission::Unreachable {
                wait,
                reason,
                asked_now,
            } => {
                tracing::debug!(wait_secs = wait.as_secs_f64(), %reason, asked_now, "robots.txt unreachable; the job waits for it");
                Err(Ending::RobotsUnreachable {
                    after: wait,
                    reason: format!("{via}{reason}"),
                    asked_now,
                })
            }
        }
    }

    /// GETs a robots.txt through the rate limiter, following up to five redirects (to any
    /// host: each hop waits for its own host's quota).
    async fn fetch_robots(&self, robots_url: Url, ticket: &Ticket) -> RobotsAnswer {
        let mut url = robots_url;
        for _ in 0..=ROBOTS_MAX_REDIRECTS {
            let host = urls::host_key(&url).expect("robots.txt URLs have a host");
            // robots.txt itself is not under the Crawl-delay it may hold.
            let _no_turn = self.limits.until_ready(&host, None, ticket).await;
            let options = GetOptions {
                pace: Some(&self.limits),
                cut_body_at: Some(robots::MAX_ROBOTS_BYTES),
                if_changed: None,
                max_body: None,
            };
            let response = Box::pin(self.fetcher.get(&url, options)).await;
            self.limits.space_from_now(&host);
            let response = match response {
                Ok(response) => response,
                Err(e) if e.is_internal() => {
                    return RobotsAnswer::NotAsked(format!("GET {url}: {e}"))
                }
                Err(e) if e.is_no_connection() => {
                    return RobotsAnswer::NoConnection(format!("GET {url}: {e}"))
                }
                Err(e) if !e.is_transient() => {
                    return RobotsAnswer::Fatal(format!("GET {url}: {e}"))
                }
                Err(e) => return RobotsAnswer::Failed(format!("GET {url}: {e}")),
            };
            match redirect_target(&url, &response) {
                Some(Ok(next)) => url = next,
                // A redirect without a usable target reads as its status: 3xx, "no rules".
                Some(Err(_)) | None => {
                    return RobotsAnswer::Fetched {
                        status: response.status,
                        body: response.body,
                    }
                }
            }
        }
        // RFC 9309 §2.3.1.2: past five redirects robots.txt may be taken as unavailable.
        RobotsAnswer::Fetched {
            status: 404,
            body: Vec::new(),
        }
    }

    /// GETs `url`, following redirects by hand so each hop asks robots.txt and waits for
    /// its host's quota. `if_changed` goes with the first request only (it describes the
    /// start URL).
    async fn fetch_following_redirects(
        &self,
        job: &ClaimedJob,
        start: Url,
        if_changed: Option<&Validators>,
        targets: &ClaimedTargets,
        ticket: &Ticket,
    ) -> Result<(Url, Response), Ending> {
        let max_redirects = self.settings.fetch.max_redirects;
        let mut chain = vec![start];
        loop {
            let url = chain.last().expect("chain starts non-empty").clone();
            let host = urls::host_key(&url).expect("checked URLs have a host");
            let crawl_delay = self.ask_robots(&url, chain.len() == 1, ticket).await?;
            // Held until this hop's response is in (dropped with this loop turn).
            let _turn = self.limits.until_ready(&host, crawl_delay, ticket).await;
            let options = GetOptions {
                pace: Some(&self.limits),
                if_changed: if_changed.filter(|_| chain.len() == 1),
                cut_body_at: None,
                // A sitemap may be larger than a page (50 MB by the protocol): it has its
                // own cap, which is also what bounds its memory.
                max_body: (job.kind == JobKind::Sitemap).then_some((
                    self.settings.crawl.sitemap_max_bytes,
                    "crawl.sitemap_max_bytes",
                )),
            };
            let response = Box::pin(self.fetcher.get(&url, options))
                .await
                .map_err(|e| fetch_ending(&url, e))?;
            let next = match redirect_target(&url, &response) {
                None => return Ok((url, response)),
                Some(target) => target.map_err(Ending::Fatal)?,
            };
            if chain.contains(&next) {
                chain.push(next);
                return Err(Ending::Fatal(format!(
                    "redirect loop: {}",
                    show_chain(&chain)
                )));
            }
            if chain.len() > max_redirects as usize {
                chain.push(next);
                return Err(Ending::Fatal(format!(
                    "too many redirects (fetch.max_redirects = {max_redirects}): {}",
                    show_chain(&chain)
                )));
            }
            self.not_already_in_crawl(job, &next, targets).await?;
            tracing::debug!(status = response.status, to = %next, "redirect");
            chain.push(next);
        }
    }

    /// In a crawl, a redirect to a page the crawl already has (as a job, or as another
    /// page's redirect target) is not followed: the page is fetched once per crawl, like
    /// links are. Best effort: if the database cannot be asked, the redirect is followed.
    ///
    /// The target is held (see [`ClaimedTargets`]) only if the database does not have it
    /// and no other attempt holds it. The database is asked first: held first, a job of the
    /// crawl for the target that started during the lookup would give way to this attempt,
    /// and the lookup then find that job and make this attempt give way too: neither would
    /// fetch the page. A job that starts during the lookup holds its URL instead, and this
    /// attempt gives way to it. While it asks, the target is marked as asked about, so
    /// that a hold released meanwhile (its result just committed, which the lookup may
    /// not have seen) is noticed: the database is asked again.
    async fn not_already_in_crawl(
        &self,
        job: &ClaimedJob,
        target: &Url,
        targets: &ClaimedTargets,
    ) -> Result<(), Ending> {
        if !job.in_crawl() {
            return Ok(());
        }
        let key = target_key(job.root_id, target, &self.query_filter);
        let fetching = || {
            Ending::Skipped(format!(
                "redirects to {target}, which another job of this crawl is fetching"
            ))
        };
        loop {
            let asking = match targets.ask(&key) {
                Asked::Mine => return Ok(()), // e.g. a redirect that only drops a tracking parameter
                Asked::Held => return Err(fetching()),
                Asked::Free(asking) => asking,
            };
            match self.store.crawl_job_for(job, &key.1).await {
                Ok(Some(other)) => {
                    return Err(Ending::Skipped(format!(
                        "redirects to {target}, which this crawl already has as job {other}"
                    )))
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %target, "could not check the crawl for a redirect target; following it");
                }
            }
            match asking.hold() {
                Hold::Taken => return Ok(()),
                Hold::Held => return Err(fetching()),
                // Each round needs another attempt to take the target and have its result
                // committed during the lookup; the next lookup sees that result.
                Hold::ReleasedMeanwhile => {
                    tracing::debug!(%target, "a hold on the redirect target ended during the lookup; asking again");
                }
            }
        }
    }

    /// Builds the `results` row; HTML is parsed (and a kept body compressed) on a blocking
    /// thread.
    async fn record(
        &self,
        start: &Url,
        final_url: Url,
        response: Response,
        selectors: SelectorSet,
    ) -> PageRecord {
        let keep_body = self.settings.fetch.store_body && response.status != 304;
        let html = parse::is_html(response.content_type.as_deref()) && !response.body.is_empty();
        let mut page = bare_record(start, &final_url, &response);
        if !html && !keep_body {
            return page;
        }
        let span = tracing::debug_span!("parse", bytes = page.bytes);
        let body = response.body;
        let content_type = response.content_type;
        let (parsed, gzipped) = runtime::run_cpu_bound(move || {
            span.in_scope(|| {
                let gzipped = keep_body.then(|| body::gzip(&body));
                let parsed = html.then(|| {
                    let text = parse::decode_html(&body, content_type.as_deref());
                    let parsed = parse::parse_html(&text, &final_url, &selectors);
                    tracing::debug!(links = parsed.links.len(), "parsed");
                    parsed
                });
                (parsed, gzipped)
            })
        })
        .await;
        page.gzipped_body = gzipped;
        if let Some(parsed) = parsed {
            page.title = parsed.title;
            page.description = parsed.description;
            page.links = parsed.links;
            page.data = parsed.data;
        }
        page
    }
}

/// Why a fetched sitemap gave no URLs: it could not be read, or the job's crawl rules
/// (checked at admission; the row may have been edited since) are bad.
#[derive(Debug)]
enum SitemapFailure {
    Read(sitemap::SitemapError),
    Rules(String),
}

impl From<sitemap::SitemapError> for SitemapFailure {
    fn from(e: sitemap::SitemapError) -> SitemapFailure {
        SitemapFailure::Read(e)
    }
}

/// A `results` row before the body is read: what the server answered.
fn bare_record(start: &Url, final_url: &Url, response: &Response) -> PageRecord {
    PageRecord {
        url: start.to_string(),
        final_url: final_url.to_string(),
        http_status: response.status,
        content_type: response.content_type.clone(),
        title: None,
        description: None,
        links: Vec::new(),
        data: Default::default(),
        bytes: response.body.len() as u64,
        elapsed: response.elapsed,
        unchanged_since: None,
        validators: response.validators.clone(),
        gzipped_body: None,
        redirect_target: None,
    }
}

/// What a sitemap's `results.data` says about it, readable with plain SQL
/// (`data->'sitemap_urls'->>0`): which kind it is, how many URLs it lists, how many of
/// those are in the crawl's scope, and, past `crawl.sitemap_max_urls`, how many were left
/// out.
fn sitemap_summary(
    sitemap: &Sitemap,
    in_scope: usize,
    max_urls: usize,
) -> BTreeMap<String, Vec<String>> {
    let kind = match sitemap.kind {
        SitemapKind::UrlSet => "urlset",
        SitemapKind::Index => "sitemapindex",
    };
    let mut data = BTreeMap::from([
        ("sitemap_kind".to_owned(), vec![kind.to_owned()]),
        ("sitemap_urls".to_owned(), vec![sitemap.listed.to_string()]),
        ("sitemap_in_scope".to_owned(), vec![in_scope.to_string()]),
    ]);
    if sitemap.left_out() > 0 {
        data.insert(
            "sitemap_left_out".to_owned(),
            vec![format!(
                "{} of {} URLs left out: only the first {max_urls} are read (crawl.sitemap_max_urls)",
                sitemap.left_out(),
                sitemap.listed
            )],
        );
    }
    data
}

/// How long a response pauses its host for its `Retry-After`: what the value asks from
/// `now`, at most `cap` (`retry.max_retry_after_secs`), for a 429 or 503 only; None for
/// other statuses or a value that is neither seconds nor a date. Public for the fuzz
/// target `headers`.
pub fn retry_after_pause(
    status: u16,
    retry_after: &str,
    now: SystemTime,
    cap: Duration,
) -> Option<Duration> {
    if !matches!(status, 429 | 503) {
        return None;
    }
    let asked = fetch::retry_after(retry_after, now)?;
    Some(asked.min(cap))
}

/// A page of a crawl: (root id, canonical URL).
type TargetKey = (i64, String);

fn target_key(root_id: i64, url: &Url, filter: &QueryFilter) -> TargetKey {
    (root_id, String::from(follow::canonical(url, filter)))
}

/// The pages of crawls that attempts hold or redirects are asking the database about.
#[derive(Debug, Default)]
struct Targets {
    pages: HashMap<TargetKey, Target>,
}

#[derive(Debug, Default)]
struct Target {
    /// An attempt holds it: it is fetching the page, or has fetched it and its result is
    /// not committed yet.
    held: bool,
    /// Redirects asking the database about it right now.
    asking: usize,
    /// Holds released while redirects were asking (see [`Asking::hold`]).
    releases: u64,
}

impl Targets {
    /// Forgets a page nobody holds or asks about, so the map stays as small as the work in
    /// progress.
    fn tidy(&mut self, key: &TargetKey) {
        if self
            .pages
            .get(key)
            .is_some_and(|page| !page.held && page.asking == 0)
        {
            self.pages.remove(key);
        }
    }
}

/// The pages one attempt holds: its own URL, and the redirect targets it fetches. Another
/// attempt of the crawl that meets one of them gives way (a job starting for it is
/// skipped, a redirect to it is not followed).
///
/// Held until the attempt's result is committed, not only until its last response: the
/// scheduler keeps a clone until then (the hold ends when the last clone goes). Released
/// at the response, a page fetched through a redirect was known neither here nor in the
/// database until the commit recorded it, and a job for it starting meanwhile, or another
/// redirect to it, fetched it again. From the commit on, the database says the crawl has
/// it: the redirect target's row, or, where a job for the page was queued before, that
/// job, which the commit marks skipped (see the store's `mark_redirect_target`).
#[derive(Clone)]
pub struct ClaimedTargets(Arc<Claimed>);

impl std::fmt::Debug for ClaimedTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.held.lock().expect("claimed targets lock");
        f.debug_struct("ClaimedTargets")
            .field("held", &*held)
            .field("own_url_taken", &self.0.own_url_taken)
            .finish()
    }
}

struct Claimed {
    targets: Arc<Mutex<Targets>>,
    held: Mutex<Vec<TargetKey>>,
    /// The job's own URL, when another attempt held it as the job started.
    own_url_taken: Option<Url>,
}

/// What [`ClaimedTargets::ask`] found.
enum Asked<'a> {
    /// This attempt holds the page already.
    Mine,
    /// Another attempt holds it.
    Held,
    /// Nobody holds it: ask the database, then [`Asking::hold`].
    Free(Asking<'a>),
}

/// What [`Asking::hold`] came to.
enum Hold {
    Taken,
    Held,
    /// A hold on it ended during the lookup: the database may have it now.
    ReleasedMeanwhile,
}

/// A redirect asking the database about a page; the mark goes when this is dropped.
struct Asking<'a> {
    claimed: &'a Claimed,
    key: TargetKey,
    /// The page's releases when the lookup began.
    releases: u64,
}

impl ClaimedTargets {
    /// The job's own URL if another attempt held it when the job started.
    fn own_url_taken(&self) -> Option<&Url> {
        self.0.own_url_taken.as_ref()
    }

    /// Before a redirect's lookup: whether anyone holds `key`, and if nobody does, marks
    /// it as asked about.
    fn ask(&self, key: &TargetKey) -> Asked<'_> {
        if self
            .0
            .held
            .lock()
            .expect("claimed targets lock")
            .contains(key)
        {
            return Asked::Mine;
        }
        let mut targets = self.0.targets.lock().expect("targets lock");
        let page = targets.pages.entry(key.clone()).or_default();
        if page.held {
            return Asked::Held;
        }
        page.asking += 1;
        Asked::Free(Asking {
            claimed: &self.0,
            key: key.clone(),
            releases: page.releases,
        })
    }
}

impl Asking<'_> {
    /// After the lookup found nothing: holds the page, unless another attempt took it
    /// meanwhile, or a hold on it ended meanwhile (that attempt's result was committed
    /// during the lookup, which may not have seen it).
    fn hold(self) -> Hold {
        let mut targets = self.claimed.targets.lock().expect("targets lock");
        let page = targets
            .pages
            .get_mut(&self.key)
            .expect("a page asked about stays in the map");
        if page.held {
            return Hold::Held;
        }
        if page.releases != self.releases {
            return Hold::ReleasedMeanwhile;
        }
        page.held = true;
        drop(targets);
        self.claimed
            .held
            .lock()
            .expect("claimed targets lock")
            .push(self.key.clone());
        Hold::Taken
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut targets = self.claimed.targets.lock().expect("targets lock");
        if let Some(page) = targets.pages.get_mut(&self.key) {
            page.asking -= 1;
        }
        targets.tidy(&self.key);
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().expect("claimed targets lock"));
        if held.is_empty() {
            return;
        }
        let mut targets = self.targets.lock().expect("targets lock");
        for key in held {
            if let Some(page) = targets.pages.get_mut(&key) {
                page.held = false;
                page.releases += 1;
            }
            targets.tidy(&key);
        }
    }
}

/// Where a redirect response sends us: None if it is not a redirect, an error in words
/// if its `Location` is unusable (not a URL, or not http(s)).
fn redirect_target(url: &Url, response: &Response) -> Option<Result<Url, String>> {
    let location = response
        .location
        .as_deref()
        .filter(|_| response.is_redirect())?;
    let target = url
        .join(location.trim())
        .map_err(|e| {
            format!(
                "HTTP {} redirect from {url} has an invalid Location {location:?}: {e}",
                response.status
            )
        })
        .and_then(|mut next| {
            next.set_fragment(None);
            urls::check_fetchable(&next)
                .map_err(|reason| format!("redirect from {url} refused: {reason}"))?;
            Ok(next)
        });
    Some(target)
}

fn fetch_ending(url: &Url, error: FetchError) -> Ending {
    let reason = format!("GET {url}: {error}");
    if error.is_internal() {
        Ending::Internal(reason)
    } else if error.is_transient() {
        Ending::Transient(reason)
    } else {
        Ending::Fatal(reason)
    }
}

fn show_chain(chain: &[Url]) -> String {
    chain
        .iter()
        .map(Url::as_str)
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_pauses_only_429_and_503_and_at_most_the_cap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = Duration::from_secs(60);
        assert_eq!(
            retry_after_pause(503, "5", now, cap),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_after_pause(429, "86400", now, cap), Some(cap));
        assert_eq!(
            retry_after_pause(429, "99999999999999999999999", now, cap),
            Some(cap)
        );
        assert_eq!(retry_after_pause(500, "5", now, cap), None);
        assert_eq!(retry_after_pause(503, "soon", now, cap), None);
    }
}
