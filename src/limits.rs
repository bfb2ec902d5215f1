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
//!
//! The scheduler asks [`RateLimits::grant`] before it claims a job for a host: the host's
//! quota is passed then (or the scheduler learns when it may be), and the attempt's first
//! request to the host goes on that [`Ticket`] instead of waiting again. Attempts that do
//! wait (the page after a robots.txt, a redirect to another host, a Crawl-delay) are
//! counted by [`RateLimits::waiting`], so that the scheduler's in-flight cap counts
//! requests, not waits.
//!
//! A request passes its host's quota twice: when it may start ([`RateLimits::until_ready`])
//! and again just before it is handed to the HTTP client
//! ([`RateLimits::until_sendable`]), so that one let through on time but handed over late
//! cannot bring the next one closer than the quota.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::runtime::{AsyncMutex, AsyncMutexGuardArc};
use crate::settings::{LimitSettings, Rate};

/// Each host's quota: the default one per host, or its own from config.
struct HostQuotas {
    per_host: DefaultKeyedRateLimiter<String>,
    /// Hosts with their own quota in config; a fixed set, so it never needs pruning.
    overrides: HashMap<String, DefaultDirectRateLimiter>,
}

impl HostQuotas {
    fn new(settings: &LimitSettings, slack: Slack) -> HostQuotas {
        HostQuotas {
            per_host: RateLimiter::keyed(quota(&settings.per_host.rate, slack)),
            overrides: settings
                .hosts
                .iter()
                .map(|(host, limits)| {
                    (
                        host.clone(),
                        RateLimiter::direct(quota(&limits.rate, slack)),
                    )
                })
                .collect(),
        }
    }

    async fn until_ready(&self, host: &str) {
        match self.overrides.get(host) {
            Some(limiter) => limiter.until_ready().await,
            None => self.per_host.until_key_ready(&host.to_owned()).await,
        }
    }

    /// Passes the quota now if it allows a request; otherwise says when it will.
    fn check(&self, host: &str) -> Result<(), Instant> {
        let wait = match self.overrides.get(host) {
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
            None => self
                .per_host
                .check_key(&host.to_owned())
                .map_err(|not_until| not_until.wait_time_from(self.per_host.clock().now())),
        };
        wait.map_err(|wait| Instant::now() + wait)
    }

    fn prune(&self) {
        self.per_host.retain_recent();
        self.per_host.shrink_to_fit();
    }
}

pub struct RateLimits {
    /// When a request may start: what the scheduler's tasks wait for.
    granted: HostQuotas,
    /// The same quotas again, passed as a request is handed to the HTTP client. A task let
    /// through on time can reach that point late (a busy executor); the next one, on
    /// time, would then follow it by less than the quota's interval. Passing the quota a
    /// second time at the last moment we control spaces the two by what actually happened.
    sent: HostQuotas,
    /// Each host's configured rate: its interval, and whether its burst is 1 (requests to
    /// such a host are also spaced from each one's answer, see [`RateLimits::answered`]).
    settings: LimitSettings,
    global: Option<DefaultDirectRateLimiter>,
    /// Hosts that asked us (Retry-After) to stay away until an instant.
    paused: Mutex<HashMap<String, Instant>>,
    /// Hosts with a robots.txt Crawl-delay.
    delayed: Mutex<HashMap<String, CrawlDelay>>,
    /// Attempts now waiting in [`RateLimits::until_ready`] (see [`RateLimits::waiting`]).
    waiting: Arc<AtomicUsize>,
}

/// What [`RateLimits::grant`] says about a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// One request may go now; its quota has been passed (see [`Ticket`]).
    Now,
    /// No request may go before this instant (quota, pause or Crawl-delay).
    NotBefore(Instant),
}

/// One request to a host that [`RateLimits::grant`] let through when the scheduler
/// claimed the job: the attempt's first request to that host uses it instead of passing
/// the host's quota again.
#[derive(Debug)]
pub struct Ticket {
    host: Option<String>,
    unused: AtomicBool,
}

