#!/usr/bin/env bash
# Rate-limit fidelity: does crawlq keep every host within its quota, use the quota it has,
# honour Retry-After and Crawl-delay, and let a host with a huge backlog not slow the others?
#
# One nginx listens on 50 addresses, 127.0.0.2 ... 127.0.0.51 (one port), and logs every
# request: $msec (log time = response sent), $request_time, $server_addr, $host, $status,
# $request_uri. A request's arrival time is $msec - $request_time. nginx gives 1 ms
# resolution (not microseconds): far below the smallest window here (50 ms at 20 req/s);
# checks that compare times allow that 1 ms, and say so. nginx also stamps a request when
# its event loop gets to it, which on a busy 2-core machine can be tens of ms after the
# request came in; so when run as root the script also captures the request lines on the
# loopback interface (python3 AF_PACKET socket, kernel timestamps in microseconds) and
# checks the windows on those "wire" times as well; pass/fail then uses the wire times, and
# counts a gap as a window over quota when it is more than 1 ms short of 1/Q.
#
# Quotas come from a --config TOML, [limits.hosts."127.0.0.N"] rps = Q, burst = 1 (burst 1
# is the default and the strictest case: every request must be 1/Q s after the previous).
#   127.0.0.2        slow host: 1 req/s, SLOW_JOBS jobs (10 000); never finishes in the run
#   127.0.0.3        answers 429 with `Retry-After: 3` to every page for the first 10 s
#                    after the daemon starts, then 200; 5 req/s. nginx returns the 429 while
#                    a flag file exists (`if (-f flag)`, checked per request; nginx's
#                    open_file_cache is off), and this script deletes the file 10 s after it
#                    starts the daemon. robots.txt is always 200 there (a 429 for robots.txt
#                    would pause the host for crawl.robots_unreachable_wait_secs instead).
#   127.0.0.4        robots.txt says `Crawl-delay: 1`; quota 2 req/s, so the Crawl-delay is
#                    what binds (effective quota 1 req/s)
#   the other 47     1, 2, 5, 20 req/s in turn
# Every host but the slow one holds JOBS jobs (200). robots.txt is on (crawl.obey_robots)
# for all hosts; each serves `User-agent: * / Allow: /` but for the Crawl-delay one.
# limits.max_in_flight = 400 and limits.per_host_in_flight = 4, so that in-flight caps are
# never the bottleneck (50 hosts x 4 slots, jobs waiting for their quota hold a slot).
# retry.max_attempts = 10, so that the 429 host's jobs are not failed by the 429 phase.
# The run ends when no job of the 49 small hosts is queued or running (SIGTERM then).
#
# Per host, from nginx's log (every request counts: robots.txt, 429s):
#   (a) max_win: the most requests with arrival times in [t, t + 1/Q) over every request
#       arrival t; must not exceed the burst (1). min_gap: the smallest gap between
#       consecutive arrivals, in units of 1/Q. With 1 ms timestamps a gap of exactly 1/Q
#       can show as 1/Q - 1 ms, so pass/fail counts only windows that hold 2 requests
#       beyond that (gap < 1/Q - 1 ms); the count taking the times as exact is printed too.
#   (b) use: requests / (Q x (last arrival - first arrival) + 1): the share of what the
#       quota allows in the span the host was being crawled (Q x span intervals, plus the
#       first request). For the 429 host the span starts at its last 429's pause end; for
#       the Crawl-delay host Q = 1/Crawl-delay. Target >= 95 %.
#   (c) 429 host: every request that arrived after a 429 was sent and < 3 s after it.
#   (d) Crawl-delay host: every gap from a request's end to the next one's arrival < 1 s.
#   (e) small hosts: took = last arrival - first arrival (robots.txt first), ideal = JOBS/Q
#       (robots.txt + JOBS pages, 1/Q apart); 429 host: ideal = (last 429 + 3 s - first
#       arrival) + (requests after it - 1)/Q. Worst took/ideal; target <= 1.1.
#
#   bench/politeness.sh                    (about 4 minutes: the 1 req/s hosts take 200 s)
#   JOBS=100 SLOW_JOBS=10000 CRAWLQ_BIN=/path/to/crawlq bench/politeness.sh
#
# Needs nginx, python3 and /usr/bin/time (Debian packages nginx-light, python3, time).
# The binary is $CRAWLQ_BIN, default target/release/crawlq (built with cargo if missing).
set -euo pipefail
JOBS=${JOBS:-200}
SLOW_JOBS=${SLOW_JOBS:-10000}
PORT=${PORT:-18110}
cd "$(dirname "$0")/.."
. bench/common.sh
need nginx python3 /usr/bin/time
use_crawlq_bin

