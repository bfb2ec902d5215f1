//! Which hosts the scheduler may claim for, and when: a due-time index of the hosts that
//! have queued work.
//!
//! A host is in one of three places:
//! - **ready**: its next request may go now. Hosts in a *session* (claimed for in the
//!   last [`SESSION`]) go first, the others take turns in round-robin order, and a host
//!   whose session is over goes to the back of that line. Most of a session's requests
//!   then find the connection its first one opened, still idle in the HTTP client's
//!   cache: with more hosts than the cache holds, strict round-robin would come back to
//!   each host only after its connection had been evicted, and pay a new connection for
//!   every request (about a sixth of the CPU at 10 000 hosts, `perf`). A host that runs
//!   dry keeps its session: work that comes back within it (links being stored, jobs
//!   admitted after the host's first ones) goes ahead of the line again. Only so many
//!   sessions at once keep their connections (what the cache holds, less a margin): the
//!   schedule lists the changes for the HTTP client ([`HostSchedule::connection_changes`]);
//! - **waiting**: its next request may not go before an instant (its quota, a Crawl-delay,
//!   a Retry-After pause, a retry's backoff): kept in a heap by that instant, so a waiting
//!   host costs nothing per loop turn, however many there are;
//! - **full**: its per-host in-flight cap is taken; it becomes ready when one of its
//!   attempts ends.
//!
//! Hosts with no queued work are not kept. The index is a hint, not the truth: the
//! database says which jobs are due (a claim for a host with nothing due returns nothing,
//! and the host is dropped), and the rate limiter says whether a request may go. Hosts
//! come in from admission, from the links and retries a batch queues, and from a walk of
//! the queue now and then (for rows the daemon did not write: a user re-queueing a job).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a host, once claimed for, keeps its place ahead of hosts waiting for a turn:
/// long enough for a small site's pages at the default rate (2 a second), short enough
/// that a host with a long crawl gives way to the others every few seconds.
pub const SESSION: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    began: Instant,
    keeps_connection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Ready,
    /// Not before this instant. Heap entries whose instant differs are stale.
    Waiting(Instant),
    Full,
}

/// The hosts with queued work and when each may next be claimed for.
#[derive(Debug)]
pub struct HostSchedule {
    places: HashMap<String, Place>,
    /// Ready hosts in a session: claimed for before the others.
    returning: VecDeque<String>,
    ready: VecDeque<String>,
    /// Each host's session, and when each began in order of beginning (entries whose
    /// instant differs from the map's are stale), so that sessions end in O(1).
    sessions: HashMap<String, Session>,
    session_starts: VecDeque<(Instant, String)>,
    /// Sessions that keep their connections, and how many may.
    keeping: usize,
    most_keeping: usize,
    /// Hosts whose connections are to be kept (true) or no longer (false), in order.
    connection_changes: Vec<(String, bool)>,
    waiting: BinaryHeap<Reverse<(Instant, String)>>,
    /// The same hosts by the latest instant each may be woken for (its due instant plus
    /// the lateness it allows, see [`HostSchedule::wait`]), with the due
    /// instant that makes an entry current.
    deadlines: BinaryHeap<Reverse<(Instant, Instant, String)>>,
    /// Work that falls due later on a host that has a place already (a retry on a host
    /// whose in-flight cap is taken): the host is added back then, in case it left the
    /// index meanwhile (a claim found nothing due on it).
    reminders: BinaryHeap<Reverse<(Instant, String)>>,
    /// Hosts kept at most; past this, new hosts are left to a later walk of the queue, so
    /// memory stays bounded however many hosts have queued work.
    capacity: usize,
}

impl HostSchedule {
    /// At most `capacity` hosts, and `most_keeping` sessions keeping their connections.
    pub fn new(capacity: usize, most_keeping: usize) -> HostSchedule {
        HostSchedule {
            places: HashMap::new(),
            returning: VecDeque::new(),
            ready: VecDeque::new(),
            sessions: HashMap::new(),
            session_starts: VecDeque::new(),
            keeping: 0,
            most_keeping,
            connection_changes: Vec::new(),
            waiting: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            reminders: BinaryHeap::new(),
            capacity,
        }
    }

