//! Request-rate limits with `governor`: a quota per host, optional per-host overrides and
//! an optional global quota. (In-flight caps are the scheduler's business: see `daemon`.)
//!
//! governor's keyed limiter keeps a state per key forever, so [`RateLimits::prune`] must
//! be called now and then (the daemon does it in its housekeeping) to forget idle hosts.
//!
//! A robots.txt Crawl-delay is a wait between one request's end and the next one's start
//! (as the sites that define it mean it): requests to that host go one at a time, each
//! holding a [`CrawlDelayTurn`] until it ends. They also wait for the quota, so a
//! Crawl-delay can only slow a host down, never speed it past its quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::runtime::{AsyncMutex, AsyncMutexGuardArc};
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
    /// When the host's last request ended; locked while a request is under way.
    last_ended: Arc<AsyncMutex<Instant>>,
    interval: Duration,
    last_used: Instant,
}

impl CrawlDelay {
    fn new(interval: Duration, now: Instant) -> CrawlDelay {
        // The request that fetched robots.txt ended just now: the first request under the
        // delay waits a whole interval too.
        CrawlDelay {
            last_ended: Arc::new(AsyncMutex::new(now)),
            interval,
            last_used: now,
        }
    }
}

/// A request's turn on a host with a Crawl-delay. Keep it until the request has ended,
/// however it ends: the next request to the host waits for it, then for the delay.
#[must_use = "the turn must be held for as long as the request runs"]
pub struct CrawlDelayTurn(AsyncMutexGuardArc<Instant>);

impl Drop for CrawlDelayTurn {
    fn drop(&mut self) {
        *self.0 = Instant::now();
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
    /// With a `crawl_delay` (from robots.txt) slower than the quota, it first waits for
    /// the host's previous request to end and for the delay after it, and returns the turn
    /// that the caller holds until its request ends.
    #[tracing::instrument(level = "debug", name = "rate_limit_wait", skip(self))]
    pub async fn until_ready(
        &self,
        host: &str,
        crawl_delay: Option<Duration>,
    ) -> Option<CrawlDelayTurn> {
        let turn = match crawl_delay.and_then(|d| self.crawl_delay_of(host, d)) {
            Some((last_ended, interval)) => {
                let last_ended = last_ended.lock_arc().await;
                let wait = (*last_ended + interval).saturating_duration_since(Instant::now());
                crate::runtime::sleep(wait).await;
                Some(CrawlDelayTurn(last_ended))
            }
            None => None,
        };
        loop {
            // A pause can be set (or lengthened) while we wait, for the quota too: look
            // again after every wait, and only go when no pause stands.
            while let Some(left) = self.pause_left(host) {
                crate::runtime::sleep(left).await;
            }
            match self.overrides.get(host) {
                Some((limiter, _)) => limiter.until_ready().await,
                None => self.per_host.until_key_ready(&host.to_owned()).await,
            }
            if let Some(global) = &self.global {
                global.until_ready().await;
            }
            if self.pause_left(host).is_none() {
                return turn;
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

    /// The Crawl-delay state of `host` (when its last request ended) and the delay, made
    /// (or remade, if the delay changed) on first use. None when the delay is not slower
    /// than the host's own quota.
    fn crawl_delay_of(
        &self,
        host: &str,
        interval: Duration,
    ) -> Option<(Arc<AsyncMutex<Instant>>, Duration)> {
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
        Some((entry.last_ended.clone(), interval))
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
        // Idle for a whole interval with no request holding or awaiting a turn: a new
        // entry made later (it waits one interval) is no faster.
        self.delayed
            .lock()
            .expect("crawl delay map lock")
            .retain(|_, d| {
                Arc::strong_count(&d.last_ended) > 1 || now.duration_since(d.last_used) < d.interval
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
                let _no_turn = limits.until_ready("a.example", None).await;
            }
            // Burst 1 at 20/s: the 2nd and 3rd requests wait 50 ms each.
            assert!(
                started.elapsed() >= Duration::from_millis(95),
                "{:?}",
                started.elapsed()
            );
            let other = Instant::now();
            let _no_turn = limits.until_ready("b.example", None).await;
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
                let _no_turn = limits.until_ready(&format!("h{i}.example"), None).await;
            }
        });
        assert_eq!(limits.tracked_hosts(), 50);
        std::thread::sleep(Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.tracked_hosts(), 0);
    }
}