make_work_dir
timer=
sniffer=
stop_on_exit="timer sniffer"

# Hosts, quotas and roles: one line per host, "address quota role", also used by the analysis.
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
cycle = [1, 2, 5, 20]
with open(f"{work}/hosts.txt", "w") as f, open(f"{work}/crawlq.toml", "w") as toml:
    toml.write("[crawl]\nobey_robots = true\n\n[retry]\nmax_attempts = 10\n\n"
               "[daemon]\nstats_interval_secs = 30\n\n"
               "[limits]\nmax_in_flight = 400\nper_host_in_flight = 4\n\n")
    k = 0
    for n in range(2, 52):
        if n == 2:
            q, role = 1, "slow"
        elif n == 3:
            q, role = 5, "429"
        elif n == 4:
            q, role = 2, "crawl-delay"
        else:
            q, role = cycle[k % 4], "small"
            k += 1
        f.write(f"127.0.0.{n} {q} {role}\n")
        toml.write(f'[limits.hosts."127.0.0.{n}"]\nrps = {q}.0\nburst = 1\n\n')
PY

mkdir "$work/site"
echo '<!doctype html><html><head><title>tiny</title></head><body>tiny</body></html>' >"$work/site/p.html"
printf 'User-agent: *\nAllow: /\n' >"$work/site/robots.txt"
printf 'User-agent: *\nCrawl-delay: 1\nAllow: /\n' >"$work/site/robots-delay.txt"
touch "$work/site/429.flag"
listens=$(awk -v p="$PORT" '$3 == "slow" || $3 == "small" {printf "    listen %s:%s;\n", $1, p}' "$work/hosts.txt")
{ nginx_conf_head 4096; cat <<NGINX
http {
  log_format polite '\$msec \$request_time \$server_addr \$host \$status \$request_uri';
  access_log $work/access.log polite;
  keepalive_requests 100000;
  keepalive_timeout 300s;
  server {
$listens
    root $work/site;
    location = /robots.txt { }
    location / { try_files /p.html =404; }
  }
  server {
    listen 127.0.0.3:$PORT;
    root $work/site;
    location = /robots.txt { }
    location / {
      if (-f $work/site/429.flag) {
        add_header Retry-After 3 always;
        return 429;
      }
      try_files /p.html =404;
    }
  }
  server {
    listen 127.0.0.4:$PORT;
    root $work/site;
    location = /robots.txt { try_files /robots-delay.txt =404; }
    location / { try_files /p.html =404; }
  }
}
NGINX
} >"$work/nginx.conf"
start_nginx

db="$work/politeness.db"
"$CRAWLQ_BIN" migrate --database "$db" >/dev/null
python3 - "$db" "$work" "$PORT" "$JOBS" "$SLOW_JOBS" <<'PY'
import sqlite3, sys
db, work, port, jobs, slow_jobs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
con = sqlite3.connect(db, timeout=30)
hosts = [line.split() for line in open(f"{work}/hosts.txt")]
rows = []
for addr, q, role in hosts:
    rows += [(f"http://{addr}:{port}/{role}/{i}",) for i in range(slow_jobs if role == "slow" else jobs)]
# Interleave the hosts, so that insertion order does not favour any of them.
rows.sort(key=lambda r: int(r[0].rsplit("/", 1)[1]))
with con:
    con.executemany("INSERT INTO jobs (url) VALUES (?)", rows)
