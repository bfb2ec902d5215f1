//! Request-rate limits with `governor`: a quota per host, optional per-host overrides and
//! an optional global quota. (In-flight caps are the scheduler's business: see `daemon`.)
//!
//! governor's keyed limiter keeps a state per key forever, so [`RateLimits::prune`] must
//! be called now and then (the daemon does it in its housekeeping) to forget idle hosts.
//!
//! A robots.txt Crawl-delay adds a second, slower limiter for that host; a request waits
//! for both, so a Crawl-delay can only slow a host down, never speed it past its quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::settings::{LimitSettings, Rate};

pub struct RateLimits {
    per_host: DefaultKeyedRateLimiter<String>,
    per_host_interval: Duration,
    /// Hosts with their own quota in config (and its interval); a fixed set, so it never
    /// needs pruning.
    overrides: HashMap<String, (DefaultDirectRateLimiter, Duration)>,
    global: Option<DefaultDirectRateLimiter>,
    /// Hosts that asked us (Retry-After) to stay away until an instant.
    paused: Mutex<HashMap<String, Instant>>,
    /// Hosts with a robots.txt Crawl-delay.
    delayed: Mutex<HashMap<String, CrawlDelay>>,
}

struct CrawlDelay {
    limiter: Arc<DefaultDirectRateLimiter>,
    interval: Duration,
    last_used: Instant,
}

impl CrawlDelay {
    fn new(interval: Duration, now: Instant) -> CrawlDelay {
        let limiter = RateLimiter::direct(
            Quota::with_period(interval).expect("a crawl delay slower than a quota is positive"),
        );
        // The request that fetched robots.txt (and any before) used the host's quota just
        // now: the first request under the delay waits a whole interval too.
        let _ = limiter.check();
        CrawlDelay {
            limiter: Arc::new(limiter),
            interval,
            last_used: now,
        }
    }
}

fn quota(rate: &Rate) -> Quota {
    Quota::with_period(rate.period())
        .expect("settings keep the rate finite and positive")
        .allow_burst(rate.burst)
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> RateLimits {
        RateLimits {
            per_host: RateLimiter::keyed(quota(&settings.per_host.rate)),
            per_host_interval: settings.per_host.rate.period(),
            overrides: settings
                .hosts
                .iter()
                .map(|(host, limits)| {
                    let limiter = RateLimiter::direct(quota(&limits.rate));
                    (host.clone(), (limiter, limits.rate.period()))
                })
                .collect(),
            global: settings
                .global_rate
                .as_ref()
                .map(|rate| RateLimiter::direct(quota(rate))),
            paused: Mutex::new(HashMap::new()),
            delayed: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until one request to `host` is allowed: the host's quota first, then the
    /// global one. Taking the host's cell first means a global wait can only make the host
    /// slower than its quota, never faster.
    /// With a `crawl_delay` (from robots.txt), requests to the host are also kept at
    /// least that far apart.
    #[tracing::instrument(level = "debug", name = "rate_limit_wait", skip(self))]
    pub async fn until_ready(&self, host: &str, crawl_delay: Option<Duration>) {
        loop {
            // A pause can be set (or lengthened) while we wait, for the quota too: look
            // again after every wait, and only go when no pause stands.
            while let Some(left) = self.pause_left(host) {
                crate::runtime::sleep(left).await;
            }
            if let Some(delay) = crawl_delay.and_then(|d| self.crawl_delay_limiter(host, d)) {
                delay.until_ready().await;
            }
            match self.overrides.get(host) {
                Some((limiter, _)) => limiter.until_ready().await,
                None => self.per_host.until_key_ready(&host.to_owned()).await,
            }
            if let Some(global) = &self.global {
                global.until_ready().await;
            }
            if self.pause_left(host).is_none() {
                return;
            }
        }
    }

    /// Keeps every request to `host` back for `how_long` (a longer pause already set wins).
    pub fn pause(&self, host: &str, how_long: Duration) {
        let until = Instant::now() + how_long;
        let mut paused = self.paused.lock().expect("pause map lock");
        let entry = paused.entry(host.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The Crawl-delay limiter of `host`, made (or remade, if the delay changed) on first
    /// use. None when the delay is not slower than the host's own quota.
    fn crawl_delay_limiter(
        &self,
        host: &str,
        interval: Duration,
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        if interval <= self.quota_interval(host) {
            return None;
        }
        let mut delayed = self.delayed.lock().expect("crawl delay map lock");
        let now = Instant::now();
        let entry = delayed
            .entry(host.to_owned())
            .and_modify(|known| {
                if known.interval != interval {
                    *known = CrawlDelay::new(interval, now);
                }
            })
            .or_insert_with(|| CrawlDelay::new(interval, now));
        entry.last_used = now;
        Some(entry.limiter.clone())
    }

    /// The time between requests the host's configured quota allows.
    fn quota_interval(&self, host: &str) -> Duration {
        self.overrides
            .get(host)
            .map_or(self.per_host_interval, |(_, interval)| *interval)
    }

    fn pause_left(&self, host: &str) -> Option<Duration> {
        let paused = self.paused.lock().expect("pause map lock");
        let left = paused.get(host)?.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// Forgets hosts whose state is back to "fully replenished", and pauses that are over,
    /// so memory does not grow with the number of hosts ever seen.
    pub fn prune(&self) {
        self.per_host.retain_recent();
        self.per_host.shrink_to_fit();
        let now = Instant::now();
        self.paused
            .lock()
            .expect("pause map lock")
            .retain(|_, until| *until > now);
        // Idle for a whole interval with nobody waiting on it: the limiter is back to
        // full, so a new one made later behaves the same.
        self.delayed
            .lock()
            .expect("crawl delay map lock")
            .retain(|_, d| {
                Arc::strong_count(&d.limiter) > 1 || now.duration_since(d.last_used) < d.interval
            });
    }

    /// Hosts the keyed limiter currently tracks (for stats and tests).
    pub fn tracked_hosts(&self) -> usize {
        self.per_host.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use std::time::{Duration, Instant};

    #[test]
    fn requests_to_one_host_are_spaced_by_the_quota_and_hosts_are_independent() {
        let settings = Settings::load_from_str("[limits]\nper_host_rps = 20.0\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        crate::runtime::block_on(async {
            let started = Instant::now();
            for _ in 0..3 {
                limits.until_ready("a.example", None).await;
            }
            // Burst 1 at 20/s: the 2nd and 3rd requests wait 50 ms each.
            assert!(
                started.elapsed() >= Duration::from_millis(95),
                "{:?}",
                started.elapsed()
            );
            let other = Instant::now();
            limits.until_ready("b.example", None).await;
            assert!(
                other.elapsed() < Duration::from_millis(40),
                "{:?}",
                other.elapsed()
            );
        });
    }

    #[test]
    fn pruning_forgets_idle_hosts() {
        let settings = Settings::load_from_str("[limits]\nper_host_rps = 1000.0\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        crate::runtime::block_on(async {
            for i in 0..50 {
                limits.until_ready(&format!("h{i}.example"), None).await;
            }
        });
        assert_eq!(limits.tracked_hosts(), 50);
        std::thread::sleep(Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.tracked_hosts(), 0);
    }
}
