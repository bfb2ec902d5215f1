//! The scheduler: one loop that admits new jobs, claims work fairly across hosts, spawns an
//! attempt per job, stores finished attempts in batches, keeps leases alive, and shuts
//! down cleanly.
//!
//! Only this loop writes to the database (besides users), so our own writes never contend
//! with each other; attempts run concurrently and report back over a channel. While the
//! loop commits one batch, the next one accumulates: that is the group commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use futures_lite::FutureExt;
use tracing::Instrument;

use crate::crawl::{ClaimedTargets, Crawler};
use crate::job::{self, Attempt, ClaimedJob, JobId, Verdict};
use crate::limits::{Grant, Ticket};
use crate::runtime;
use crate::schedule::HostSchedule;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::{self, HostPick, Store, StoreError, WorkerCounters, WorkerIdentity};

/// New rows validated per loop turn; bounds the time one turn spends on a bulk insert, and
/// so how long claims wait behind one (1 000 made the first turns of a 20 000-job insert
/// slow enough to hold back 1 000 new hosts' robots.txt: 87 % against 93-95 % of the
/// quota-bound ideal, bench/hosts.sh).
const ADMISSION_BATCH: usize = 250;
/// How often expired leases (of dead daemons) are looked for.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often idle hosts are dropped from the rate limiter's memory (and robots.txt rules
/// beyond the ones kept): often enough that a crawl of thousands of small hosts does not
/// hold them all.
const PRUNE_LIMITER_EVERY: Duration = Duration::from_secs(10);
/// While shutting down, how often the leases of the attempts still running are checked,
/// so that one the user cancelled meanwhile is not waited for.
const LEASE_CHECK_WHILE_DRAINING: Duration = Duration::from_secs(1);
/// How often the daemon checks that its database was not deleted or replaced.
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a database error, the loop turns this often until a turn succeeds.
const STORE_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the queue is walked for hosts with due jobs that the daemon did not hear of
/// (a user re-queueing finished jobs, a retry's backoff ending); new rows need no walk:
/// admission hands their hosts to the schedule. A walk costs two index seeks per host, so
/// a queue of many hosts is walked less often: one more second per 1 000 hosts found.
const WALK_QUEUE_EVERY: Duration = Duration::from_secs(1);
const WALK_HOSTS_PER_SECOND: usize = 1000;
/// Hosts the schedule holds at most (see [`HostSchedule`]); one walk of the queue reads
/// at most this many.
const SCHEDULED_HOSTS: usize = 20_000;
/// A loop turn woken by a finished attempt begins at least this long after the previous
/// one began (or when a waiting host must be claimed for, if sooner): with a thousand
/// hosts at 2 requests a second, each finished page and each host falling due woke the
/// loop on its own, for a commit of one page or a claim of one job. A waiting host is
/// claimed for at most a hundredth of its interval late (see `Scheduler::lateness`): at
/// 20 requests a second, 5 ms late would be a tenth of the quota.
const MIN_TURN: Duration = Duration::from_millis(5);
/// Attempts that wait (for a quota after a robots.txt, a redirect to another host, a
/// Crawl-delay) do not count against `limits.max_in_flight`, which counts requests; this
/// many times `max_in_flight` bounds all attempts together, waiting or not.
const ATTEMPTS_PER_SLOT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Http(String),
}

/// A database error explained by the database having been deleted or replaced, if it was:
/// the error itself ("unable to open database file") would not say why.
fn explained(store: &Store, error: StoreError) -> DaemonError {
    match store.check_same_database() {
        Err(gone) => gone.into(),
        Ok(()) => error.into(),
    }
}

/// How the daemon ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Exit once no job is queued or running (batch use, tests, benchmarks).
    pub exit_when_idle: bool,
}

/// What one run did, for the final log line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub claimed: u64,
    pub done: u64,
    pub failed: u64,
    pub retried: u64,
    /// Jobs not fetched by policy (robots.txt, a page the crawl already has).
    pub skipped: u64,
    /// Response bytes stored (bodies after content decoding).
    pub bytes: u64,
    pub lost: u64,
    /// Jobs handed back to the queue at shutdown.
    pub released: u64,
    /// Database operations that failed (each is retried; none fails a job).
    pub store_errors: u64,
}

pub struct Daemon {
    settings: Arc<Settings>,
    store: Store,
    crawler: Arc<Crawler>,
    /// Who this daemon is, as its `workers` row says. Its `id` is also our lease owner id:
    /// unique per process start, so a restarted daemon never mistakes a dead one's leases
    /// for its own.
    identity: WorkerIdentity,
}