print(f"inserted {len(rows)} jobs on {len(hosts)} hosts")
PY

# Wire times: every HTTP request line sent to $PORT on lo, with the kernel's timestamp.
if [ "$(id -u)" = 0 ]; then
  python3 bench/wire.py "$PORT" "$work/wire.txt" &
  sniffer=$!
  sleep 0.5
fi

SECONDS=0
CRAWLQ__LOG__LEVEL=${LOG_LEVEL:-info} \
  /usr/bin/time -v -o "$work/time.txt" "$CRAWLQ_BIN" run --config "$work/crawlq.toml" --database "$db" 2>"$work/daemon.log" &
timer=$!
started=$(date +%s.%N)

# Delete the 429 flag 10 s after start; wait until the 49 small hosts have nothing left.
python3 - "$db" "$work" "$PORT" "$started" <<'PY'
import os, sqlite3, sys, time
db, work, port, started = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
con = sqlite3.connect(db, timeout=30, isolation_level=None)
flag = f"{work}/site/429.flag"
last_report = time.time()
while True:
    now = time.time()
    if os.path.exists(flag) and now >= started + 10:
        os.remove(flag)
        open(f"{work}/flag-removed.txt", "w").write(f"{time.time():.6f}\n")
    left = con.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') "
                       "AND url NOT LIKE ?", (f"http://127.0.0.2:{port}/%",)).fetchone()[0]
    if left == 0 and not os.path.exists(flag):
        break
    if now - last_report >= 30:
        print(f"  {now - started:5.0f} s: {left} jobs of the small hosts left", flush=True)
        last_report = now
    if now - started > 900:
        sys.exit("gave up after 900 s")
    time.sleep(0.5)
PY
stopped=$(date +%s.%N)
daemon=$(pgrep -P "$timer")
kill -TERM "$daemon"
wait "$timer" || echo "daemon exited with $?"
timer=
crawl_secs=$SECONDS
if [ -n "$sniffer" ]; then kill "$sniffer"; wait "$sniffer" 2>/dev/null || true; sniffer=; fi

sqlite3 -cmd ".timeout 30000" "$db" "SELECT 'jobs: ' || group_concat(s, ', ') FROM (SELECT k || ' ' || COUNT(*) AS s FROM (SELECT CASE WHEN url LIKE 'http://127.0.0.2:%' THEN 'slow ' ELSE 'small ' END || status AS k FROM jobs) GROUP BY k ORDER BY k)"
python3 - "$work" "$started" "$stopped" "$JOBS" "$crawl_secs" <<'PY'
import sys
from collections import defaultdict
work, started, stopped, jobs, crawl_secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
RES = 0.001   # nginx's time resolution
flag_removed = float(open(f"{work}/flag-removed.txt").read())
hosts = [(a, float(q), role) for a, q, role in (l.split() for l in open(f"{work}/hosts.txt"))]
import os
wire = defaultdict(list)   # addr -> [(time the request line was on lo, uri)], when captured
if os.path.exists(f"{work}/wire.txt"):
    for line in open(f"{work}/wire.txt"):
        t, addr, uri = line.split()
        wire[addr].append((float(t), uri))
reqs = defaultdict(list)   # addr -> [(arrival, end, status, uri)]
for line in open(f"{work}/access.log"):
    msec, rt, addr, host, status, uri = line.split()
    end = float(msec)
    reqs[addr].append((end - float(rt), end, int(status), uri))

