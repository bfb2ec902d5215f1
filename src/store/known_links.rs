//! The links this daemon has seen queued: a bounded memory of (crawl, canonical URL) pairs
//! it inserted into `jobs` and saw committed, so that a link to one of them is dropped
//! before it reaches the database.
//!
//! Why: on a site crawl most links point at pages the crawl already has (every page links
//! its nav, its neighbours, the index); the unique (root id, canonical URL) index answers
//! each of them with an index probe inside the finish transaction. On the 20 000-page
//! benchmark that is ~640 probes per batch of 32 pages, nineteen of twenty for a URL this
//! daemon queued itself, and on PostgreSQL the biggest statement of a batch.
//!
//! What it is not: the source of truth. The unique index still decides; this only skips
//! asking about pairs known to exist. A pair is remembered only after the transaction that
//! inserted it committed, and forgetting one (the memory is bounded) only means asking
//! again. Pairs other daemons (or an earlier run) inserted are never remembered, so they
//! are asked about each time, as before. A new job whose id is a crawl root the memory
//! knows (SQLite gives a deleted newest row's id again; a user may write ids by hand)
//! empties the memory before its crawl can queue anything. The one difference a user can
//! see: a job of a running crawl that the user deletes (or whose URL they edit) is not
//! queued again by a later link while this daemon runs.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

/// Pairs kept per generation; two generations are kept, so at most twice this many
/// (16 bytes each plus the table's slack: ~5 MB in all), and a crawl's most linked pages
/// stay in the newer one.
const GENERATION: usize = 1 << 16;

/// A bounded set of (crawl root id, canonical URL) pairs known to be in `jobs`, kept as
/// 128-bit fingerprints (a false "known" would drop a new link: at 2^18 pairs, about one
/// chance in 10^33 per link).
#[derive(Debug, Default)]
pub struct KnownLinks {
    keys: (RandomState, RandomState),
    sets: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashSet<u128, BuildHasherDefault<Prehashed>>,
    older: HashSet<u128, BuildHasherDefault<Prehashed>>,
    /// The crawl roots pairs were remembered for.
    roots: HashSet<i64>,
}

/// A fingerprint of one pair, with its crawl root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey {
    fingerprint: u128,
    root: i64,
}

impl KnownLinks {
    pub fn key(&self, root_id: i64, canonical_url: &str) -> LinkKey {
        let high = self.keys.0.hash_one((root_id, canonical_url));
        let low = self.keys.1.hash_one((root_id, canonical_url));
        LinkKey {
            fingerprint: u128::from(high) << 64 | u128::from(low),
            root: root_id,
        }
    }

    /// Whether the pair is known to be in `jobs`. A pair found in the older generation
    /// moves to the newer, so pairs still being linked to are kept.
    pub fn contains(&self, root_id: i64, canonical_url: &str) -> bool {
        let key = self.key(root_id, canonical_url).fingerprint;
        let mut sets = self.sets.lock().expect("known links lock");
        if sets.newer.contains(&key) {
            return true;
        }
        if sets.older.remove(&key) {
            sets.insert(key);
            return true;
        }
        false
    }

    /// Remembers pairs whose insert has committed.
    pub fn remember(&self, keys: impl IntoIterator<Item = LinkKey>) {
        let mut sets = self.sets.lock().expect("known links lock");
        for key in keys {
            sets.insert(key.fingerprint);
            sets.roots.insert(key.root);
        }
        if sets.roots.len() > GENERATION {
            *sets = Generations::default();
        }
    }

    /// New jobs were found with these ids: if one is a crawl root the memory knows, the
    /// id was used again for another job (its old crawl's rows are gone or going), and
    /// nothing remembered can be trusted for it: the memory is emptied.
    pub fn forget_if_reused(&self, new_ids: impl IntoIterator<Item = i64>) {
        let mut sets = self.sets.lock().expect("known links lock");
        if new_ids.into_iter().any(|id| sets.roots.contains(&id)) {
            *sets = Generations::default();
        }
    }
}

impl Generations {
    fn insert(&mut self, key: u128) {
        if self.newer.len() >= GENERATION {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key);
    }
}

/// The set's own hasher: a fingerprint is already a good hash, so its low bits are used
/// as they are instead of hashing it a third time.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys go in; this is the fallback the trait requires.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_pair_is_known_and_others_are_not() {
        let known = KnownLinks::default();
        known.remember([known.key(1, "http://a.test/x")]);
        assert!(known.contains(1, "http://a.test/x"));
        assert!(!known.contains(2, "http://a.test/x"), "another crawl");
        assert!(!known.contains(1, "http://a.test/y"), "another URL");
    }

    #[test]
    fn a_root_id_used_again_empties_the_memory() {
        let known = KnownLinks::default();
        known.remember([known.key(1, "http://a.test/x")]);
        known.forget_if_reused([2, 3]);
        assert!(
            known.contains(1, "http://a.test/x"),
            "other ids change nothing"
        );
        known.forget_if_reused([1]);
        assert!(!known.contains(1, "http://a.test/x"));
    }

    #[test]
    fn memory_is_bounded_and_pairs_still_linked_to_are_kept() {
        let known = KnownLinks::default();
        let url = |n: usize| format!("http://a.test/{n}");
        known.remember([known.key(1, "kept")]);
        for n in 0..GENERATION * 3 {
            known.remember([known.key(1, &url(n))]);
            if n % 1000 == 0 {
                // Still linked to now and then: moves into the newer generation.
                assert!(known.contains(1, "kept"), "after {n} pairs");
            }
        }
        let sets = known.sets.lock().unwrap();
        assert!(sets.newer.len() <= GENERATION && sets.older.len() <= GENERATION);
        drop(sets);
        assert!(known.contains(1, "kept"));
        assert!(
            !known.contains(1, &url(0)),
            "the first pairs were forgotten"
        );
        assert!(
            known.contains(1, &url(GENERATION * 3 - 1)),
            "the last is known"
        );
    }
}
