//! The origins the `robots` table may hold a fresh answer for, so that asking about an
//! origin it cannot hold skips the database.
//!
//! Why: every new origin's first job asks the table for its robots.txt before fetching it,
//! and in a crawl of many new sites the answer is always "none": at 10 000 hosts those
//! look-ups were 2.5 % of the daemon's CPU (a round trip through the reader pool and
//! SQLite's threads each, `perf`).
//!
//! Why it is safe on SQLite only: a daemon's store holds the database's lock file, so no
//! other daemon writes the table, and crawlq's commands only delete from it (`crawlq
//! unpause`). The filter is filled from the table when the daemon opens it and with every
//! origin it stores an answer for, before the statement that stores it. A Bloom filter
//! answers "maybe" or "certainly not": "maybe" is a look-up as before, so a full filter
//! (hundreds of thousands of origins) costs only what it saves. A row a user writes by
//! hand while the daemon runs is not read before the daemon fetches that robots.txt again.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// 2^21 bits (256 KB): below one false "maybe" in 100 up to ~200 000 origins.
const WORDS: usize = 1 << 15;
const BITS: u64 = (WORDS as u64) * 64;
/// Bits set per origin.
const PROBES: u64 = 7;

#[derive(Debug)]
pub struct RobotsOrigins {
    key: RandomState,
    bits: Box<[AtomicU64]>,
}

impl Default for RobotsOrigins {
    fn default() -> RobotsOrigins {
        RobotsOrigins {
            key: RandomState::new(),
            bits: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RobotsOrigins {
    /// The filter's bits for `origin`: double hashing over one 64-bit hash.
    fn positions(&self, origin: &str) -> impl Iterator<Item = u64> {
        let hash = self.key.hash_one(origin);
        let (first, step) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..PROBES).map(move |i| (first.wrapping_add(i.wrapping_mul(step))) % BITS)
    }

    /// `origin` may have a row from now on.
    pub fn insert(&self, origin: &str) {
        for bit in self.positions(origin) {
            self.bits[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Release);
        }
    }

    /// Whether the table may hold a row for `origin` (false: it certainly does not).
    pub fn may_hold(&self, origin: &str) -> bool {
        self.positions(origin).all(|bit| {
            self.bits[(bit / 64) as usize].load(Ordering::Acquire) & (1 << (bit % 64)) != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inserted_origin_is_always_a_maybe_and_few_others_are() {
        let origins = RobotsOrigins::default();
        let stored: Vec<String> = (0..50_000)
            .map(|i| format!("http://127.{i}.0.1:80"))
            .collect();
        for origin in &stored {
            origins.insert(origin);
        }
        assert!(stored.iter().all(|origin| origins.may_hold(origin)));
        let false_maybes = (0..50_000)
            .filter(|i| origins.may_hold(&format!("https://host-{i}.example")))
            .count();
        // About one in 500 000 expected at 50 000 origins in 2^21 bits.
        assert!(false_maybes < 100, "{false_maybes} false maybes in 50 000");
    }
}