rows, problems, win_problems = [], [], []
worst_ratio, worst_ratio_host, worst_use, worst_win = 0, None, 1e9, 0
windows_over = windows_over_tol = 0
wire_over = wire_over_robots = 0
wire_deficits = []   # ms short of 1/Q, every gap under 1/Q
wire_worst = (0, None, None)
first_delay = []
for addr, q, role in hosts:
    r = sorted(reqs[addr])
    arr = [x[0] for x in r]
    n = len(r)
    if n == 0:
        problems.append(f"{addr}: no request at all")
        continue
    first_delay.append(arr[0] - started)
    # (a) the most arrivals in [t, t + 1/Q), and how many windows exceed the burst.
    w = 1 / q
    max_win, over, over_tol = 0, 0, 0
    j = 0
    for i, t in enumerate(arr):
        j = max(j, i)
        while j + 1 < n and arr[j + 1] < t + w:
            j += 1
        k = j - i + 1
        max_win = max(max_win, k)
        if k > 1:
            over += 1
            if arr[i + 1] < t + w - RES:   # still inside the window if the times are 1 ms off
                over_tol += 1
    gaps = [b - a for a, b in zip(arr, arr[1:])]
    min_gap = min(gaps) * q if gaps else float("nan")
    windows_over += over
    windows_over_tol += over_tol
    worst_win = max(worst_win, max_win)
    if over_tol:
        bad = [f"{arr[i] - started:.3f}s +{1000 * (arr[i + 1] - arr[i]):.0f}ms" for i in range(n - 1)
               if arr[i + 1] - arr[i] < w - RES][:4]
        win_problems.append(f"{addr} ({q:g}/s): {over_tol} windows of {1000 * w:.0f} ms hold 2 requests beyond the 1 ms "
                        f"resolution (arrival after start, gap to the next): {', '.join(bad)}")
    # (a) again on the wire times (microseconds): gaps under 1/Q between consecutive requests.
    wr = sorted(wire[addr])
    w_over = 0
    for (x, u1), (y, u2) in zip(wr, wr[1:]):
        if y - x < w:
            wire_deficits.append(1000 * (w - (y - x)))
        if y - x < w - RES:   # more than 1 ms (2 % of the smallest window) short
            w_over += 1
            wire_over_robots += u1 == "/robots.txt"
            if w - (y - x) > wire_worst[0]:
                wire_worst = (w - (y - x), addr, f"{x - started:.3f}s {u1} -> {u2} +{1000 * (y - x):.1f}ms")
    wire_over += w_over
    # (b) quota use, (c) Retry-After, (d) Crawl-delay, (e) duration vs ideal.
    q_eff, span_from = q, arr[0]
    note = ""
    if role == "crawl-delay":
        q_eff = 1.0
        short = [(round(a[1], 3), round(b[0] - a[1], 4), b[3]) for a, b in zip(r, r[1:]) if b[0] - a[1] < 1 - RES]
        note = f"delay gaps<1s: {len(short)}, min {min(b[0] - a[1] for a, b in zip(r, r[1:])):.3f}s"
        if short:
            problems.append(f"{addr} Crawl-delay 1: {len(short)} gaps (end -> next arrival) under 1 s; "
                            f"first few (end, gap s, next uri): {short[:5]}")
    ideal = jobs / q_eff
    if role == "429":
        t429 = [x[1] for x in r if x[2] == 429]
        early = []
        for t in t429:
            early += [(round(t, 3), round(a - t, 3)) for a in arr if t < a < t + 3 - RES]
        last429 = max(t429) if t429 else arr[0]
        after = [a for a in arr if a > last429]
        span_from = after[0] if after else arr[-1]
        ideal = (last429 + 3 - arr[0]) + (len(after) - 1) / q
        note = (f"429s: {len(t429)}, inside Retry-After: {len(early)}; "
                f"first 200 {span_from - flag_removed:+.2f}s after the 429 phase ended")
        if early:
            problems.append(f"{addr}: {len(early)} requests inside a Retry-After pause (429 sent at, s later): {early[:5]}")
        n_use = len(after)
    else:
        n_use = n
    use = n_use / (q_eff * (arr[-1] - span_from) + 1)
    took = arr[-1] - arr[0]
    statuses = defaultdict(int)
    for x in r:
        statuses[x[2]] += 1
    ratio = took / ideal if role != "slow" else float("nan")
    if role != "slow" and ratio > worst_ratio:
        worst_ratio, worst_ratio_host = ratio, addr
    worst_use = min(worst_use, use)
    rows.append((addr, role, q, n, dict(statuses), max_win, min_gap, use, took, ideal, ratio,
                 (f"wire gaps<1/Q: {w_over}; " if wr else "") + note))

