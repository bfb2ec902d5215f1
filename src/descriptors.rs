//! File descriptors: the process's limit, and the share of it the HTTP client may keep
//! for idle connections; and malloc's arenas. The only module that names `libc`.
//!
//! Every kept-alive connection to a host is a descriptor. With thousands of hosts, a
//! connection cache that grows with the hosts ran a daemon into its limit (1 024 in many
//! containers): connects failed as if the sites refused them. And libcurl as the
//! `curl-sys` crate builds it by default waits on its sockets with select(), which cannot
//! watch a descriptor numbered 1 024 or more: the HTTP client's thread died on the first
//! one ("Unrecoverable error in select/poll"). `.cargo/config.toml` builds it with poll();
//! a build without that (CFLAGS set otherwise) is detected here, and the daemon then keeps
//! its soft limit at 1 024.

/// The descriptors crawlq may use when libcurl waits with select().
const SELECT_LIMIT: u64 = 1024;
/// The soft limit the daemon raises itself to, at most, when libcurl waits with poll().
const MOST_DESCRIPTORS: u64 = 65_536;

/// Whether libcurl was built to wait on its sockets with poll() (see the module comment):
/// the CFLAGS the C libraries were built with are the ones this crate sees.
pub fn curl_uses_poll() -> bool {
    option_env!("CFLAGS").is_some_and(|flags| flags.split_whitespace().any(|f| f == "-DHAVE_POLL"))
}
/// Descriptors kept for everything but HTTP connections: the database and its journal
/// (per connection), the lock file, the log, the runtime's poller, DNS look-ups,
/// connections curl is still closing.
const RESERVED: u64 = 192;
/// Idle connections kept at most, however high the limit: one to most of the hosts a busy
/// daemon is in the middle of (two cores send up to 3 500 requests a second: 1 750 hosts
/// at once at 2 a second each; three quarters of the cache, 1 536, are for the hosts in a
/// session, see `crate::schedule`), without holding ten thousand that will not be used
/// again in time. Each costs a few KB of the daemon's memory: at 10 000 hosts
/// (bench/hosts.sh) 3 072 opened 12 000 connections instead of 27 000, at the same CPU per
/// page, but took peak RSS to 58-60 MB, against 52-57 MB here (target 60 MB).
const MOST_IDLE: u64 = 2048;
/// Idle connections kept at least, however low the limit.
const FEWEST_IDLE: u64 = 16;

/// The soft and hard limits on open descriptors (RLIMIT_NOFILE), if they can be read.
fn limits() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some((limit.rlim_cur, limit.rlim_max))
}

/// Keeps glibc's malloc to two arenas. By default it makes up to eight per core, one for
/// each thread that allocates at the same time as another (the runtime's threads, the
/// blocking pool, curl's thread), and memory freed in one arena is not reused by the
/// others: with thousands of hosts that held 6 MB more at the peak (bench/hosts.sh).
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before the threads
    // that allocate start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Sets the soft limit on open descriptors to what crawlq can use: raised towards the hard
/// limit (at most 65 536) when libcurl waits with poll(), as Go's runtime does; lowered to
/// 1 024 when it waits with select(), so that running out is a failed connect crawlq
/// recognises (see [`nearly_exhausted`]), not a descriptor select() cannot watch.
pub fn fit_limit() {
    let Some((soft, hard)) = limits() else {
        return;
    };
    let wanted = if curl_uses_poll() {
        hard.min(MOST_DESCRIPTORS).max(soft)
    } else {
        soft.min(SELECT_LIMIT)
    };
    if wanted == soft {
        return;
    }
    let limit = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::debug!(from = soft, to = wanted, "set the open file limit");
    }
}

/// The descriptors crawlq may use: its soft limit, and no more than select() can watch
/// when libcurl waits with it.
fn usable() -> u64 {
    let soft = limits().map_or(SELECT_LIMIT, |(soft, _)| soft);
    if curl_uses_poll() {
        soft
    } else {
        soft.min(SELECT_LIMIT)
    }
}

/// Idle connections the HTTP client may keep: what the descriptor limit leaves after the
/// reserve and twice `max_in_flight` (requests and robots.txt look-ups), within 16 and
/// 2 048.
pub fn idle_connections(max_in_flight: usize) -> usize {
    let spare = usable().saturating_sub(RESERVED + 2 * max_in_flight as u64);
    spare.clamp(FEWEST_IDLE, MOST_IDLE) as usize
}

/// Whether this process has (nearly) run out of descriptors: fewer than a tenth of the
/// reserve left. A connect that fails then is our fault, not the site's.
pub fn nearly_exhausted() -> bool {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(open) => open.count() as u64 + RESERVED / 10 >= usable(),
        // Listing them takes a descriptor too: none left is the answer.
        Err(e) => e.raw_os_error() == Some(libc::EMFILE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_build_of_libcurl_waits_with_poll() {
        // .cargo/config.toml: without it, descriptors stay below 1 024.
        assert!(curl_uses_poll());
    }

    #[test]
    fn idle_connections_fit_the_limit() {
        let (soft, _) = limits().expect("getrlimit works here");
        let idle = idle_connections(64) as u64;
        assert!((FEWEST_IDLE..=MOST_IDLE).contains(&idle));
        if soft > RESERVED + 64 + 2 * FEWEST_IDLE {
            assert!(
                idle + 64 + RESERVED <= soft,
                "{idle} idle with a limit of {soft}"
            );
        }
    }
}
