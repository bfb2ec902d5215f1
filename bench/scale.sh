#!/usr/bin/env bash
# Scale: how pages/s and peak RSS move with the size of the crawl, and what a big queue
# costs in memory.
#
#   bench/scale.sh                 the throughput crawl at 2 000, 20 000 and 200 000 pages,
#                                  then the queue measurement with 1 000 000 jobs
#   SIZES="2000 20000" QUEUED=100000 bench/scale.sh    smaller runs
#
# The queue measurement: a daemon fetching at 2 requests/s from one local host, once with
# 100 jobs queued and once with QUEUED (1 000 000), each watched for WATCH_SECS (30) from
# its start (admitting the big queue included); its RSS is sampled every 0.2 s from
# /proc. A daemon that kept its queue in memory would grow with it; this one should not.
#
# Needs what bench/throughput.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"2000 20000 200000"}
QUEUED=${QUEUED:-1000000}
WATCH_SECS=${WATCH_SECS:-30}
PORT=${PORT:-18081}
. bench/common.sh
need nginx wrk sqlite3 python3 /usr/bin/time
use_crawlq_bin

for n in $SIZES; do
  echo "== crawl of $n pages"
  WRK_SECS=${WRK_SECS:-5} bench/throughput.sh "$n" | grep -E "^(site|wrk|crawlq|        cpu|ratio|checks)"
done

make_work_dir
mkdir -p "$work/site"
echo "<title>queued page</title>" > "$work/site/page.html"
{ nginx_conf_head 64; cat <<NGINX
http { access_log off; server { listen 127.0.0.1:$PORT; root $work/site; } }
NGINX
} >"$work/nginx.conf"
start_nginx

# Peak and final RSS (MB) of a daemon over WATCH_SECS with `jobs` jobs queued at its start.
watch_rss() {
  local jobs=$1 db="$work/queue-$1.db"
  "$CRAWLQ_BIN" migrate --database "$db" >/dev/null
  python3 - "$db" "$jobs" "$PORT" <<'PY'
import sqlite3, sys
db, jobs, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sql = sqlite3.connect(db)
sql.executemany("INSERT INTO jobs (url) VALUES (?)",
                ((f"http://127.0.0.1:{port}/page.html?n={i}",) for i in range(jobs)))
sql.commit()
PY
  CRAWLQ__LIMITS__PER_HOST_RPS=2 CRAWLQ__CRAWL__OBEY_ROBOTS=false CRAWLQ__LOG__LEVEL=warn \
    "$CRAWLQ_BIN" run --database "$db" &
  local pid=$! peak=0 rss=0 end=$((SECONDS + WATCH_SECS))
  while [ $SECONDS -lt $end ]; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.2
  done
  local admitted
  admitted=$(sqlite3 -cmd '.timeout 30000' "$db" "SELECT COUNT(*) FROM jobs WHERE host IS NOT NULL")
  kill -TERM $pid
  wait $pid
  printf '%8d jobs queued: peak RSS %6.1f MB, at %d s %6.1f MB (%d admitted)\n' \
    "$jobs" "$(echo "$peak / 1024" | bc -l)" "$WATCH_SECS" "$(echo "$rss / 1024" | bc -l)" "$admitted"
}

echo "== RSS with a queue (2 requests/s to one host, ${WATCH_SECS} s from start)"
watch_rss 100
watch_rss "$QUEUED"
