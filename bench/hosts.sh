#!/usr/bin/env bash
# Many polite hosts with the settings a user starts with: does crawlq use the rate the
# quotas allow, at the CPU cost of a one-host crawl, without going over any quota?
#
#   bench/hosts.sh                         1 000 hosts x 20 pages, then 10 000 hosts x 5 pages
#   SIZES="1000x20" bench/hosts.sh         one size only
#   NOFILE=1024 NOFILE_HARD=               the daemon's descriptor limits: soft 1024 (the
#                                          soft limit Docker gives a container), hard as the
#                                          shell has it unless NOFILE_HARD is set
#   CRAWLQ_BIN=path                        the binary to measure
#   ROUNDS=5 bench/hosts.sh                each size 5 times over (one-host crawl, then the
#                                          many-host crawl, each round), then the median of
#                                          the rounds' ratios: on a noisy machine one round's
#                                          CPU ratio ranges over +-15 %
#
# For each size HxP (H hosts, P pages each, H x P jobs):
# 1. The one-host crawl of the same H x P pages, in the same sitting: every job on
#    127.0.0.1 with that host's limits raised (rps 1 000 000, burst 1 000, 64 in flight),
#    robots.txt on. Its pages/s and CPU per page are what the many-host crawl is held to.
# 2. The many-host crawl: one nginx listening on H loopback addresses 127.20.x.y, every job
#    inserted before the daemon starts (hosts interleaved), DEFAULT settings (2 req/s and 2
#    in flight per host, 64 in flight in all, robots.txt obeyed), `run --exit-when-idle`
#    under /usr/bin/time -v and `ulimit -Sn $NOFILE` (and `-Hn $NOFILE_HARD` if set).
# Both crawls' pages are the same small static page (a title, a description, 10 links that
# are not followed) and robots.txt is `User-agent: * / Allow: /`.
#
# Reports for the many-host crawl:
# - wall time (daemon start to exit) against the quota-bound ideal: every host's robots.txt
#   and P pages spaced 1/2 s apart, (P + 1) x 0.5 s; share = ideal / wall (target >= 90 %
#   at 1 000 hosts);
# - pages/s against the one-host crawl's (target >= 75 % at 10 000 hosts, where the CPU
#   binds before the quotas do);
# - CPU per page against the one-host crawl's (target <= 1.3x);
# - peak RSS (target <= 60 MB at 10 000 hosts) and the most descriptors the daemon held
#   (sampled from /proc every 100 ms);
# - jobs not `done` (target: none failed), with their reasons;
# - connections opened (nginx's first request on a connection) for the requests answered;
# - windows over quota at the wire (as root: request lines read off the loopback interface
#   with kernel timestamps, bench/wire.py; otherwise nginx's arrival times, 1 ms
#   resolution): consecutive requests to one address less than 1/2 s - 1 ms apart
#   (target 0).
#
# Needs nginx, sqlite3, python3 and /usr/bin/time (Debian: nginx-light sqlite3 time).
set -euo pipefail
SIZES=${SIZES:-"1000x20 10000x5"}
ROUNDS=${ROUNDS:-1}
PORT=${PORT:-18120}
NOFILE=${NOFILE:-1024}
NOFILE_HARD=${NOFILE_HARD:-}
cd "$(dirname "$0")/.."
. bench/common.sh
need nginx sqlite3 python3 /usr/bin/time
use_crawlq_bin

make_work_dir
sniffer=
sampler=
stop_on_exit="sniffer sampler"

mkdir "$work/site"
python3 - "$work/site/p.html" <<'PY'
import sys
links = "".join(f'<li><a href="/other/{i}">other page {i}</a></li>' for i in range(10))
text = " ".join(["a small page of a polite host, the kind a crawl of many sites meets"] * 12)
open(sys.argv[1], "w").write(
    f'<!doctype html><html><head><meta charset="utf-8"><title>A page</title>'
    f'<meta name="description" content="one of many small hosts"></head>'
    f'<body><h1>A page</h1><p>{text}</p><ul>{links}</ul></body></html>\n')
PY
printf 'User-agent: *\nAllow: /\n' >"$work/site/robots.txt"

# Address of host i (0-based): 127.20.0.1 ... 127.20.0.250, 127.20.1.1, ...
address() { echo "127.$((20 + $1 / 62500)).$((($1 / 250) % 250)).$(($1 % 250 + 1))"; }

largest=0
for size in $SIZES; do
  hosts=${size%x*}
  [ "$hosts" -gt "$largest" ] && largest=$hosts
done
for ((i = 0; i < largest; i++)); do address "$i"; done >"$work/addresses.txt"

