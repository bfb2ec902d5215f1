#!/usr/bin/env bash
# Peak memory of the daemon on the biggest hostile answers, against a baseline of ordinary
# pages: an endless gzip bomb, a 5 GB Content-Length, an endless chunked body, a 1 MB
# <title>, 100 000 links on one page and 100 000 levels of nesting, COPIES of each (all in
# flight at once), through the release binary and a real SQLite file.
#
#   bench/hostile-memory.sh [COPIES]     (default 8)
#
# Prints each run's peak RSS (/usr/bin/time -v) and how the jobs ended. Needs python3,
# sqlite3 and /usr/bin/time (Debian package time).
set -euo pipefail
COPIES=${1:-8}
PORT=${PORT:-18090}
cd "$(dirname "$0")/.."
. bench/common.sh
need python3 sqlite3 /usr/bin/time
use_crawlq_bin
make_work_dir
server=
stop_on_exit="server"

python3 - "$PORT" <<'PY' &
import socketserver, sys, time, zlib
port = int(sys.argv[1])
zeros = bytes(1 << 20)
deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
first = deflate.compress(zeros) + deflate.flush(zlib.Z_SYNC_FLUSH)
repeated = deflate.compress(zeros) + deflate.flush(zlib.Z_SYNC_FLUSH)
def page(body):
    body = body.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body) + body
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        path = head.split()[1].decode().split("?")[0]
        send = self.request.sendall
        until = time.time() + 60
        try:
            if path == "/gzip-bomb":
                send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n")
                send(bytes([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]) + first)
                while time.time() < until:
                    send(repeated)
            elif path == "/five-gigabytes":
                send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000000000\r\n\r\n")
                while time.time() < until:
                    send(bytes(65536))
            elif path == "/endless-chunked":
                send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
                while time.time() < until:
                    send(b"10000\r\n" + bytes(65536) + b"\r\n")
            elif path == "/huge-title":
                send(page("<title>" + "t" * (1 << 20) + "</title>"))
            elif path == "/many-links":
                send(page("".join(f'<a href="/l/{i}">{i}</a>' for i in range(100_000))))
            elif path == "/deep":
                send(page("<title>deep</title>" + "<div>" * 100_000 + "x" + "</div>" * 100_000))
            else:
                send(page(f"<title>{path}</title><p>" + "ordinary text " * 1000 + "</p>"))
        except (BrokenPipeError, ConnectionResetError):
            pass
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("127.0.0.3", port), Handler).serve_forever()
PY
server=$!
sleep 0.5

run() { # name, paths...
  local name=$1; shift
  local db="$work/$name.db"
  rm -f "$db"*
  CRAWLQ__DATABASE__URL="$db" "$CRAWLQ_BIN" migrate >/dev/null
  {
    echo "BEGIN;"
    for path in "$@"; do
      for i in $(seq 1 "$COPIES"); do
        echo "INSERT INTO jobs (url, max_attempts) VALUES ('http://127.0.0.3:$PORT$path?$i', 1);"
      done
    done
    echo "COMMIT;"
  } | sqlite3 "$db"
  CRAWLQ__DATABASE__URL="$db" CRAWLQ__CRAWL__OBEY_ROBOTS=false CRAWLQ__LOG__LEVEL=error \
  CRAWLQ__LIMITS__PER_HOST_RPS=1000 CRAWLQ__LIMITS__PER_HOST_BURST=64 \
  CRAWLQ__LIMITS__PER_HOST_IN_FLIGHT=64 CRAWLQ__FETCH__TIMEOUT_SECS=20 \
    /usr/bin/time -v "$CRAWLQ_BIN" run --exit-when-idle 2>"$work/$name.time" >/dev/null
  local rss
  rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/$name.time")
  printf '%-16s peak RSS %6d KB   jobs: %s\n' "$name" "$rss" \
    "$(sqlite3 "$db" "SELECT group_concat(status || ' ' || n, ', ') FROM (SELECT status, COUNT(*) n FROM jobs GROUP BY 1)")"
  sqlite3 "$db" "SELECT '    ' || substr(url, instr(url, '$PORT') + 5) || ': ' || COALESCE(error, status) FROM jobs WHERE url LIKE '%?1'"
}

run baseline /ordinary
for path in /gzip-bomb /five-gigabytes /endless-chunked /huge-title /many-links /deep; do
  SECONDS=0
  run "${path#/}" "$path"
  echo "    ($SECONDS s)"
done
