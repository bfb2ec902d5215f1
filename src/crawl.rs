//! One attempt at one job: wait for the host's rate limit, fetch, follow redirects (each
//! hop through the limiter again), parse, and say how it ended.

use std::sync::Arc;

use tracing::Instrument;
use url::Url;

use crate::fetch::{FetchError, Fetcher, Response};
use crate::follow::{Child, Follow, QueryFilter};
use crate::job::{self, Attempt, ClaimedJob, Ending, PageRecord};
use crate::limits::RateLimits;
use crate::parse::{self, SelectorSet};
use crate::runtime;
use crate::settings::Settings;

pub struct Crawler {
    fetcher: Fetcher,
    limits: RateLimits,
    query_filter: QueryFilter,
    settings: Arc<Settings>,
}

impl Crawler {
    pub fn new(settings: Arc<Settings>) -> Result<Crawler, String> {
        Ok(Crawler {
            fetcher: Fetcher::new(&settings.fetch)?,
            limits: RateLimits::new(&settings.limits),
            query_filter: QueryFilter::new(&settings.crawl.strip_query_params),
            settings,
        })
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// The canonical-URL rules, shared with admission.
    pub fn query_filter(&self) -> &QueryFilter {
        &self.query_filter
    }

    /// Runs one attempt of a claimed job and applies the retry policy to its ending.
    pub async fn attempt(&self, job: ClaimedJob) -> Attempt {
        let span = tracing::debug_span!(
            "job",
            job.id = %job.id,
            url = %job.url,
            host = %job.host,
            attempt = job.attempt
        );
        async move {
            tracing::debug!("claimed");
            let (page, ending, children) = self.run(&job).await;
            let max_attempts = job
                .max_attempts
                .unwrap_or(self.settings.retry.max_attempts.get());
            let verdict = job::decide(&ending, job.attempt, max_attempts, &self.settings.retry);
            tracing::debug!(?verdict, "attempt finished");
            Attempt {
                job,
                page,
                verdict,
                children,
            }
        }
        .instrument(span)
        .await
    }

    async fn run(&self, job: &ClaimedJob) -> (Option<PageRecord>, Ending, Vec<Child>) {
        // Admission checked these already; the row may have been edited since.
        let selectors = match SelectorSet::from_optional_json(job.selectors.as_deref()) {
            Ok(selectors) => selectors,
            Err(e) => return (None, Ending::Fatal(e.to_string()), Vec::new()),
        };
        let follow = match Follow::new(&job.crawl, &job.host) {
            Ok(follow) => follow,
            Err(reason) => return (None, Ending::Fatal(reason), Vec::new()),
        };
        let start = match job::check_url(&job.url) {
            Ok(url) => url,
            Err(reason) => return (None, Ending::Fatal(reason), Vec::new()),
        };
        let (final_url, response) = match self.fetch_following_redirects(start.clone()).await {
            Ok(found) => found,
            Err(ending) => return (None, ending, Vec::new()),
        };
        let status = response.status;
        let page = self.record(&start, final_url, response, selectors).await;
        let children = if (200..300).contains(&status) {
            follow.children(&page.links, &self.query_filter)
        } else {
            Vec::new()
        };
        if !children.is_empty() {
            tracing::debug!(children = children.len(), "links to follow");
        }
        (Some(page), Ending::Response(status), children)
    }

    /// GETs `url`, following redirects by hand so each hop waits for its host's quota.
    async fn fetch_following_redirects(&self, start: Url) -> Result<(Url, Response), Ending> {
        let max_redirects = self.settings.fetch.max_redirects;
        let mut chain = vec![start];
        loop {
            let url = chain.last().expect("chain starts non-empty").clone();
            let host = job::host_key(&url).expect("checked URLs have a host");
            self.limits.until_ready(&host).await;
            let response = self
                .fetcher
                .get(&url)
                .await
                .map_err(|e| fetch_ending(&url, e))?;
            let Some(location) = response
                .location
                .as_deref()
                .filter(|_| response.is_redirect())
            else {
                return Ok((url, response));
            };
            let mut next = url.join(location.trim()).map_err(|e| {
                Ending::Fatal(format!(
                    "HTTP {} redirect from {url} has an invalid Location {location:?}: {e}",
                    response.status
                ))
            })?;
            next.set_fragment(None);
            job::check_fetchable(&next).map_err(|reason| {
                Ending::Fatal(format!("redirect from {url} refused: {reason}"))
            })?;
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
            tracing::debug!(status = response.status, to = %next, "redirect");
            chain.push(next);
        }
    }

    /// Builds the `results` row; HTML is parsed on a blocking thread.
    async fn record(
        &self,
        start: &Url,
        final_url: Url,
        response: Response,
        selectors: SelectorSet,
    ) -> PageRecord {
        let bytes = response.body.len() as u64;
        let mut page = PageRecord {
            url: start.to_string(),
            final_url: final_url.to_string(),
            http_status: response.status,
            content_type: response.content_type.clone(),
            title: None,
            description: None,
            links: Vec::new(),
            data: Default::default(),
            bytes,
            elapsed: response.elapsed,
        };
        if parse::is_html(response.content_type.as_deref()) && !response.body.is_empty() {
            let span = tracing::debug_span!("parse", bytes);
            let body = response.body;
            let content_type = response.content_type;
            let parsed = runtime::spawn_blocking(move || {
                span.in_scope(|| {
                    let text = parse::decode_html(&body, content_type.as_deref());
                    let parsed = parse::parse_html(&text, &final_url, &selectors);
                    tracing::debug!(links = parsed.links.len(), "parsed");
                    parsed
                })
            })
            .await;
            page.title = parsed.title;
            page.description = parsed.description;
            page.links = parsed.links;
            page.data = parsed.data;
        }
        page
    }
}

fn fetch_ending(url: &Url, error: FetchError) -> Ending {
    let reason = format!("GET {url}: {error}");
    if error.is_transient() {
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
