# Sourced by the benchmarks (from the repository root): what every one of them needs first.

# Fails with what to install unless every tool named is on the PATH.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      echo "needs $tool (Debian packages: nginx-light wrk sqlite3 python3 time)"
      exit 1
    }
  done
}

# The binary under test, exported as CRAWLQ_BIN: as given, or the release build (built if
# it is missing).
use_crawlq_bin() {
  if [ -z "${CRAWLQ_BIN:-}" ]; then
    CRAWLQ_BIN=target/release/crawlq
    [ -x "$CRAWLQ_BIN" ] || cargo build --release --quiet
  fi
  [ -x "$CRAWLQ_BIN" ] || { echo "CRAWLQ_BIN=$CRAWLQ_BIN is not an executable"; exit 1; }
  export CRAWLQ_BIN
}