{ nginx_conf_head 65536; cat <<NGINX
worker_rlimit_nofile 20000;
http {
  log_format polite '\$msec \$request_time \$server_addr \$status \$request_uri \$connection_requests';
  access_log $work/access.log polite buffer=256k;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$PORT;
$(awk -v p="$PORT" '{printf "    listen %s:%s;\n", $1, p}' "$work/addresses.txt")
    root $work/site;
    location = /robots.txt { }
    location / { try_files /p.html =404; }
  }
}
NGINX
} >"$work/nginx.conf"
ulimit -n "$(ulimit -Hn)"
start_nginx

if [ "$(id -u)" = 0 ]; then
  python3 bench/wire.py "$PORT" "$work/wire.txt" &
  sniffer=$!
  sleep 0.5
fi

printf '[limits.hosts."127.0.0.1"]\nrps = 1000000.0\nburst = 1000\nin_flight = 64\n' >"$work/one-host.toml"

# crawl NAME HOSTS PAGES [RUN OPTION...]: inserts the jobs, runs the daemon until the queue
# is empty, and leaves $work/NAME.{db,time,fds,start,end,log}.
crawl() {
  local name=$1 hosts=$2 pages=$3
  shift 3
  local db="$work/$name.db"
  "$CRAWLQ_BIN" migrate --database "$db" >/dev/null
  python3 - "$db" "$work/addresses.txt" "$PORT" "$hosts" "$pages" "$name" <<'PY'
import sqlite3, sys
db, addresses, port, hosts, pages, name = sys.argv[1:7]
hosts, pages = int(hosts), int(pages)
addrs = [a.strip() for a in open(addresses)][:hosts]
if name.startswith("one-host"):
    addrs = ["127.0.0.1"] * hosts
# Hosts interleaved: page p of every host, then page p + 1.
rows = [(f"http://{addrs[h]}:{port}/{h}/{p}",) for p in range(pages) for h in range(hosts)]
con = sqlite3.connect(db, timeout=30)
with con:
    con.executemany("INSERT INTO jobs (url) VALUES (?)", rows)
PY
  date +%s.%N >"$work/$name.start"
  (
    if [ -n "$NOFILE_HARD" ]; then ulimit -Hn "$NOFILE_HARD"; fi
    ulimit -Sn "$NOFILE"
    exec env CRAWLQ__DAEMON__STATS_INTERVAL_SECS=0 CRAWLQ__LOG__LEVEL="${LOG_LEVEL:-warn}" \
      /usr/bin/time -v -o "$work/$name.time" "$CRAWLQ_BIN" run --database "$db" --exit-when-idle "$@"
  ) 2>"$work/$name.log" &
  local timer=$!
  (
    most=0
    while sleep 0.1; do
      pid=$(pgrep -P "$timer" || true)
      [ -n "$pid" ] || continue
      n=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
      [ "$n" -gt "$most" ] && most=$n && echo "$most" >"$work/$name.fds"
    done
  ) &
  sampler=$!
  wait "$timer" || echo "$name: the daemon exited with $?"
  date +%s.%N >"$work/$name.end"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  sampler=
}