print(f"\n{'host':<11} {'role':<11} {'Q/s':>4} {'reqs':>5} {'max_win':>7} {'min_gap':>7} {'use':>6} "
      f"{'took s':>7} {'ideal s':>7} {'ratio':>5}  notes")
for addr, role, q, n, st, mw, mg, use, took, ideal, ratio, note in rows:
    other = {k: v for k, v in st.items() if k != 200}
    extra = (f"statuses {other}; " if other else "") + note
    print(f"{addr:<11} {role:<11} {q:>4g} {n:>5} {mw:>7} {mg:>6.3f}Q {100 * use:>5.1f}% "
          f"{took:>7.1f} {ideal if role != 'slow' else float('nan'):>7.1f} {ratio:>5.3f}  {extra}")

print("\ncolumns: max_win = most requests arriving in any [t, t+1/Q); min_gap = smallest gap between "
      "consecutive arrivals x Q (1.000Q = exactly 1/Q);\n  use = requests / (Q x (last - first arrival) + 1) "
      "(429 host: from its first request after the last 429; Crawl-delay host: Q = 1/s);\n  took = last - first "
      "arrival (robots.txt is the first), ideal = JOBS/Q (429 host: last 429 + 3 s - first, + the rest at Q)")
for p in problems + (win_problems if not wire else []):
    print("  problem:", p)

small_ok = worst_ratio <= 1.1
print(f"\nsummary ({crawl_secs} s from daemon start to the end of the run; nginx saw {sum(len(v) for v in reqs.values())} requests)")
print(f"  first request to a host: {min(first_delay):.2f} s to {max(first_delay):.2f} s after the daemon was started")
have_wire = bool(wire)
print(f"  windows of 1/Q holding more than the burst, nginx times: {windows_over_tol} beyond the 1 ms resolution "
      f"(gap < 1/Q - 1 ms), {windows_over} taking the times as exact"
      + ("" if have_wire else f"   (target 0)   {'PASS' if windows_over_tol == 0 else 'FAIL'}"))
if have_wire:
    d = wire_deficits
    print(f"  gaps under 1/Q, wire times (us): {len(d)} in all; {sum(x > 0.1 for x in d)} over 0.1 ms short, "
          f"{sum(x > 5 for x in d)} over 5 ms short")
    print(f"  windows of 1/Q holding more than the burst, wire times, gap > 1 ms short of 1/Q: {wire_over}, of which "
          f"{wire_over_robots} robots.txt -> next request   (target 0)   {'PASS' if wire_over == 0 else 'FAIL'}")
    if wire_over:
        print(f"    worst: {wire_worst[1]} {wire_worst[2]} ({1000 * wire_worst[0]:.1f} ms short of 1/Q)")
    over_count = wire_over
else:
    over_count = windows_over_tol
print(f"  lowest quota use: {100 * worst_use:.1f} %   (target >= 95 %)   {'PASS' if worst_use >= 0.95 else 'FAIL'}")
print(f"  worst small host took/ideal: {worst_ratio:.3f} ({worst_ratio_host})   (target <= 1.1)   "
      f"{'PASS' if small_ok else 'FAIL'}")
retry_bad = [p for p in problems if "Retry-After" in p]
delay_bad = [p for p in problems if "Crawl-delay" in p]
print(f"  requests inside a Retry-After pause: {'none   PASS' if not retry_bad else 'some   FAIL'}")
print(f"  Crawl-delay gaps under 1 s: {'none   PASS' if not delay_bad else 'some   FAIL'}")
ok = over_count == 0 and worst_use >= 0.95 and small_ok and not retry_bad and not delay_bad
sys.exit(0 if ok else 1)
PY