impl Ticket {
    /// A granted request to `host`.
    pub fn granted(host: &str) -> Ticket {
        Ticket {
            host: Some(host.to_owned()),
            unused: AtomicBool::new(true),
        }
    }

    /// No request granted in advance: every request waits for its quota.
    pub fn none() -> Ticket {
        Ticket {
            host: None,
            unused: AtomicBool::new(false),
        }
    }

    /// Uses the ticket for a request to `host`, if it is for that host and still unused.
    fn take(&self, host: &str) -> bool {
        self.host.as_deref() == Some(host) && self.unused.swap(false, Ordering::Relaxed)
    }
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

/// `rate` as a governor quota, its interval widened by `slack`.
fn quota(rate: &Rate, slack: Slack) -> Quota {
    let period = rate.period();
    let widened = match slack {
        Slack::None => period,
        Slack::ForTheWire => period + (period * 3 / 100).min(Duration::from_millis(2)),
    };
    Quota::with_period(widened)
        .expect("settings keep the rate finite and positive")
        .allow_burst(rate.burst)
}

#[derive(Debug, Clone, Copy)]
enum Slack {
    None,
    /// After the last point crawlq controls, the HTTP client's own thread takes a moment
    /// to put a request on the wire: up to 2.7 ms on a busy 2-core machine, measured at
    /// the loopback interface (bench/politeness.sh). Sends are spaced 3 % (at most 2 ms)
    /// wider than the quota so that this cannot bring two requests closer than the quota
    /// at the server; at least 97 % of the quota can still be used.
    ForTheWire,
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> RateLimits {
        RateLimits {
            granted: HostQuotas::new(settings, Slack::None),
            sent: HostQuotas::new(settings, Slack::ForTheWire),
            settings: settings.clone(),
            global: settings
                .global_rate
                .as_ref()
                .map(|rate| RateLimiter::direct(quota(rate, Slack::None))),
            paused: Mutex::new(HashMap::new()),
            delayed: Mutex::new(HashMap::new()),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// For the scheduler, before it claims a job for `host`: whether a request may go now
    /// (the host's quota is then passed, for the attempt's [`Ticket`]), or from when. A
    /// Retry-After pause and a Crawl-delay (its previous request still running, or ended
    /// less than the delay ago) hold the host too. The global quota is not passed here:
    /// the attempt waits for it.
    pub fn grant(&self, host: &str) -> Grant {
        let now = Instant::now();
        if let Some(until) = self.paused_until(host).filter(|until| *until > now) {
            return Grant::NotBefore(until);
        }
        if let Some(next) = self.crawl_delay_next(host, now) {
            return Grant::NotBefore(next);
        }
        match self.granted.check(host) {
            Ok(()) => Grant::Now,
            Err(at) => Grant::NotBefore(at),
        }
    }

    /// Attempts now waiting for a quota, a pause or a Crawl-delay: they hold a job but
    /// send nothing.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// When a request to a host with a Crawl-delay may next go, if that is later than
    /// `now`; a request under way holds it a whole delay (its end is not known yet).
    fn crawl_delay_next(&self, host: &str, now: Instant) -> Option<Instant> {
        let delayed = self.delayed.lock().expect("crawl delay map lock");
        let delay = delayed.get(host)?;
        let next = match delay.last_ended.try_lock() {
            Some(last_ended) => *last_ended + delay.interval,
            None => now + delay.interval,
        };
        (next > now).then_some(next)
    }

    /// Waits until one request to `host` is allowed: the host's quota first, then the
    /// global one. Taking the host's cell first means a global wait can only make the host
    /// slower than its quota, never faster.
    /// With a `crawl_delay` (from robots.txt) slower than the quota, it first waits for
    /// the host's previous request to end and for the delay after it, and returns the turn
    /// that the caller holds until its request ends.
    /// A `ticket` granted for `host` (see [`RateLimits::grant`]) stands for the host's
    /// quota once.
    #[tracing::instrument(level = "debug", name = "rate_limit_wait", skip(self, ticket))]
    pub async fn until_ready(
        &self,
        host: &str,
        crawl_delay: Option<Duration>,
        ticket: &Ticket,
    ) -> Option<CrawlDelayTurn> {
        let _waiting = crate::runtime::Counted::new(&self.waiting);
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
            if !ticket.take(host) {
                self.granted.until_ready(host).await;
            }
            if let Some(global) = &self.global {
                global.until_ready().await;
            }
            if self.pause_left(host).is_none() {
                return turn;
            }
        }
    }

    /// Waits, if need be, so that this request leaves at least the quota's interval after
    /// the previous one to `host` left (see the `sent` quotas). Called as the request is
    /// handed to the HTTP client, after [`RateLimits::until_ready`].
    pub async fn until_sendable(&self, host: &str) {
        // A pause that began after this request was let through (a 429 to another one,
        // a robots.txt just answered) holds it too.
        loop {
            while let Some(left) = self.pause_left(host) {
                crate::runtime::sleep(left).await;
            }
            self.sent.until_ready(host).await;
            if self.pause_left(host).is_none() {
                return;
            }
        }
    }

    /// The next request to `host` leaves no sooner than one quota interval from now. For
    /// after a robots.txt: a host's first request, it opens the first connection, so it
    /// reaches the wire later after its send than requests on an open connection do (up
    /// to 3 ms, measured): the request after it is spaced from its answer instead.
    pub fn space_from_now(&self, host: &str) {
        self.pause(host, self.quota_interval(host));
    }

    /// A request to `host` has its answer (or failed) now, and was on the wire by
    /// `on_the_wire_by`: the answer's arrival less the server's wait by curl's timers (see
    /// `fetch::server_wait`), or the answer itself when those are not known. On a host
    /// with a burst of 1 the next request is spaced a quota interval from that instant.
    /// The hand-over is no guide: the HTTP client's thread, when busy, puts requests on
    /// the wire late (requests handed over together wait their turn there, the next ones
    /// do not), which let a guess of the hand-over plus 15 ms bring two requests up to
    /// 9 ms closer than the quota at a server (bench/hosts.sh at 10 000 hosts).
    pub fn answered(&self, host: &str, on_the_wire_by: Instant) {
        let rate = &self.settings.for_host(host).rate;
        if rate.burst.get() != 1 {
            return;
        }
        let next = on_the_wire_by + rate.period();
        let now = Instant::now();
        if next > now {
            self.pause(host, next - now);
        }
    }

    /// Keeps every request to `host` back for `how_long` (a longer pause already set wins).
    pub fn pause(&self, host: &str, how_long: Duration) {
        let until = Instant::now() + how_long;
        let mut paused = self.paused.lock().expect("pause map lock");
        let entry = paused.entry(host.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Lets requests to `host` go again (`crawlq unpause`); its quota still holds. (Its
    /// origins' failed robots.txt answers need nothing here: one is checked against the
    /// table before it holds a job back.)
    pub fn lift_pause(&self, host: &str) {
        self.paused.lock().expect("pause map lock").remove(host);
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
        self.settings.for_host(host).rate.period()
    }

    fn pause_left(&self, host: &str) -> Option<Duration> {
        let left = self
            .paused_until(host)?
            .checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    fn paused_until(&self, host: &str) -> Option<Instant> {
        self.paused
            .lock()
            .expect("pause map lock")
            .get(host)
            .copied()
    }

    /// Forgets hosts whose state is back to "fully replenished", and pauses that are over,
    /// so memory does not grow with the number of hosts ever seen.
    pub fn prune(&self) {
        self.granted.prune();
        self.sent.prune();
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
        self.granted.per_host.len()
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
                let _no_turn = limits.until_ready("a.example", None, &Ticket::none()).await;
            }
            // Burst 1 at 20/s: the 2nd and 3rd requests wait 50 ms each.
            assert!(
                started.elapsed() >= Duration::from_millis(95),
                "{:?}",
                started.elapsed()
            );
            let other = Instant::now();
            let _no_turn = limits.until_ready("b.example", None, &Ticket::none()).await;
            assert!(
                other.elapsed() < Duration::from_millis(40),
                "{:?}",
                other.elapsed()
            );
        });
    }

    #[test]
    fn the_next_request_is_spaced_from_when_the_last_one_was_on_the_wire() {
        // 10 req/s: requests 100 ms apart.
        let settings = Settings::load_from_str("[limits]\nper_host_rps = 10.0\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        crate::runtime::block_on(async {
            // On the wire 30 ms before its answer (a slow server): spaced from the wire.
            let on_the_wire = Instant::now() - Duration::from_millis(30);
            limits.answered("a.example", on_the_wire);
            match limits.grant("a.example") {
                Grant::NotBefore(at) => {
                    let from = at.duration_since(on_the_wire);
                    assert!(from >= Duration::from_millis(100), "{from:?}");
                    assert!(from < Duration::from_millis(105), "{from:?}");
                }
                Grant::Now => panic!("granted inside the interval"),
            }
            // Not known before the answer: spaced from the answer.
            let answered = Instant::now();
            limits.answered("b.example", answered);
            let _no_turn = limits.until_ready("b.example", None, &Ticket::none()).await;
            assert!(answered.elapsed() >= Duration::from_millis(100));
        });
        // A burst above 1 is the host's to use: no spacing from answers.
        let settings =
            Settings::load_from_str("[limits]\nper_host_rps = 10.0\nper_host_burst = 3\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        limits.answered("a.example", Instant::now());
        assert_eq!(limits.grant("a.example"), Grant::Now);
    }

    #[test]
    fn a_request_that_reaches_the_client_late_holds_the_next_one_back() {
        // 10 req/s: requests 100 ms apart.
        let settings = Settings::load_from_str("[limits]\nper_host_rps = 10.0\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        crate::runtime::block_on(async {
            let _no_turn = limits.until_ready("a.example", None, &Ticket::none()).await;
            // Let through at once, but handed to the client 60 ms later.
            crate::runtime::sleep(Duration::from_millis(60)).await;
            limits.until_sendable("a.example").await;
            let first_sent = Instant::now();
            // Let through on time, 100 ms after the first was let through.
            let _no_turn = limits.until_ready("a.example", None, &Ticket::none()).await;
            limits.until_sendable("a.example").await;
            let gap = first_sent.elapsed();
            assert!(gap >= Duration::from_millis(100), "{gap:?}");
        });
    }

    #[test]
    fn the_request_after_a_robots_txt_is_spaced_from_its_answer() {
        // 10 req/s: requests 100 ms apart.
        let settings = Settings::load_from_str("[limits]\nper_host_rps = 10.0\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        crate::runtime::block_on(async {
            let _no_turn = limits.until_ready("a.example", None, &Ticket::none()).await;
            limits.until_sendable("a.example").await;
            // The robots.txt answer comes in 60 ms after it was sent.
            crate::runtime::sleep(Duration::from_millis(60)).await;
            limits.space_from_now("a.example");
            let answered = Instant::now();
            let _no_turn = limits.until_ready("a.example", None, &Ticket::none()).await;
            limits.until_sendable("a.example").await;
            let gap = answered.elapsed();
            assert!(gap >= Duration::from_millis(100), "{gap:?}");
        });
    }

    #[test]
    fn pruning_forgets_idle_hosts() {
        let settings = Settings::load_from_str("[limits]\nper_host_rps = 1000.0\n").unwrap();
        let limits = RateLimits::new(&settings.limits);
        crate::runtime::block_on(async {
            for i in 0..50 {
                let _no_turn = limits
                    .until_ready(&format!("h{i}.example"), None, &Ticket::none())
                    .await;
            }
        });
        assert_eq!(limits.tracked_hosts(), 50);
        std::thread::sleep(Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.tracked_hosts(), 0);
    }
}
