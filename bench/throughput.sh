#!/usr/bin/env bash
# Throughput: crawlq against wrk on the same static site, in the same run.
#
#   bench/throughput.sh [N]        N pages (default 20000)
#   CRAWLQ_BIN=path  WRK_SECS=10   the binary to measure (default: target/release/crawlq,
#                                  built if missing) and how long wrk runs
#   DATABASE_URL=postgres://…      crawl into this PostgreSQL database (emptied first: its
#                                  crawlq tables are dropped) instead of a new SQLite file;
#                                  psql must be installed
#
# 1. Generates a deterministic site of N pages (seed 42), ~12-20 KB of HTML each: a title,
#    a meta description, a nav, paragraphs, a `span.price`, ~20 links to other pages of the
#    site and 3 off-site links (to 127.0.0.2, which must never be asked for anything). Page
#    0 is /index.html; page i links to page i+1, so every page is reachable from it.
# 2. Serves it with nginx (keep-alive on, access log off) on 127.0.0.1, and a second
#    server on 127.0.0.2 (access log on) for the off-site links.
# 3. wrk, 64 connections over 2 threads, cycling through all N URLs: the raw fetch ceiling
#    of this machine.
# 4. crawlq through the real binary and a real SQLite file (or DATABASE_URL): one job for /index.html with
#    unlimited depth (scope: same host), limits raised, 64 in flight, selectors for the
#    title and span.price, `run --exit-when-idle`, start to exit, under /usr/bin/time -v.
# 5. Checks exactly N pages were stored, each once, with the right title, price and link
#    set, and that nothing was fetched off-site.
#
# Needs nginx, wrk, sqlite3, python3 and /usr/bin/time (Debian: nginx-light wrk sqlite3
# time). Prints one line per measure; exits non-zero if a check fails.
set -euo pipefail
N=${1:-20000}
PORT=${PORT:-18080}
WRK_SECS=${WRK_SECS:-10}
cd "$(dirname "$0")/.."
. bench/common.sh
need nginx wrk sqlite3 python3 /usr/bin/time
use_crawlq_bin

make_work_dir

python3 - "$work" "$N" "$PORT" <<'PY'
import json, os, random, sys
work, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
root = f"{work}/site"
os.makedirs(root)
rng = random.Random(42)
base = f"http://127.0.0.1:{port}"
words = ("crawl queue host rate limit page link price title daemon polite fetch parse store "
         "result job robots delay quota burst sqlite index catalogue product offer review").split()
def path(i):
    return "/index.html" if i == 0 else f"/p{i}.html"
