#!/usr/bin/env bash
# The long variants of the crash and contention tests, run by hand and reported (CI runs
# the short ones in `cargo test`). Usage: bash scripts/soak.sh
#   CRASH_PAGES (20000), CRASH_KILLS (100), CRASH_SEED, CONTENTION_INSERTS (10000),
#   PROPTEST_CASES (200000)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }

export CRASH_PAGES=${CRASH_PAGES:-20000} CRASH_KILLS=${CRASH_KILLS:-100}
export CONTENTION_INSERTS=${CONTENTION_INSERTS:-10000}
echo "== kill -9 x $CRASH_KILLS during a crawl of $CRASH_PAGES pages, and SIGTERM at full speed"
cargo test --release --test it crash:: -- --nocapture --test-threads 1 2>&1 | grep -E "kills|SIGTERM|test result|panicked"
echo "== $CONTENTION_INSERTS sqlite3 inserts and SELECT loops beside a full-speed crawl"
cargo test --release --test it contention:: -- --nocapture 2>&1 | grep -E "busy|test result|panicked"
export PROPTEST_CASES=${PROPTEST_CASES:-200000}
echo "== property tests, $PROPTEST_CASES cases each (URL admission and canonical form, parsing, log scrubbing)"
cargo test --release --test it properties:: 2>&1 | grep -E "test result|panicked|minimal failing"
