//! File descriptors: the process's limit, and the share of it the HTTP client may keep
//! for idle connections; and malloc's arenas. The only module that names `libc`.
//!
//! Every kept-alive connection to a host is a descriptor. With thousands of hosts, a
//! connection cache that grows with the hosts ran a daemon into its limit (1 024 in many
//! containers): connects failed as if the sites refused them. Worse, libcurl as the
//! `curl-sys` crate builds it waits on its sockets with select(), which cannot watch a
//! descriptor numbered 1 024 or more: the HTTP client's thread dies on the first one
//! ("Unrecoverable error in select/poll"). So the daemon keeps its soft limit at 1 024 at
//! most, and sizes the connection cache to fit.

/// The descriptors crawlq may use: select() cannot watch descriptor 1 024 or above.
const SELECT_LIMIT: u64 = 1024;
/// Descriptors kept for everything but HTTP connections: the database and its journal
/// (per connection), the lock file, the log, the runtime's poller, DNS look-ups,
/// connections curl is still closing.
const RESERVED: u64 = 192;
/// Idle connections kept at most, however high the limit: enough to keep one open to
/// each of the hosts a busy daemon cycles through, without holding thousands.
const MOST_IDLE: u64 = 1024;
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

/// Lowers the soft limit on open descriptors to 1 024 if it is higher: running out is then
/// a failed connect that crawlq recognises (see [`nearly_exhausted`]) and recovers from,
/// not a descriptor select() cannot watch, which stops the HTTP client.
pub fn keep_below_select_limit() {
    let Some((soft, hard)) = limits() else {
        return;
    };
    if soft <= SELECT_LIMIT {
        return;
    }
    let lowered = libc::rlimit {
        rlim_cur: SELECT_LIMIT,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) } == 0 {
        tracing::debug!(
            from = soft,
            to = SELECT_LIMIT,
            "lowered the open file limit"
        );
    }
}

/// Idle connections the HTTP client may keep: what the descriptor limit (at most 1 024,
/// see the module comment) leaves after the reserve and twice `max_in_flight` (requests
/// and robots.txt look-ups), within 16 and 1 024.
pub fn idle_connections(max_in_flight: usize) -> usize {
    let usable = limits().map_or(SELECT_LIMIT, |(soft, _)| soft.min(SELECT_LIMIT));
    let spare = usable.saturating_sub(RESERVED + 2 * max_in_flight as u64);
    spare.clamp(FEWEST_IDLE, MOST_IDLE) as usize
}

/// Whether this process has (nearly) run out of descriptors: fewer than a tenth of the
/// reserve left. A connect that fails then is our fault, not the site's.
pub fn nearly_exhausted() -> bool {
    let Some((soft, _)) = limits() else {
        return false;
    };
    let Ok(open) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    open.count() as u64 + RESERVED / 10 >= soft.min(SELECT_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

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