status=0
for size in $SIZES; do
  hosts=${size%x*}
  pages=${size#*x}
  for ((round = 1; round <= ROUNDS; round++)); do
    label=
    [ "$ROUNDS" -gt 1 ] && label=", round $round of $ROUNDS"
    echo "== $hosts hosts x $pages pages ($((hosts * pages)) jobs), daemon under ulimit -Sn $NOFILE${NOFILE_HARD:+ -Hn $NOFILE_HARD}$label"
    rm -f "$work"/*-"$size".db* "$work"/*-"$size".fds
    crawl "one-host-$size" "$hosts" "$pages" --config "$work/one-host.toml"
    wire_from=$(wc -l <"$work/wire.txt" 2>/dev/null || echo 0)
    log_from=$(wc -l <"$work/access.log" 2>/dev/null || echo 0)
    crawl "hosts-$size" "$hosts" "$pages"
    kill -USR1 "$(cat "$work/nginx.pid")" 2>/dev/null || true # reopen (flush) the access log
    sleep 1
    python3 - "$work" "$size" "$wire_from" "$log_from" <<'PY' || status=1
import os, sqlite3, sys
from collections import defaultdict
work, size, wire_from, log_from = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hosts, pages = map(int, size.split("x"))
Q = 2.0          # the default per-host rate
RES = 0.001

def run(name):
    t = dict(l.strip().rsplit(": ", 1) for l in open(f"{work}/{name}.time") if ": " in l)
    cpu = float(t["User time (seconds)"]) + float(t["System time (seconds)"])
    rss = int(t["Maximum resident set size (kbytes)"]) / 1024
    wall = float(open(f"{work}/{name}.end").read()) - float(open(f"{work}/{name}.start").read())
    db = sqlite3.connect(f"{work}/{name}.db")
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY 1"))
    done = statuses.get("done", 0)
    reasons = db.execute("SELECT status, error, COUNT(*) FROM jobs WHERE status != 'done' "
                         "GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5").fetchall()
    fds = int(open(f"{work}/{name}.fds").read()) if os.path.exists(f"{work}/{name}.fds") else 0
    return dict(cpu=cpu, rss=rss, wall=wall, statuses=statuses, done=done, reasons=reasons, fds=fds,
                pps=done / wall, cpu_per_page=cpu / max(done, 1) * 1e6)

one, many = run(f"one-host-{size}"), run(f"hosts-{size}")
for label, r in (("one host", one), (f"{hosts} hosts", many)):
    print(f"  {label:<12} {r['wall']:7.2f} s  {r['pps']:7.0f} pages/s  CPU {r['cpu']:6.2f} s "
          f"({r['cpu_per_page']:5.0f} us/page)  peak RSS {r['rss']:5.1f} MB  fds {r['fds']:5}  jobs {r['statuses']}")
    for status, error, n in r["reasons"]:
        print(f"      {n} {status}: {error}")

# Windows over quota for the many-host crawl: consecutive requests to one address.
times = defaultdict(list)
source = "wire"
if os.path.exists(f"{work}/wire.txt"):
    with open(f"{work}/wire.txt") as f:
        for i, line in enumerate(f):
            if i >= wire_from:
                t, addr, uri = line.split()
                times[addr].append((float(t), uri))
else:
    source = "nginx (1 ms)"
    with open(f"{work}/access.log") as f:
        for i, line in enumerate(f):
            if i >= log_from:
                msec, rt, addr, status, uri = line.split()[:5]
                times[addr].append((float(msec) - float(rt), uri))
times.pop("127.0.0.1", None)
# For each window, whether each request opened its connection (nginx's request number on
# it is 1): a request on a kept connection reaches the wire sooner after its send.
first_on_connection = {}
with open(f"{work}/access.log") as f:
    for i, line in enumerate(f):
        if i >= log_from:
            fields = line.split()
            first_on_connection[(fields[2], fields[4])] = fields[5] == "1"
over, worst, requests, shown = 0, 0.0, 0, []
for addr, ts in times.items():
    ts.sort()
    requests += len(ts)
    for (a, uri_a), (b, uri_b) in zip(ts, ts[1:]):
        if b - a < 1 / Q - RES:
            over += 1
            worst = max(worst, 1 / Q - (b - a))
            shown.append((b - a, addr, uri_a, uri_b))
for gap, addr, uri_a, uri_b in sorted(shown)[:5]:
    new = lambda uri: "new" if first_on_connection.get((addr, uri)) else "kept"
    print(f"      window: {addr} {uri_a} ({new(uri_a)} connection) then {uri_b} "
          f"({new(uri_b)}) {1000 * gap:.1f} ms apart")

# Connections nginx accepted for the many-host crawl (its first request on each).
opened = answered = 0
with open(f"{work}/access.log") as f:
    for i, line in enumerate(f):
        if i >= log_from and line.split()[2] != "127.0.0.1":
            answered += 1
            opened += line.split()[5] == "1"

ideal = (pages + 1) / Q
share = ideal / many["wall"]
ratio_pps = many["pps"] / one["pps"]
ratio_cpu = many["cpu_per_page"] / one["cpu_per_page"]
failed = many["statuses"].get("failed", 0)
print(f"  quota-bound ideal {ideal:.1f} s: share {100 * share:.0f} %   (target >= 90 % at 1 000 hosts)")
print(f"  pages/s against one host: {100 * ratio_pps:.0f} %   (target >= 75 % at 10 000 hosts)")
print(f"  CPU per page against one host: {ratio_cpu:.2f}x   (target <= 1.3x)")
print(f"  requests seen at the {source}: {requests}; windows over quota: {over}"
      + (f", worst {1000 * worst:.1f} ms short of 1/Q" if over else "") + "   (target 0)")
print(f"  connections opened: {opened} for {answered} requests")
print(f"  failed jobs: {failed}   (target 0);  peak RSS {many['rss']:.1f} MB   (target <= 60 MB at 10 000 hosts)")
with open(f"{work}/rounds-{size}.txt", "a") as f:
    f.write(f"{ratio_cpu} {ratio_pps} {share} {many['rss']} {over}\n")
ok = over == 0 and failed == 0 and many["done"] == hosts * pages
sys.exit(0 if ok else 1)
PY
  done
  if [ "$ROUNDS" -gt 1 ]; then
    python3 - "$work/rounds-$size.txt" "$size" <<'PY'
import statistics, sys
rounds = [list(map(float, line.split())) for line in open(sys.argv[1])]
cpu, pps, share, rss, over = zip(*rounds)
print(f"== {sys.argv[2]}, median of {len(rounds)} rounds: CPU per page {statistics.median(cpu):.2f}x "
      f"({', '.join(f'{c:.2f}' for c in cpu)}); pages/s {100 * statistics.median(pps):.0f} %; "
      f"quota-bound share {100 * statistics.median(share):.0f} %; peak RSS at most {max(rss):.1f} MB; "
      f"windows over quota {int(sum(over))}")
PY
  fi
done
exit $status