expected = {}
for i in range(n):
    nav = [0, (i + 1) % n] + [rng.randrange(n) for _ in range(4)]
    body_links = [rng.randrange(n) for _ in range(14)]
    off_site = [f"http://127.0.0.2:{port}/elsewhere/{rng.randrange(1000)}" for _ in range(3)]
    paragraphs = []
    for p in range(rng.randrange(10, 17)):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(150, 210)))
        link = body_links[p] if p < len(body_links) else None
        anchor = f' <a href="{path(link)}">see page {link}</a>' if link is not None else ""
        paragraphs.append(f"<p>{text}.{anchor}</p>")
    for link in body_links[len(paragraphs):]:
        paragraphs.append(f'<p><a href="{path(link)}">more: page {link}</a></p>')
    nav_html = "".join(f'<li><a href="{path(t)}">page {t}</a></li>' for t in nav)
    off_html = "".join(f'<li><a href="{u}">partner</a></li>' for u in off_site)
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Page {i}</title>
<meta name="description" content="Description of page {i} of the benchmark site">
<link rel="stylesheet" href="/style.css"></head>
<body><header><nav><ul>{nav_html}</ul></nav></header>
<main><h1>Page {i}</h1><p class="offer">Price: <span class="price">${i}.99</span></p>
{"".join(paragraphs)}</main>
<footer><ul>{off_html}</ul></footer></body></html>
"""
    with open(root + path(i), "w") as f:
        f.write(html)
    links = {base + path(t) for t in nav + body_links} | set(off_site)
    expected[base + path(i)] = sorted(links)
with open(f"{work}/expected.json", "w") as f:
    json.dump(expected, f)
with open(f"{work}/paths.lua", "w") as f:
    f.write("paths = {" + ",".join(f'"{path(i)}"' for i in range(n)) + "}\n")
sizes = [os.path.getsize(root + path(i)) for i in range(0, n, max(1, n // 1000))]
print(f"site: {n} pages, {min(sizes) // 1024}-{max(sizes) // 1024} KB each "
      f"(mean {sum(sizes) // len(sizes) // 1024} KB)")
PY

cat > "$work/wrk.lua" <<'LUA'
dofile(os.getenv("PATHS_LUA"))
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
LUA

{ nginx_conf_head 1024; cat <<NGINX
http {
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$PORT; root $work/site; access_log off; }
  server { listen 127.0.0.2:$PORT; root $work/site; access_log $work/off-site.log; }
}
NGINX
} >"$work/nginx.conf"
start_nginx

wrk_out=$(PATHS_LUA="$work/paths.lua" wrk -t2 -c64 -d"${WRK_SECS}s" -s "$work/wrk.lua" "http://127.0.0.1:$PORT")
wrk_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$wrk_out")
wrk_errors=$(grep -c "Non-2xx\|Socket errors" <<<"$wrk_out" || true)
printf 'wrk:    %8.0f req/s (64 connections, %s s%s)\n' "$wrk_rps" "$WRK_SECS" \
  "$([ "$wrk_errors" -eq 0 ] || echo ", ERRORS: see below")"
[ "$wrk_errors" -eq 0 ] || echo "$wrk_out"

seed="INSERT INTO jobs (url, selectors, max_depth)
  VALUES ('http://127.0.0.1:$PORT/index.html', '{\"title\": \"title\", \"price\": \"span.price\"}', 1000000000)"
if [[ ${DATABASE_URL:-} == postgres* ]]; then
  need psql
  db=$DATABASE_URL
  psql -q "$db" -c "DROP TABLE IF EXISTS bodies, validators, results, robots, hosts, workers, jobs, _sqlx_migrations CASCADE;
                    DROP VIEW IF EXISTS latest_results, host_stats, worker_status;
                    DROP FUNCTION IF EXISTS crawlq_jobs_written, crawlq_jobs_inserted, crawlq_run_after_now, crawlq_url_changed, crawlq_touched CASCADE" 2>/dev/null
  "$CRAWLQ_BIN" migrate --database "$db" >/dev/null
  psql -q "$db" -c "$seed"
else
  db="$work/bench.db"
  "$CRAWLQ_BIN" migrate --database "$db" >/dev/null
  sqlite3 "$db" "$seed"
fi
export CRAWLQ__LIMITS__PER_HOST_RPS=1000000 CRAWLQ__LIMITS__PER_HOST_BURST=1000
export CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT=64 CRAWLQ__LIMITS__MAX_IN_FLIGHT=64
export CRAWLQ__CRAWL__OBEY_ROBOTS=false
export CRAWLQ__DAEMON__STATS_INTERVAL_SECS=0 CRAWLQ__LOG__LEVEL=${LOG_LEVEL:-warn}
start=$(date +%s.%N)
/usr/bin/time -v -o "$work/time.txt" "$CRAWLQ_BIN" run --database "$db" --exit-when-idle
end=$(date +%s.%N)

python3 - "$work" "$db" "$N" "$start" "$end" "$wrk_rps" <<'PY'
import json, os, sqlite3, subprocess, sys
work, db, n, start, end, wrk_rps = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
expected = json.load(open(f"{work}/expected.json"))
time = dict(line.strip().rsplit(": ", 1) for line in open(f"{work}/time.txt") if ": " in line)
cpu = float(time["User time (seconds)"]) + float(time["System time (seconds)"])
rss_mb = int(time["Maximum resident set size (kbytes)"]) / 1024
wall = end - start
if db.startswith("postgres"):
    def query(text):
        out = subprocess.run(["psql", "-At", db, "-c", f"SELECT json_build_array(t.*) FROM ({text}) t"],
                             check=True, capture_output=True, text=True).stdout
        return [tuple(json.loads(line)[0].values()) for line in out.splitlines() if line]
    rows = query("""SELECT j.url, r.title, r.data -> 'price' ->> 0, r.links::text
                      FROM jobs j JOIN results r ON r.job_id = j.id""")
else:
    sql = sqlite3.connect(db)
    query = lambda text: sql.execute(text).fetchall()
    rows = query("""SELECT j.url, r.title, json_extract(r.data, '$.price[0]'), r.links
                      FROM jobs j JOIN results r ON r.job_id = j.id""")
statuses = dict(query("SELECT status, COUNT(*) FROM jobs GROUP BY 1"))
stored = {}
for url, title, price, links in rows:
    stored.setdefault(url, []).append((title, price, sorted(set(json.loads(links)))))
problems = []
if set(stored) != set(expected):
    problems.append(f"stored pages differ: {len(set(expected) - set(stored))} missing, "
                    f"{len(set(stored) - set(expected))} unexpected")
twice = [u for u, r in stored.items() if len(r) != 1]
if twice:
    problems.append(f"{len(twice)} pages stored more than once, e.g. {twice[0]}")
wrong = 0
for url, results in stored.items():
    i = 0 if url.endswith("/index.html") else int(url.rsplit("/p", 1)[1].split(".")[0])
    title, price, links = results[0]
    if title != f"Page {i}" or price != f"${i}.99" or links != expected.get(url):
        wrong += 1
if wrong:
    problems.append(f"{wrong} pages with a wrong title, price or link set")
off_site = os.path.getsize(f"{work}/off-site.log") if os.path.exists(f"{work}/off-site.log") else 0
off_jobs = query("SELECT COUNT(*) FROM jobs WHERE url NOT LIKE 'http://127.0.0.1:%'")[0][0]
if off_site or off_jobs:
    problems.append(f"off-site: {off_site} bytes of access log, {off_jobs} jobs")
pages_per_sec = len(rows) / wall
print(f"crawlq: {pages_per_sec:8.0f} pages/s ({len(rows)} pages in {wall:.2f} s; jobs {statuses})")
print(f"        cpu {cpu:.2f} s ({cpu / wall * 100:.0f}% of one core), peak RSS {rss_mb:.1f} MB")
print(f"ratio:  crawlq / wrk = {pages_per_sec / wrk_rps * 100:.1f} %")
print("checks: " + ("all pages stored once with the right title, price and links; nothing off-site"
                    if not problems else "FAILED: " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
