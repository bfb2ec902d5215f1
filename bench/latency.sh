#!/usr/bin/env bash
# Insert-to-claim latency of an idle daemon, and what idling costs in CPU.
#
# The daemon (`crawlq run`, default poll settings, robots.txt off, the host's rate limit
# raised to 1000/s so that only polling is measured) runs on a fresh database
# against one nginx on 127.0.0.1 serving a tiny page. A separate connection (python3
# sqlite3, timeout=30, autocommit) inserts N jobs one at a time, each with a unique URL,
# 100-300 ms apart at random (fixed seed) so the daemon is idle between them, and notes the
# wall time right after each commit. nginx logs each request's arrival time
# ($msec - $request_time, millisecond resolution) and URI.
#
#   latency = nginx arrival time - insert commit time
#
# That is an upper bound of insert-to-claim latency: it also holds admission, the claim,
# the rate-limit check and the start of the fetch (connect, request sent). Prints median,
# p90, p99 and max in ms (targets: median <= 100 ms, p99 <= 500 ms), and the daemon's CPU
# use, (user + sys) / wall from /usr/bin/time -v over its whole run, plus over a 10 s
# window before the first insert in which it has nothing at all to do (target: near 0,
# i.e. no busy polling).
#
#   bench/latency.sh [N]                    (default 200 inserts; about 1 minute)
#   CRAWLQ_BIN=/path/to/crawlq bench/latency.sh
#
# Needs nginx, python3 and /usr/bin/time (Debian packages nginx-light, python3, time).
# The binary is $CRAWLQ_BIN, default target/release/crawlq (built with cargo if missing).
set -euo pipefail
N=${1:-200}
PORT=${PORT:-18100}
IDLE_SECS=${IDLE_SECS:-10}
cd "$(dirname "$0")/.."
. bench/common.sh
need nginx python3 /usr/bin/time
use_crawlq_bin

make_work_dir
timer=
stop_on_exit="timer"

mkdir "$work/site"
echo '<!doctype html><html><head><title>tiny</title></head><body>tiny</body></html>' >"$work/site/p.html"
{ nginx_conf_head 1024; cat <<NGINX
http {
  log_format arrival '\$msec \$request_time \$status \$request_uri';
  access_log $work/access.log arrival;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$PORT;
    root $work/site;
    location / { try_files /p.html =404; }
  }
}
NGINX
} >"$work/nginx.conf"
start_nginx

db="$work/latency.db"
"$CRAWLQ_BIN" migrate --database "$db" >/dev/null
CRAWLQ__CRAWL__OBEY_ROBOTS=false CRAWLQ__LIMITS__PER_HOST_RPS=1000 CRAWLQ__DAEMON__STATS_INTERVAL_SECS=0 CRAWLQ__LOG__LEVEL=${LOG_LEVEL:-warn} \
  /usr/bin/time -v -o "$work/time.txt" "$CRAWLQ_BIN" run --database "$db" 2>"$work/daemon.log" &
timer=$!
started=$(date +%s.%N)

python3 - "$db" "$PORT" "$N" "$work" "$timer" "$IDLE_SECS" <<'PY'
import os, random, sqlite3, sys, time
db, port, n, work, timer, idle_secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
con = sqlite3.connect(db, timeout=30, isolation_level=None)   # autocommit

# The daemon is the child of /usr/bin/time; wait until it has registered as a worker.
deadline = time.time() + 30
while True:
    row = con.execute("SELECT pid FROM workers WHERE stopped_at IS NULL ORDER BY started_at DESC LIMIT 1").fetchone()
    if row:
        pid = row[0]
        break
    if time.time() > deadline:
        sys.exit("the daemon did not start; see its log")
    time.sleep(0.1)

def cpu_ticks():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime, in clock ticks
hz = os.sysconf("SC_CLK_TCK")
time.sleep(1)   # let start-up finish
t0, c0 = time.time(), cpu_ticks()
time.sleep(idle_secs)
t1, c1 = time.time(), cpu_ticks()
with open(f"{work}/idle.txt", "w") as f:
    f.write(f"{(c1 - c0) / hz} {t1 - t0}\n")

rng = random.Random(20261121)
with open(f"{work}/commits.txt", "w") as out:
    for i in range(n):
        time.sleep(rng.uniform(0.1, 0.3))
        url = f"http://127.0.0.1:{port}/job-{i}"
        con.execute("INSERT INTO jobs (url) VALUES (?)", (url,))
        out.write(f"/job-{i} {time.time():.6f}\n")

# Wait until every job is done (or 30 s).
deadline = time.time() + 30
while con.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0] and time.time() < deadline:
    time.sleep(0.1)
print(f"jobs: {dict(con.execute('SELECT status, COUNT(*) FROM jobs GROUP BY 1').fetchall())}")
PY

# Stop the daemon (the child of /usr/bin/time) and let time write its report.
daemon=$(pgrep -P "$timer")
kill -TERM "$daemon"
wait "$timer" || true
timer=
ended=$(date +%s.%N)

python3 - "$work" "$started" "$ended" <<'PY'
import statistics, sys
work, started, ended = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
commits = dict(line.split() for line in open(f"{work}/commits.txt"))
arrivals = {}
for line in open(f"{work}/access.log"):
    msec, rt, status, uri = line.split()
    arrivals.setdefault(uri, float(msec) - float(rt))   # first arrival of the URI
lat = sorted((arrivals[u] - float(t)) * 1000 for u, t in commits.items() if u in arrivals)
missing = len(commits) - len(lat)
def pct(p):   # nearest-rank percentile
    return lat[min(len(lat) - 1, max(0, -(-p * len(lat) // 100) - 1))]
med = statistics.median(lat)
print(f"inserts: {len(commits)}  fetched: {len(lat)}  never fetched: {missing}")
print(f"insert-to-request latency (ms; upper bound of insert-to-claim, includes the fetch start):")
print(f"  min {lat[0]:.1f}  median {med:.1f}  p90 {pct(90):.1f}  p99 {pct(99):.1f}  max {lat[-1]:.1f}")
t = {}
for line in open(f"{work}/time.txt"):
    k, _, v = line.strip().partition(": ")
    t[k] = v
cpu = float(t["User time (seconds)"]) + float(t["System time (seconds)"])
wall = ended - started
idle_cpu, idle_wall = map(float, open(f"{work}/idle.txt").read().split())
print(f"daemon CPU over its run: {cpu:.2f} s in {wall:.1f} s wall = {100 * cpu / wall:.2f} % of one core"
      f"  (peak RSS {int(t['Maximum resident set size (kbytes)']) / 1024:.1f} MB)")
print(f"daemon CPU while idle ({idle_wall:.1f} s, no jobs): {idle_cpu:.2f} s = {100 * idle_cpu / idle_wall:.2f} % of one core")
ok = med <= 100 and pct(99) <= 500 and missing == 0
print(f"targets (median <= 100 ms, p99 <= 500 ms, every job fetched): {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
