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

# $work: a fresh temporary directory. On exit, the processes whose pids are in the variables
# named in $stop_on_exit (those still set) and the nginx whose pid file is in $work are
# stopped, and $work is removed (KEEP=1 keeps it, for a look afterwards).
make_work_dir() {
  work=$(mktemp -d)
  trap clean_work_dir EXIT
}

clean_work_dir() {
  local name
  for name in ${stop_on_exit:-}; do
    if [ -n "${!name:-}" ]; then kill "${!name}" 2>/dev/null || true; fi
  done
  kill "$(cat "$work/nginx.pid" 2>/dev/null)" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}

# The first lines of an nginx.conf: one worker, its pid file and error log in $work, and at
# most $1 connections. The caller writes the http block after it.
nginx_conf_head() {
  printf 'worker_processes 1;\npid %s/nginx.pid;\nerror_log %s/nginx-error.log;\nevents { worker_connections %s; }\n' \
    "$work" "$work" "$1"
}

# Starts nginx on $work/nginx.conf. Its worker runs as another user (www-data), so the
# files it serves from $work (and $work itself) must be readable by everyone.
start_nginx() {
  chmod -R a+rX "$work"
  nginx -c "$work/nginx.conf"
}
