#!/usr/bin/env bash
# Measures crawlq end to end on a local site: N static pages served by nginx on 127.0.0.1,
# N jobs inserted with sqlite3, then the release binary run with --exit-when-idle and the
# per-host limits raised. Prints pages/s, CPU seconds and peak RSS, and checks every page
# was stored with its title.
#
#   bench/local-crawl.sh [N]             N jobs, one per page (default 1000)
#   MODE=crawl bench/local-crawl.sh [N]  one job for /p0.html, following links (unlimited
#                                        depth, same host) until all N pages are crawled
#
# Needs nginx and sqlite3 (apt-get install nginx-light sqlite3).
set -euo pipefail
N=${1:-1000}
PORT=${PORT:-18080}
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx-light)"; exit 1; }
command -v sqlite3 >/dev/null || { echo "needs sqlite3 (apt-get install sqlite3)"; exit 1; }

work=$(mktemp -d)
trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

# A deterministic site: ~14 KB pages with a title, description, a price and 20 links.
python3 - "$work/site" "$N" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(root)
rng = random.Random(42)
para = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 8
for i in range(n):
    # The next page first, so every page is reachable from /p0.html; then 19 chosen at
    # random, and an off-site link that a same-host crawl must not follow.
    targets = [(i + 1) % n] + [rng.randrange(n) for _ in range(19)]
    links = "".join(f'<li><a href="/p{t}.html">page {t}</a></li>' for t in targets)
    links += '<li><a href="http://off-site.invalid/x">elsewhere</a></li>'
    body = "".join(f"<p>{para}</p>" for _ in range(20))
    with open(f"{root}/p{i}.html", "w") as f:
        f.write(f"""<!doctype html><html><head><title>Page {i}</title>
<meta name="description" content="Description of page {i}"></head>
<body><nav><ul>{links}</ul></nav><h1>Page {i}</h1><span class="price">${i}.99</span>{body}</body></html>""")
PY

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$PORT; root $work/site; }
}
NGINX
chmod -R a+rX "$work"
nginx -c "$work/nginx.conf"

cargo build --release --quiet
db="$work/bench.db"
./target/release/crawlq migrate --database "$db" >/dev/null
if [ "${MODE:-jobs}" = crawl ]; then
  sqlite3 "$db" "INSERT INTO jobs (url, selectors, max_depth) VALUES ('http://127.0.0.1:$PORT/p0.html', '{\"price\":\"span.price\"}', 1000000)"
else
  {
    echo "BEGIN;"
    for ((i = 0; i < N; i++)); do
      echo "INSERT INTO jobs (url, selectors) VALUES ('http://127.0.0.1:$PORT/p$i.html', '{\"price\":\"span.price\"}');"
    done
    echo "COMMIT;"
  } | sqlite3 "$db"
fi

export CRAWLQ__LIMITS__PER_HOST_RPS=1000000 CRAWLQ__LIMITS__PER_HOST_BURST=1000
export CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT=64 CRAWLQ__LIMITS__MAX_IN_FLIGHT=64
export CRAWLQ__DAEMON__STATS_INTERVAL_SECS=0 CRAWLQ__LOG__LEVEL=${LOG_LEVEL:-warn}
start=$(date +%s.%N)
/usr/bin/time -v -o "$work/time.txt" ./target/release/crawlq run --database "$db" --exit-when-idle
end=$(date +%s.%N)

done_count=$(sqlite3 "$db" "SELECT COUNT(*) FROM jobs WHERE status = 'done'")
# A page's number is in its URL; its title, price and links must match it.
right_titles=$(sqlite3 "$db" "SELECT COUNT(*) FROM results r JOIN jobs j ON j.id = r.job_id,
    (SELECT CAST(substr(j2.url, instr(j2.url, '/p') + 2) AS INTEGER) AS n, j2.id AS id FROM jobs j2) p
  WHERE p.id = j.id AND r.title = 'Page ' || p.n
    AND EXISTS (SELECT 1 FROM json_each(r.links)
                 WHERE value = 'http://127.0.0.1:$PORT/p' || ((p.n + 1) % $N) || '.html')
    AND EXISTS (SELECT 1 FROM json_each(r.links) WHERE value = 'http://off-site.invalid/x')
    AND json_extract(r.data, '$.price[0]') = '\$' || p.n || '.99'")
off_site=$(sqlite3 "$db" "SELECT COUNT(*) FROM jobs WHERE url NOT LIKE 'http://127.0.0.1:$PORT/%'")
secs=$(echo "$end - $start" | bc -l)
cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {print u + s}' "$work/time.txt")
rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.txt")
printf 'pages: %d  done: %d  right title+price+links: %d  off-site jobs: %d\n' "$N" "$done_count" "$right_titles" "$off_site"
printf 'wall: %.2f s  pages/s: %.0f  cpu: %.2f s  peak RSS: %.1f MB\n' \
  "$secs" "$(echo "$N / $secs" | bc -l)" "$cpu" "$(echo "$rss / 1024" | bc -l)"
[ "$done_count" -eq "$N" ] && [ "$right_titles" -eq "$N" ] && [ "$off_site" -eq 0 ]