    /// Hosts in the index.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// The hosts whose connections are now to be kept (true) or no longer (false), since
    /// the last call.
    pub fn connection_changes(&mut self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.connection_changes)
    }

    /// `host` has work that is due now. A host already in the index keeps its place (a
    /// waiting host still waits for its quota).
    pub fn add(&mut self, host: &str) {
        if self.places.contains_key(host) || self.places.len() >= self.capacity {
            return;
        }
        self.make_ready(host.to_owned());
    }

    /// `host` may be claimed for now, whatever it was waiting for (`crawlq unpause` lifted
    /// its pause): a waiting host becomes ready, a host not in the index joins it.
    pub fn wait_no_longer(&mut self, host: &str) {
        match self.places.get(host) {
            Some(Place::Waiting(_)) => self.make_ready(host.to_owned()),
            Some(_) => {}
            None => self.add(host),
        }
    }

    /// `host` has work that is due at `due` (a retry's backoff, an origin's robots.txt
    /// wait): the host joins the index then, if it is not in it already. Only a reminder:
    /// it holds no place, so work on the same host that is due now (a new job, another
    /// port's) is not held back by it.
    pub fn add_at(&mut self, host: &str, due: Instant) {
        if self.reminders.len() < self.capacity {
            self.reminders.push(Reverse((due, host.to_owned())));
        }
    }

    /// The next host whose turn it is, among those whose wait is over at `now`. It leaves
    /// the index: the caller puts it back with [`HostSchedule::wait`],
    /// [`HostSchedule::fill`] or [`HostSchedule::add`], or leaves it out when it has no
    /// work left.
    pub fn next_due(&mut self, now: Instant) -> Option<String> {
        self.end_sessions(now);
        self.wake(now);
        while let Some(host) = self.returning.pop_front() {
            if self.places.get(&host) != Some(&Place::Ready) {
                continue;
            }
            if !self.sessions.contains_key(&host) {
                // Its session ended while it stood in line.
                self.ready.push_back(host);
                continue;
            }
            self.places.remove(&host);
            self.keep_connection_if_room(&host);
            return Some(host);
        }
        while let Some(host) = self.ready.pop_front() {
            if self.places.get(&host) == Some(&Place::Ready) {
                self.places.remove(&host);
                self.begin_session(&host, now);
                return Some(host);
            }
        }
        None
    }

    /// `host` has no work due: it left the index when it was claimed for. Its connection
    /// is no longer kept, but its session runs on: work that comes back within it (a
    /// page's links once they are stored, jobs admitted after their host's first ones)
    /// finds the host ahead of the line again, instead of behind every host that has not
    /// had a turn yet.
    pub fn leave(&mut self, host: &str) {
        if self.places.contains_key(host) {
            return;
        }
        self.give_up_connection(host);
    }

    /// `host` may not be claimed for before `due`, and may be claimed for up to `late`
    /// after it: [`HostSchedule::next_wake`] is the earliest such deadline, so that hosts
    /// falling due within a few milliseconds of each other are claimed for together.
    pub fn wait(&mut self, host: &str, due: Instant, late: Duration) {
        self.places.insert(host.to_owned(), Place::Waiting(due));
        self.waiting.push(Reverse((due, host.to_owned())));
        self.deadlines
            .push(Reverse((due + late, due, host.to_owned())));
    }

    /// `host` has its in-flight cap taken; [`HostSchedule::attempt_ended`] makes it ready.
    pub fn fill(&mut self, host: &str) {
        self.places.insert(host.to_owned(), Place::Full);
    }

    /// An attempt on `host` ended: a host that was full may be claimed for again.
    pub fn attempt_ended(&mut self, host: &str) {
        if self.places.get(host) == Some(&Place::Full) {
            self.make_ready(host.to_owned());
        }
    }

    /// When the first waiting host must be woken for (its due instant, or later by the
    /// lateness it allows), if any is waiting.
    pub fn next_wake(&mut self) -> Option<Instant> {
        let mut wake = None;
        while let Some(Reverse((deadline, due, host))) = self.deadlines.peek() {
            if self.places.get(host) == Some(&Place::Waiting(*due)) {
                wake = Some(*deadline);
                break;
            }
            self.deadlines.pop();
        }
        let reminder = self.reminders.peek().map(|Reverse((due, _))| *due);
        match (wake, reminder) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Puts `host` in line: ahead if it is in a session (ended ones are gone from
    /// `sessions`), at the back otherwise.
    fn make_ready(&mut self, host: String) {
        self.places.insert(host.clone(), Place::Ready);
        if self.sessions.contains_key(&host) {
            self.returning.push_back(host);
        } else {
            self.ready.push_back(host);
        }
    }

    fn begin_session(&mut self, host: &str, now: Instant) {
        // An old session is forgotten first, so that the HTTP client hears of its end
        // before the new one's start.
        self.end_session(host);
        let session = Session {
            began: now,
            keeps_connection: false,
        };
        self.sessions.insert(host.to_owned(), session);
        self.keep_connection_if_room(host);
        self.session_starts.push_back((now, host.to_owned()));
    }

    /// A session that does not keep its connection (it began when as many did, or its
    /// host ran dry for a while) keeps it from now on, if fewer sessions do now.
    fn keep_connection_if_room(&mut self, host: &str) {
        if self.keeping >= self.most_keeping {
            return;
        }
        if let Some(session) = self.sessions.get_mut(host) {
            if !session.keeps_connection {
                session.keeps_connection = true;
                self.keeping += 1;
                self.connection_changes.push((host.to_owned(), true));
            }
        }
    }

    /// `host`'s session, if it has one, no longer keeps its connection.
    fn give_up_connection(&mut self, host: &str) {
        if let Some(session) = self.sessions.get_mut(host) {
            if session.keeps_connection {
                session.keeps_connection = false;
                self.keeping -= 1;
                self.connection_changes.push((host.to_owned(), false));
            }
        }
    }

    fn end_session(&mut self, host: &str) {
        self.give_up_connection(host);
        self.sessions.remove(host);
    }

    /// Ends the sessions that began [`SESSION`] or more before `now`.
    fn end_sessions(&mut self, now: Instant) {
        while let Some((began, _)) = self.session_starts.front() {
            if now.saturating_duration_since(*began) < SESSION {
                break;
            }
            let (began, host) = self.session_starts.pop_front().expect("peeked");
            if self.sessions.get(&host).map(|s| s.began) == Some(began) {
                self.end_session(&host);
            }
        }
    }

    /// Puts the hosts whose wait is over in line.
    fn wake(&mut self, now: Instant) {
        while let Some(Reverse((due, _))) = self.waiting.peek() {
            if *due > now {
                break;
            }
            let Reverse((due, host)) = self.waiting.pop().expect("peeked");
            if self.places.get(&host) == Some(&Place::Waiting(due)) {
                self.make_ready(host);
            }
        }
        // A deadline that has passed belongs to a host made ready above or to a stale
        // entry: either way it is done with, and the heap stays as small as `waiting`
        // even when `next_wake` is not asked for a while (the database failing).
        while let Some(Reverse((deadline, _, _))) = self.deadlines.peek() {
            if *deadline > now {
                break;
            }
            self.deadlines.pop();
        }
        while let Some(Reverse((due, _))) = self.reminders.peek() {
            if *due > now {
                break;
            }
            let Reverse((_, host)) = self.reminders.pop().expect("peeked");
            self.add(&host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ready_hosts_take_turns_and_waiting_ones_join_when_due() {
        let t0 = Instant::now();
        let mut s = HostSchedule::new(100, 1);
        s.add("a");
        s.add("b");
        s.add("a"); // already in: no second turn
        assert_eq!(s.next_due(t0).as_deref(), Some("a"));
        s.wait("a", t0 + Duration::from_millis(500), Duration::ZERO);
        assert_eq!(s.next_due(t0).as_deref(), Some("b"));
        s.wait("b", t0 + Duration::from_millis(200), Duration::ZERO);
        assert_eq!(s.next_due(t0), None);
        assert_eq!(s.next_wake(), Some(t0 + Duration::from_millis(200)));
        assert_eq!(
            s.next_due(t0 + Duration::from_millis(600)).as_deref(),
            Some("b")
        );
        assert_eq!(
            s.next_due(t0 + Duration::from_millis(600)).as_deref(),
            Some("a")
        );
        assert!(s.is_empty());
    }

    #[test]
    fn hosts_falling_due_close_together_are_woken_for_together() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = HostSchedule::new(100, 1);
        s.wait("slow", t0 + ms(10), ms(5));
        s.wait("fast", t0 + ms(12), ms(1));
        // The fast host's deadline comes first: the slow one, due by then, goes with it.
        assert_eq!(s.next_wake(), Some(t0 + ms(13)));
        assert_eq!(s.next_due(t0 + ms(13)).as_deref(), Some("slow"));
        assert_eq!(s.next_due(t0 + ms(13)).as_deref(), Some("fast"));
        // Never before it is due.
        s.wait("slow", t0 + ms(100), ms(5));
        assert_eq!(s.next_due(t0 + ms(99)), None);
        assert_eq!(s.next_wake(), Some(t0 + ms(105)));
        // Entries passed by are dropped whether or not anyone asked for the next wake.
        for i in 0..100 {
            s.wait("slow", t0 + ms(200 + i), ms(5));
            assert_eq!(s.next_due(t0 + ms(210 + i)).as_deref(), Some("slow"));
        }
        assert!(
            s.deadlines.len() <= 1,
            "{} deadlines kept",
            s.deadlines.len()
        );
    }

    #[test]
    fn a_host_lifted_from_its_wait_is_ready_at_once() {
        let t0 = Instant::now();
        let mut s = HostSchedule::new(100, 1);
        s.add("a");
        let a = s.next_due(t0).unwrap();
        s.wait(&a, t0 + Duration::from_secs(3600), Duration::ZERO);
        s.add("a"); // new work does not end a wait
        assert_eq!(s.next_due(t0), None);
        s.wait_no_longer("a");
        s.wait_no_longer("b"); // not in the index: joins it
        assert_eq!(s.next_due(t0).as_deref(), Some("a"));
        assert_eq!(s.next_due(t0).as_deref(), Some("b"));
        // The stale heap entry does not bring it back by itself.
        assert_eq!(s.next_due(t0 + Duration::from_secs(3601)), None);
    }

    #[test]
    fn a_host_in_session_goes_first_until_its_session_ends() {
        let t0 = Instant::now();
        let second = t0 + Duration::from_secs(1);
        let mut s = HostSchedule::new(100, 1);
        s.add("a");
        s.add("b");
        assert_eq!(s.next_due(t0).as_deref(), Some("a"));
        assert_eq!(s.connection_changes(), [("a".to_owned(), true)]);
        s.wait("a", second, Duration::ZERO);
        // b has been ready since t0, but a is in a session.
        assert_eq!(s.next_due(second).as_deref(), Some("a"));
        s.wait("a", t0 + SESSION, Duration::ZERO);
        s.attempt_ended("a"); // not full: keeps waiting
        assert_eq!(s.next_due(second), Some("b".to_owned()));
        // One session at most keeps its connection.
        assert_eq!(s.connection_changes(), []);
        s.fill("b");
        // a's session is over when it wakes: it goes behind b, which is in one still.
        let later = t0 + SESSION;
        s.attempt_ended("b");
        assert_eq!(s.next_due(later).as_deref(), Some("b"));
        assert_eq!(s.next_due(later).as_deref(), Some("a"));
        // a's session ended: b, in its session still, keeps its connection now (a's
        // new session does not: one at most may).
        assert_eq!(
            s.connection_changes(),
            [("a".to_owned(), false), ("b".to_owned(), true)]
        );
        // A host with no work left no longer keeps its connection.
        s.leave("b");
        assert_eq!(s.connection_changes(), [("b".to_owned(), false)]);
    }

    #[test]
    fn a_host_that_ran_dry_goes_first_again_when_work_comes_back_within_its_session() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let mut s = HostSchedule::new(100, 1);
        s.add("a");
        assert_eq!(s.next_due(t0).as_deref(), Some("a"));
        // Nothing more is due on a for now (its next job is not admitted yet).
        s.leave("a");
        assert_eq!(
            s.connection_changes(),
            [("a".to_owned(), true), ("a".to_owned(), false)]
        );
        s.add("b");
        s.add("a");
        // a's session is not over: it goes ahead of b, and keeps its connection again.
        assert_eq!(s.next_due(soon).as_deref(), Some("a"));
        assert_eq!(s.connection_changes(), [("a".to_owned(), true)]);
        s.wait("a", t0 + SESSION, Duration::ZERO);
        assert_eq!(s.next_due(soon).as_deref(), Some("b"));
        // The one session that may keep its connection is a's.
        assert_eq!(s.connection_changes(), []);
        s.leave("b");
        // Once its session is over, a host that comes back waits behind the others.
        s.add("c");
        s.add("b");
        let later = soon + SESSION;
        assert_eq!(s.next_due(later).as_deref(), Some("c"));
        assert_eq!(s.next_due(later).as_deref(), Some("a"));
        assert_eq!(s.next_due(later).as_deref(), Some("b"));
    }

    #[test]
    fn a_full_host_waits_for_an_attempt_to_end() {
        let t0 = Instant::now();
        let mut s = HostSchedule::new(100, 1);
        s.add("a");
        let a = s.next_due(t0).unwrap();
        s.fill(&a);
        assert_eq!(s.next_due(t0), None);
        assert_eq!(s.next_wake(), None);
        s.attempt_ended("b"); // not in the index: nothing happens
        assert_eq!(s.len(), 1);
        s.attempt_ended("a");
        assert_eq!(s.next_due(t0).as_deref(), Some("a"));
    }

    #[test]
    fn work_due_later_brings_its_host_back_then_without_holding_it_back_now() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let sooner = t0 + Duration::from_secs(1);
        let mut s = HostSchedule::new(100, 1);
        s.add_at("a", later);
        s.add_at("a", sooner);
        assert!(s.is_empty(), "a reminder holds no place");
        assert_eq!(s.next_wake(), Some(sooner));
        assert_eq!(s.next_due(t0), None);
        assert_eq!(s.next_due(sooner).as_deref(), Some("a"));
        assert_eq!(s.next_wake(), Some(later));
        assert_eq!(s.next_due(later).as_deref(), Some("a"));
        assert_eq!(s.next_wake(), None);
        // New work due now on a host with a retry due later goes now.
        s.add_at("b", later + Duration::from_secs(600));
        s.add("b");
        assert_eq!(s.next_due(later).as_deref(), Some("b"));
    }

    #[test]
    fn a_retry_on_a_full_host_brings_it_back_when_due_even_after_it_left() {
        let t0 = Instant::now();
        let retry = t0 + Duration::from_secs(2);
        let mut s = HostSchedule::new(100, 1);
        s.add("a");
        let a = s.next_due(t0).unwrap();
        s.fill(&a);
        s.add_at("a", retry);
        assert_eq!(s.next_wake(), Some(retry));
        s.attempt_ended("a");
        // Claimed for at once, nothing due there yet: it leaves the index.
        assert_eq!(s.next_due(t0).as_deref(), Some("a"));
        assert!(s.is_empty());
        assert_eq!(s.next_due(retry).as_deref(), Some("a"));
    }

    #[test]
    fn the_index_holds_at_most_its_capacity() {
        let mut s = HostSchedule::new(2, 1);
        s.add("a");
        s.add("b");
        s.add("c");
        s.add_at("d", Instant::now());
        assert_eq!(s.len(), 2);
    }
}
