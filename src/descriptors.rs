//! File descriptors: the process's limit, and the share of it the HTTP client may keep
//! for idle connections. The only module that names `libc`.
//!
//! Every kept-alive connection to a host is a descriptor. With thousands of hosts, a
//! connection cache that grows with the hosts ran a daemon into its limit (1 024 in many
//! containers): connects failed as if the sites refused them, and past 1 024 descriptors
//! the HTTP client's thread died. So the daemon raises its soft limit to the hard one at
//! start-up, and sizes the connection cache from what it then has.

/// Descriptors kept for everything but HTTP connections: the database and its journal
/// (per connection), the lock file, the log, the runtime's poller, DNS.
const RESERVED: u64 = 128;
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

/// Raises the soft limit on open descriptors to the hard limit (as Go's runtime does):
/// the soft limit of 1 024 is a default meant for programs that use select(), which
/// crawlq does not. Returns the soft limit in force afterwards.
pub fn raise_limit() -> Option<u64> {
    let (soft, hard) = limits()?;
    if hard <= soft {
        return Some(soft);
    }
    let raised = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::debug!(from = soft, to = hard, "raised the open file limit");
        Some(hard)
    } else {
        Some(soft)
    }
}

/// Idle connections the HTTP client may keep: half of what the descriptor limit leaves
/// after the reserve and `max_in_flight` requests, within 16 and 1 024.
pub fn idle_connections(max_in_flight: usize) -> usize {
    let soft = limits().map_or(1024, |(soft, _)| soft);
    let spare = soft.saturating_sub(RESERVED + max_in_flight as u64) / 2;
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
    open.count() as u64 + RESERVED / 10 >= soft
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