impl Daemon {
    /// Everything that can fail at start-up: opening and migrating the database, building
    /// the HTTP client.
    pub async fn build(settings: Settings) -> Result<Daemon, DaemonError> {
        let settings = Arc::new(settings);
        let identity = WorkerIdentity {
            id: format!("crawlq-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            hostname: this_host(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_every: settings.daemon.heartbeat,
        };
        let store = Store::open_for_daemon(&settings.database, &identity).await?;
        // Before the HTTP client is built: its connection cache is sized from the limit.
        crate::descriptors::fit_limit();
        let crawler =
            Arc::new(Crawler::new(settings.clone(), store.clone()).map_err(DaemonError::Http)?);
        let pauses = store
            .active_pauses()
            .await
            .map_err(|e| explained(&store, e))?;
        for (host, left) in pauses {
            crawler.limits().pause(&host, left);
        }
        Ok(Daemon {
            settings,
            store,
            crawler,
            identity,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn owner(&self) -> &str {
        &self.identity.id
    }

    /// Runs until `shutdown` fires (or, with `exit_when_idle`, until the queue is empty).
    /// On shutdown, in-flight jobs get `daemon.shutdown_grace_secs` to finish; the rest go
    /// back to `queued`.
    pub async fn run_until_stopped(
        self,
        shutdown: Shutdown,
        options: RunOptions,
    ) -> Result<RunReport, DaemonError> {
        let s = &self.settings;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            database = %s.database.name(),
            per_host_rps = s.limits.per_host.rate.rps,
            per_host_burst = s.limits.per_host.rate.burst.get(),
            per_host_in_flight = s.limits.per_host.in_flight.get(),
            max_in_flight = s.limits.max_in_flight.get(),
            global_rps = s.limits.global_rate.map(|r| r.rps),
            host_overrides = s.limits.hosts.len(),
            config = %s.sources.join(" < "),
            owner = %self.identity.id,
            "crawlq started"
        );
        self.store
            .register_worker(&self.identity)
            .await
            .map_err(|e| explained(&self.store, e))?;
        let mut scheduler = Scheduler::new(&self);
        let result = scheduler.run(&shutdown, options).await;
        if let Err(DaemonError::Store(StoreError::Gone { .. })) = &result {
            // Nothing can be stored where anyone would see it: skip the drain, and let go
            // of the database without writing over whatever is in its place now.
            self.store.abandon_gone_database().await;
            return result.map(|()| scheduler.report);
        }
        let drained = scheduler.drain().await;
        let report = scheduler.report;
        tracing::info!(
            claimed = report.claimed,
            done = report.done,
            failed = report.failed,
            retried = report.retried,
            skipped = report.skipped,
            released = report.released,
            "crawlq stopped"
        );
        self.store.close().await;
        result.and(drained).map(|()| report)
    }
}

/// Attempts this daemon is running: their leases are renewed and their slots counted.
/// Keyed by lease (job id + lease token): after a user re-queues a running job, the old
/// attempt and a new one of the same job can be in flight together.
#[derive(Debug, Default)]
struct InFlight {
    attempts: HashMap<(JobId, String), Running>,
    by_host: HashMap<String, usize>,
}

/// An attempt in flight: its job, and its task, to stop it once the job is no longer
/// ours (cancelled by the user, its URL edited).
#[derive(Debug)]
struct Running {
    job: ClaimedJob,
    task: runtime::JoinHandle<()>,
    /// The pages of its crawl the attempt holds, kept until its result is committed (the
    /// entry is removed then): until then only this daemon's memory knows it fetched them.
    _targets: ClaimedTargets,
}

impl InFlight {
    fn total(&self) -> usize {
        self.attempts.len()
    }

    fn add(&mut self, job: &ClaimedJob, task: runtime::JoinHandle<()>, targets: ClaimedTargets) {
        let key = (job.id, job.lease.clone());
        let running = Running {
            job: job.clone(),
            task,
            _targets: targets,
        };
        if self.attempts.insert(key, running).is_none() {
            *self.by_host.entry(job.host.clone()).or_default() += 1;
        }
    }

    fn contains(&self, job: &ClaimedJob) -> bool {
        self.attempts.contains_key(&(job.id, job.lease.clone()))
    }

    /// Takes the attempt out; None if it was not in flight (already taken out).
    fn remove(&mut self, id: JobId, lease: &str) -> Option<Running> {
        let running = self.attempts.remove(&(id, lease.to_owned()))?;
        if let Some(n) = self.by_host.get_mut(&running.job.host) {
            *n -= 1;
            if *n == 0 {
                self.by_host.remove(&running.job.host);
            }
        }
        Some(running)
    }

    fn on_host(&self, host: &str) -> usize {
        self.by_host.get(host).copied().unwrap_or(0)
    }

    fn jobs(&self) -> Vec<&ClaimedJob> {
        self.attempts.values().map(|running| &running.job).collect()
    }
}

struct Scheduler<'d> {
    daemon: &'d Daemon,
    in_flight: InFlight,
    finished_tx: async_channel::Sender<Attempt>,
    finished_rx: async_channel::Receiver<Attempt>,
    /// Finished attempts not yet committed (kept across a failing store, never dropped).
    unstored: Vec<Attempt>,
    /// The hosts with queued work and when each may next be claimed for.
    hosts: HostSchedule,
    /// Where the next walk of the queue for hosts starts (it goes round).
    walk_cursor: String,
    last_walk: Instant,
    /// When the next walk is due (see [`WALK_QUEUE_EVERY`]).
    walk_every: Duration,
    /// Claims made so far; numbers each claim's lease token.
    claims: u64,
    report: RunReport,
    /// False after a database error, until a whole loop turn succeeds again.
    store_healthy: bool,
    /// Set by any database error during the current loop turn.
    turn_failed: bool,
    /// When the current loop turn began (see [`MIN_TURN`]).
    turn_began: Instant,
    last_expiry_check: Instant,
    last_admission: Instant,
    last_renewal: Instant,
    last_prune: Instant,
    last_stats: Instant,
    last_heartbeat: Instant,
    last_database_check: Instant,
    done_at_last_stats: u64,
    /// The unpauses (host, when) seen at the last heartbeat, each acted on once.
    pauses_lifted: HashSet<(String, String)>,
    /// When the last look for unpauses worked.
    last_unpause_look: Instant,
}

impl<'d> Scheduler<'d> {
    fn new(daemon: &'d Daemon) -> Scheduler<'d> {
        let (finished_tx, finished_rx) = async_channel::unbounded();
        let now = Instant::now();
        let long_ago = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        Scheduler {
            daemon,
            in_flight: InFlight::default(),
            finished_tx,
            finished_rx,
            unstored: Vec::new(),
            // A margin in the connection cache for redirects to other hosts and for the
            // connections of sessions just over (closed as the cache needs room).
            hosts: HostSchedule::new(SCHEDULED_HOSTS, daemon.crawler.idle_connections() * 3 / 4),
            walk_cursor: String::new(),
            last_walk: long_ago,
            walk_every: WALK_QUEUE_EVERY,
            claims: 0,
            report: RunReport::default(),
            store_healthy: true,
            turn_failed: false,
            turn_began: Instant::now(),
            last_expiry_check: long_ago,
            last_admission: long_ago,
            last_renewal: now,
            last_prune: now,
            last_stats: now,
            last_heartbeat: now,
            last_database_check: now,
            done_at_last_stats: 0,
            pauses_lifted: HashSet::new(),
            last_unpause_look: now,
        }
    }

    fn settings(&self) -> &Settings {
        &self.daemon.settings
    }

    fn store(&self) -> &Store {
        &self.daemon.store
    }

    async fn run(&mut self, shutdown: &Shutdown, options: RunOptions) -> Result<(), DaemonError> {
        loop {
            self.turn_failed = false;
            self.turn_began = Instant::now();
            self.collect_finished();
            self.store_finished().await;
            self.store_robots().await;
            if shutdown.is_fired() {
                return Ok(());
            }
            // Runs even while the database is failing: these are the writes that find out
            // it works again, and renewals must keep trying so our leases do not lapse.
            self.housekeeping().await;
            if self.last_database_check.elapsed() >= DATABASE_CHECK_EVERY {
                self.last_database_check = Instant::now();
                if let Err(e) = self.store().check_same_database() {
                    tracing::error!(error = %e, "the database is gone; stopping");
                    return Err(e.into());
                }
            }
            if let Err(e) = self.admit_and_claim().await {
                self.store_failed(&e);
            }
            if options.exit_when_idle {
                match self.is_idle().await {
                    Ok(true) => {
                        tracing::info!(
                            "no queued or running jobs left; exiting (--exit-when-idle)"
                        );
                        return Ok(());
                    }
                    Ok(false) => {}
                    Err(e) => self.store_failed(&e),
                }
            }
            if !self.turn_failed && !self.store_healthy {
                tracing::info!("database usable again; resuming");
                self.store_healthy = true;
            }
            self.wait_for_work(shutdown).await;
        }
    }

    /// Sleeps until an attempt finishes, the next look for new rows is due, a waiting host
    /// becomes due while a slot is free, the database says new jobs came (PostgreSQL's
    /// NOTIFY), or shutdown fires.
    async fn wait_for_work(&mut self, shutdown: &Shutdown) {
        enum Woken {
            Finished(Box<Attempt>),
            NewJobs,
            Other,
        }
        let pause = if self.store_healthy {
            // Until the next look for new rows is due (see `admit_and_claim`).
            let admission = self
                .settings()
                .daemon
                .poll_interval
                .saturating_sub(self.last_admission.elapsed());
            match self.hosts.next_wake().filter(|_| self.free_slots() > 0) {
                Some(due) => admission.min(due.saturating_duration_since(Instant::now())),
                None => admission,
            }
        } else {
            STORE_RETRY_PAUSE
        };
        let finished = async {
            match self.finished_rx.recv().await {
                Ok(attempt) => Woken::Finished(Box::new(attempt)),
                Err(_) => Woken::Other,
            }
        };
        let tick = async {
            runtime::sleep(pause).await;
            Woken::Other
        };
        let stop = async {
            shutdown.wait().await;
            Woken::Other
        };
        let new_jobs = async {
            if self.store_healthy {
                self.daemon.store.wait_for_new_jobs().await;
                Woken::NewJobs
            } else {
                std::future::pending().await
            }
        };
        let woken = finished.or(tick).or(stop).or(new_jobs).await;
        if matches!(woken, Woken::Finished(_)) && !shutdown.is_fired() {
            // What else finishes meanwhile is stored in the same turn; a host that falls
            // due is claimed for on time.
            let mut until = self.turn_began + MIN_TURN;
            if let Some(due) = self.hosts.next_wake().filter(|_| self.free_slots() > 0) {
                until = until.min(due);
            }
            let too_soon = until.saturating_duration_since(Instant::now());
            if !too_soon.is_zero() {
                runtime::sleep(too_soon).await;
            }
        }
        match woken {
            Woken::Finished(attempt) => self.unstored.push(*attempt),
            // Look for the new rows now rather than at the next poll.
            Woken::NewJobs => {
                if let Some(due) = Instant::now().checked_sub(self.settings().daemon.poll_interval)
                {
                    self.last_admission = self.last_admission.min(due);
                }
            }
            Woken::Other => {}
        }
    }

    fn collect_finished(&mut self) {
        while let Ok(attempt) = self.finished_rx.try_recv() {
            self.unstored.push(attempt);
        }
    }

    /// Stores the robots.txt answers fetched since the last turn, in one statement. Best
    /// effort: they are obeyed from memory either way, and fetched again after a restart.
    async fn store_robots(&mut self) {
        let batch = self.daemon.crawler.unsaved_robots();
        match self.store().save_robots(&batch.answers).await {
            Ok(()) => self.daemon.crawler.robots_saved(&batch),
            // They stay unsaved, and are in the next turn's batch.
            Err(e) => {
                tracing::warn!(origins = batch.answers.len(), error = %e, "could not store robots.txt answers; trying again at the next turn")
            }
        }
    }

    /// Commits every finished attempt in one transaction; only then frees their slots.
    async fn store_finished(&mut self) {
        if self.unstored.is_empty() {
            return;
        }
        let span = tracing::debug_span!("store", jobs = self.unstored.len());
        let stored = self.store().finish(&self.unstored).instrument(span).await;
        match stored {
            Ok(report) => {
                for attempt in std::mem::take(&mut self.unstored) {
                    // An attempt stopped for a lost lease may have finished just before:
                    // it was counted and its slot freed then.
                    let in_flight = self
                        .in_flight
                        .remove(attempt.job.id, &attempt.job.lease)
                        .is_some();
                    if report.lost.contains(&(attempt.job.id, attempt.job.attempt)) {
                        self.report.lost += u64::from(in_flight);
                    } else {
                        self.count(&attempt);
                        self.schedule_after(&attempt);
                    }
                    if in_flight {
                        self.hosts.attempt_ended(&attempt.job.host);
                    }
                }
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// The work a stored attempt left behind: a retry of its job when its backoff ends,
    /// and the links it queued.
    fn schedule_after(&mut self, attempt: &Attempt) {
        if let Verdict::Retry { after, .. } | Verdict::Requeue { after, .. } = &attempt.verdict {
            self.hosts
                .add_at(&attempt.job.host, Instant::now() + *after);
        }
        for child in &attempt.children {
            self.hosts.add(&child.host);
        }
    }

    fn count(&mut self, attempt: &Attempt) {
        let job = &attempt.job;
        if let Some(page) = &attempt.page {
            self.report.bytes += page.bytes;
        }
        match &attempt.verdict {
            Verdict::Done => {
                self.report.done += 1;
                tracing::debug!(job.id = %job.id, "stored: done");
            }
            Verdict::Retry { reason, .. } => {
                self.report.retried += 1;
                tracing::info!(job.id = %job.id, url = %job.url, %reason, "will retry");
            }
            Verdict::Requeue { reason, .. } => {
                self.report.retried += 1;
                tracing::warn!(job.id = %job.id, url = %job.url, %reason, "put back to the queue");
            }
            Verdict::Failed { reason } => {
                self.report.failed += 1;
                tracing::info!(job.id = %job.id, url = %job.url, %reason, "failed");
            }
            Verdict::Skipped { reason } => {
                self.report.skipped += 1;
                tracing::info!(job.id = %job.id, url = %job.url, %reason, "skipped");
            }
        }
    }

    /// A database error is logged loudly and the loop slows to one turn per second until a
    /// turn succeeds. Jobs are not marked failed for it: finished results wait in memory,
    /// and leases keep the rest safe.
    fn store_failed(&mut self, error: &StoreError) {
        self.report.store_errors += 1;
        self.turn_failed = true;
        self.store_healthy = false;
        tracing::error!(
            %error,
            unstored = self.unstored.len(),
            "database error; retrying every second (no job is failed for it)"
        );
    }

    async fn housekeeping(&mut self) {
        let now = Instant::now();
        let settings = self.daemon.settings.clone();
        // Renew before looking for expired leases: after a database outage our own leases
        // may have lapsed, and they must be renewed before they could be taken back.
        if !self.store_healthy || now.duration_since(self.last_renewal) >= settings.daemon.lease / 3
        {
            match self.renew_leases().await {
                Ok(()) => self.last_renewal = now,
                Err(e) => self.store_failed(&e),
            }
        }
        if !self.turn_failed && now.duration_since(self.last_expiry_check) >= EXPIRY_CHECK_EVERY {
            self.last_expiry_check = now;
            match self
                .store()
                .requeue_expired(settings.retry.max_attempts.get())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    jobs = n,
                    "took back jobs whose lease expired (a daemon died?)"
                ),
                Err(e) => self.store_failed(&e),
            }
        }
        if now.duration_since(self.last_heartbeat) >= settings.daemon.heartbeat {
            self.last_heartbeat = now;
            let counters = self.counters();
            if let Err(e) = self
                .store()
                .heartbeat(&self.daemon.identity.id, &counters, false)
                .await
            {
                self.store_failed(&e);
            }
            // Looked at over three heartbeats, and at least back to the last look that
            // worked, so neither a slow turn nor a database outage misses one; each
            // unpause is acted on once (a pause that came after it stands).
            let since_last_look = now.duration_since(self.last_unpause_look);
            match self
                .store()
                .lifted_pauses(settings.daemon.heartbeat * 3 + since_last_look)
                .await
            {
                Ok(lifted) => {
                    self.last_unpause_look = now;
                    let lifted: HashSet<(String, String)> = lifted.into_iter().collect();
                    for (host, _) in lifted.difference(&self.pauses_lifted) {
                        tracing::info!(%host, "pause lifted by crawlq unpause");
                        self.daemon.crawler.limits().lift_pause(host);
                        self.hosts.wait_no_longer(host);
                    }
                    self.pauses_lifted = lifted;
                }
                Err(e) => self.store_failed(&e),
            }
        }
        if now.duration_since(self.last_prune) >= PRUNE_LIMITER_EVERY {
            self.last_prune = now;
            self.daemon.crawler.prune();
        }
        if let Some(every) = settings.daemon.stats_interval {
            if now.duration_since(self.last_stats) >= every {
                self.log_stats(now.duration_since(self.last_stats)).await;
                self.last_stats = now;
            }
        }
    }

    /// Renews the leases of the attempts in flight, and stops those whose job is no longer
    /// ours (the user cancelled it or edited its URL): nothing they bring back could be
    /// stored, and they would hold a slot, and at shutdown the grace period, for nothing.
    async fn renew_leases(&mut self) -> Result<(), StoreError> {
        let lease = self.settings().daemon.lease;
        let lost = self
            .store()
            .renew_leases(lease, &self.in_flight.jobs())
            .await?;
        if lost.is_empty() {
            return Ok(());
        }
        // One that finished meanwhile is stored as usual (and found to have lost its lease).
        self.collect_finished();
        for (id, token) in lost {
            if self
                .unstored
                .iter()
                .any(|a| a.job.id == id && a.job.lease == token)
            {
                continue;
            }
            let Some(running) = self.in_flight.remove(id, &token) else {
                continue;
            };
            runtime::abort(running.task).await;
            self.report.lost += 1;
            self.hosts.attempt_ended(&running.job.host);
            tracing::info!(
                job.id = %id,
                url = %running.job.url,
                "stopped an attempt: its job is no longer ours (cancelled, its URL edited, or \
                 its lease taken back); nothing it fetches would be stored"
            );
        }
        Ok(())
    }

    fn counters(&self) -> WorkerCounters {
        let r = &self.report;
        WorkerCounters {
            claimed: r.claimed,
            done: r.done,
            failed: r.failed,
            retried: r.retried,
            skipped: r.skipped,
            bytes: r.bytes,
            in_flight: self.in_flight.total() as u64,
        }
    }

    async fn log_stats(&mut self, over: Duration) {
        let done = self.report.done - self.done_at_last_stats;
        self.done_at_last_stats = self.report.done;
        let pages_per_min = done as f64 * 60.0 / over.as_secs_f64().max(0.001);
        match self.store().status_counts().await {
            Ok(counts) => tracing::info!(
                pages_per_min = pages_per_min.round() as u64,
                queued = counts.queued,
                running = counts.running,
                done = counts.done,
                failed = counts.failed,
                in_flight = self.in_flight.total(),
                limiter_hosts = self.daemon.crawler.limits().tracked_hosts(),
                "stats"
            ),
            Err(e) => self.store_failed(&e),
        }
    }

    async fn admit_and_claim(&mut self) -> Result<(), StoreError> {
        // New rows are looked for once per poll interval, not on every turn of a busy
        // loop: each look is a round trip to SQLite's thread, and the interval is what an
        // idle daemon promises anyway. A full batch means more rows are waiting: the next
        // turn looks again.
        if self.last_admission.elapsed() >= self.settings().daemon.poll_interval {
            let admitted = self.admit().await?;
            if admitted < ADMISSION_BATCH {
                self.last_admission = Instant::now();
            }
        }
        if self.last_walk.elapsed() >= self.walk_every {
            self.walk_queue().await?;
        }
        let free = self.free_slots();
        if free == 0 {
            return Ok(());
        }
        let (picks, next_due) = self.pick_hosts(free);
        for (host, keep) in self.hosts.connection_changes() {
            self.daemon.crawler.keep_connections_to(&host, keep);
        }
        if picks.is_empty() {
            return Ok(());
        }
        let settings = self.daemon.settings.clone();
        self.claims += 1;
        let token = store::lease_token(&self.daemon.identity.id, self.claims);
        let claimed = match self
            .store()
            .claim(
                &token,
                settings.daemon.lease,
                &picks,
                settings.fetch.conditional_get,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                // Their quota was passed for nothing; they still have work.
                for pick in &picks {
                    self.hosts.add(&pick.host);
                }
                return Err(e);
            }
        };
        let mut per_host: HashMap<String, usize> = HashMap::new();
        for job in &claimed {
            *per_host.entry(job.host.clone()).or_default() += 1;
        }
        for job in claimed {
            let ticket = Ticket::granted(&job.host);
            self.start(job, ticket);
        }
        for (pick, next_due) in picks.into_iter().zip(next_due) {
            // Fewer jobs than asked for: nothing more is due there (a later walk of the
            // queue, or the rows that give it work, bring it back).
            if per_host.get(&pick.host).copied().unwrap_or(0) < pick.jobs {
                self.hosts.leave(&pick.host);
                continue;
            }
            let cap = self.settings().limits.for_host(&pick.host).in_flight.get();
            if self.in_flight.on_host(&pick.host) >= cap {
                self.hosts.fill(&pick.host);
            } else if let Some(due) = next_due {
                let late = self.lateness(&pick.host);
                self.hosts.wait(&pick.host, due, late);
            } else {
                self.hosts.add(&pick.host);
            }
        }
        Ok(())
    }

    /// Slots for new requests: `limits.max_in_flight` less the requests in progress,
    /// within the bound on all attempts. An attempt waiting for a quota sends nothing, and
    /// one whose response is in (parsing, or waiting for its batch to be stored) sends
    /// nothing more: neither holds a slot. While results cannot be stored, though, every
    /// attempt holds its slot until its result is stored, so that claiming stops.
    fn free_slots(&self) -> usize {
        let max = self.settings().limits.max_in_flight.get();
        let all = self.in_flight.total();
        let crawler = &self.daemon.crawler;
        let holding = if self.store_healthy {
            crawler.on_the_network()
        } else {
            all
        };
        let sending = holding.saturating_sub(crawler.limits().waiting());
        max.saturating_sub(sending)
            .min((max * ATTEMPTS_PER_SLOT).saturating_sub(all))
    }

    /// Reads hosts with due jobs from the queue into the schedule, going round the queue
    /// from where the last walk stopped.
    async fn walk_queue(&mut self) -> Result<(), StoreError> {
        let found = self
            .store()
            .hosts_with_due_jobs(&self.walk_cursor, SCHEDULED_HOSTS)
            .await?;
        self.last_walk = Instant::now();
        // At most SCHEDULED_HOSTS found: the factor fits a u32.
        self.walk_every = WALK_QUEUE_EVERY * (1 + found.len() / WALK_HOSTS_PER_SECOND) as u32;
        self.walk_cursor = if found.len() < SCHEDULED_HOSTS {
            String::new()
        } else {
            found.last().cloned().unwrap_or_default()
        };
        for host in &found {
            self.hosts.add(host);
        }
        Ok(())
    }

    /// Validates new rows: bad URLs and selectors fail here, before any fetch.
    /// Returns how many new rows it looked at.
    async fn admit(&mut self) -> Result<usize, StoreError> {
        let new_jobs = self.store().unadmitted(ADMISSION_BATCH).await?;
        if new_jobs.is_empty() {
            return Ok(0);
        }
        let decisions: Vec<_> = new_jobs
            .iter()
            .map(|new| {
                let decision = job::admit(
                    &new.url,
                    new.selectors.as_deref(),
                    &new.crawl,
                    self.daemon.crawler.query_filter(),
                );
                (new, decision)
            })
            .collect();
        for (new, decision) in &decisions {
            if let Err(reason) = decision {
                tracing::info!(job.id = %new.id, %reason, "refused a new job");
            }
        }
        // Jobs refused or skipped at admission were ended by this daemon without a claim;
        // they count in its `workers` row like the ones it fetched.
        let admissions = self.store().record_admissions(&decisions).await?;
        for (_, decision) in &decisions {
            if let Ok(admitted) = decision {
                self.hosts.add(&admitted.host);
            }
        }
        self.report.failed += admissions.refused;
        self.report.skipped += admissions.skipped;
        Ok(new_jobs.len())
    }

    /// Host-fair picking: the hosts whose next request may go now take turns, each getting
    /// as many jobs as its quota lets go at once (its burst) within its free in-flight
    /// slots, until the free slots run out. The quota is passed here, for the claimed
    /// jobs' [`Ticket`]s; a host whose quota (or pause, or Crawl-delay) does not allow a
    /// request yet waits in the schedule until it does, claiming nothing and costing
    /// nothing per turn. Each pick comes with when its host's quota next allows a request,
    /// when that is known.
    fn pick_hosts(&mut self, free: usize) -> (Vec<HostPick>, Vec<Option<Instant>>) {
        let now = Instant::now();
        let limits = self.daemon.crawler.limits();
        let mut picks = Vec::new();
        let mut next_due = Vec::new();
        let mut left = free;
        while left > 0 {
            let Some(host) = self.hosts.next_due(now) else {
                break;
            };
            let cap = self.daemon.settings.limits.for_host(&host).in_flight.get();
            let room = cap.saturating_sub(self.in_flight.on_host(&host)).min(left);
            if room == 0 {
                self.hosts.fill(&host);
                continue;
            }
            let mut granted = 0;
            let mut next = None;
            while granted < room {
                match limits.grant(&host) {
                    Grant::Now => granted += 1,
                    Grant::NotBefore(due) => {
                        next = Some(due);
                        break;
                    }
                }
            }
            if granted == 0 {
                let late = self.lateness(&host);
                self.hosts
                    .wait(&host, next.expect("no grant means a time"), late);
                continue;
            }
            left -= granted;
            picks.push(HostPick {
                host,
                jobs: granted,
            });
            next_due.push(next);
        }
        (picks, next_due)
    }

    /// How late `host` may be claimed for after its quota allows it: a hundredth of its
    /// interval (5 ms at the default 2 requests a second, 0.5 ms at 20), at most
    /// [`MIN_TURN`]. Hosts that fall due within that of each other share a loop turn and
    /// a claim instead of waking the loop one by one.
    fn lateness(&self, host: &str) -> Duration {
        (self.settings().limits.for_host(host).rate.period() / 100).min(MIN_TURN)
    }

    fn start(&mut self, job: ClaimedJob, ticket: Ticket) {
        self.report.claimed += 1;
        let claimed = job.clone();
        let crawler = self.daemon.crawler.clone();
        let finished = self.finished_tx.clone();
        let network = crawler.network_phase();
        // Here, not in the attempt: between a claim and this the loop commits nothing, so
        // a page another attempt fetched is either still held, or was recorded by a commit
        // before the claim (which skipped this job if it was queued for that page; see
        // `ClaimedTargets`).
        let targets = crawler.claim_targets(&job);
        let held = targets.clone();
        let task = runtime::spawn(async move {
            // Every claimed job must report back, or its slot leaks and its lease is renewed
            // forever: a panic (say, in the HTTP client on a hostile response) fails the job.
            let fallback = job.clone();
            let attempt = match AssertUnwindSafe(crawler.attempt(job, ticket, network, held))
                .catch_unwind()
                .await
            {
                Ok(attempt) => attempt,
                Err(panic) => {
                    let reason = format!(
                        "internal error while crawling: {}",
                        runtime::panic_message(&*panic)
                    );
                    tracing::error!(job.id = %fallback.id, url = %fallback.url, %reason);
                    Attempt {
                        job: fallback,
                        page: None,
                        verdict: Verdict::Failed { reason },
                        children: Vec::new(),
                        pause: None,
                    }
                }
            };
            // The receiver lives until the daemon exits; after that the job is released.
            let _ = finished.send(attempt).await;
        });
        self.in_flight.add(&claimed, task, targets);
    }

    async fn is_idle(&self) -> Result<bool, StoreError> {
        if self.in_flight.total() > 0 || !self.unstored.is_empty() {
            return Ok(false);
        }
        Ok(!self.store().has_unfinished_jobs().await?)
    }

    /// Attempts in flight whose result has not come back yet.
    fn still_running(&self) -> usize {
        let back = self
            .unstored
            .iter()
            .filter(|a| self.in_flight.contains(&a.job))
            .count();
        self.in_flight.total() - back
    }

    /// Shutdown: give in-flight jobs the grace period, store what finished, and hand the
    /// rest back to the queue.
    async fn drain(&mut self) -> Result<(), DaemonError> {
        let grace = self.settings().daemon.shutdown_grace;
        let deadline = Instant::now() + grace;
        if self.in_flight.total() > 0 {
            tracing::info!(
                in_flight = self.in_flight.total(),
                grace_secs = grace.as_secs_f64(),
                "shutting down: waiting for in-flight jobs"
            );
        }
        // Jobs the user cancelled (or edited) while they ran are not waited for: the
        // lease check finds them at once, and again every LEASE_CHECK_WHILE_DRAINING.
        let mut next_lease_check = Instant::now();
        while self.still_running() > 0 {
            let now = Instant::now();
            if now >= next_lease_check {
                next_lease_check = now + LEASE_CHECK_WHILE_DRAINING;
                if let Err(e) = self.renew_leases().await {
                    tracing::debug!(error = %e, "could not check leases while shutting down");
                }
                if self.still_running() == 0 {
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.min(next_lease_check.saturating_duration_since(Instant::now()));
            match runtime::timeout(wait, self.finished_rx.recv()).await {
                Ok(Ok(attempt)) => {
                    self.unstored.push(attempt);
                    self.collect_finished();
                }
                Ok(Err(_)) => break,
                Err(runtime::Elapsed) => {}
            }
        }
        self.store_finished().await;
        self.store_robots().await;
        let released = self.store().release(&self.daemon.identity.id).await?;
        self.report.released = released;
        // What was still in flight has just gone back to the queue: a stopped daemon has
        // nothing in flight.
        let counters = WorkerCounters {
            in_flight: 0,
            ..self.counters()
        };
        if let Err(e) = self
            .store()
            .heartbeat(&self.daemon.identity.id, &counters, true)
            .await
        {
            tracing::warn!(error = %e, "could not mark this daemon stopped in workers");
        }
        if released > 0 {
            tracing::info!(jobs = released, "put unfinished jobs back to queued");
        }
        if !self.unstored.is_empty() {
            tracing::error!(
                jobs = self.unstored.len(),
                "could not store some finished jobs; they were released and will run again"
            );
        }
        Ok(())
    }
}

/// This machine's (or container's) host name, as `workers.hostname` records it.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
