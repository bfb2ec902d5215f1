#!/usr/bin/env bash
# Builds the image from the repo's Dockerfile with podman and runs it for real, the way the
# README's "Running with Docker" section does:
#   1. the image of an earlier commit (the one before the newest migration) runs detached
#      with a volume for /data; jobs are inserted with sqlite3 and crawled; `stop`;
#   2. upgrade: this commit's image on the same volume applies the new migrations; more
#      jobs go in (with this machine's sqlite3 on the volume, and with `exec sqlite3`),
#      results are waited for, `crawlq status` and the image's HEALTHCHECK run, the logs
#      are checked to be JSON, then `stop` (SIGTERM) must exit 0 with no job left running.
#
# No Docker engine or image registry is reachable on our machines, so the base images are
# made locally and passed as build arguments (never tagged with the official names):
# `debootstrap --variant=minbase bookworm`, imported, stands in for debian:bookworm-slim,
# and that rootfs plus this machine's Rust toolchain (with gcc, make and perl: nothing else,
# crawlq builds its C libraries from source) for rust:1-bookworm.
#
# It takes minutes (release builds inside containers), so it is run by hand and reported,
# not part of every CI run. Needs root (rootful podman) and Debian's package mirror.
# Usage: bash scripts/container-test.sh
#   KEEP=1             leave the container and volume for a look afterwards
#   NO_CACHE=1         build this commit's image from scratch (to time a cold build)
#   PREVIOUS_REV=REV   the commit whose image is upgraded from
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${CRAWLQ_CONTAINER_WORK:-$repo/target/container-test}
image=localhost/crawlq:container-test
previous_image=localhost/crawlq:container-test-previous
base=localhost/crawlq-test/debian:bookworm-slim
builder=localhost/crawlq-test/rust:1-bookworm
container=crawlq-container-test
volume=crawlq-container-test-data
port=${PORT:-18089}
mkdir -p "$work"

say() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    if [[ -n ${db:-} && -f $db ]]; then
        sqlite3 -cmd '.timeout 30000' "$db" "SELECT id, status, url, error FROM jobs" >&2 || true
    fi
    podman logs --tail 20 "$container" >&2 2>/dev/null || true
    exit 1
}
# Waits for a condition (a command), at most $1 seconds.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out after waiting for: $what"
        sleep 0.5
    done
}

say "tools"
missing=()
for tool in podman runc debootstrap sqlite3 python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" uidmap >/dev/null
fi
for tool in rustc cargo git; do
    command -v "$tool" >/dev/null || fail "$tool is needed (the builder stand-in copies this machine's toolchain)"
done
podman --version

# The sandbox lacks CAP_SYS_RESOURCE (no ulimits) and systemd (no cgroup manager).
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$work/containers.conf
podman() { command podman --runtime runc "$@"; }

cleanup() {
    [[ -n ${server_pid:-} ]] && kill "$server_pid" 2>/dev/null || true
    if [[ -z ${KEEP:-} ]]; then
        podman rm -f "$container" >/dev/null 2>&1 || true
        podman volume rm -f "$volume" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say "base images (made locally: no registry is reachable)"
if ! podman image exists "$base"; then
    if [[ ! -f $work/rootfs/etc/debian_version ]]; then
        rm -rf "$work/rootfs"
        time debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
    fi
    # Like the real slim image: no apt lists or caches, no docs, man pages or translations.
    tar -C "$work/rootfs" \
        --exclude='./var/lib/apt/lists/*' --exclude='./var/cache/apt/*' \
        --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' --exclude='./usr/share/locale/*' \
        -c . | podman import --change 'CMD ["bash"]' - "$base" >/dev/null
fi
if ! podman image exists "$builder"; then
    toolchain=$(rustc --print sysroot)
    rm -rf "$work/rust-builder" && mkdir -p "$work/rust-builder/rust"
    # The compiler and its libraries (docs and the rest of the sysroot stay out).
    cp -a "$toolchain/bin" "$toolchain/lib" "$work/rust-builder/rust/"
    # This machine reaches crates.io through a TLS-inspecting egress proxy: the stand-in
    # trusts the same extra CAs as the machine does (a real rust image needs none).
    mkdir -p "$work/rust-builder/extra-ca"
    cp /usr/local/share/ca-certificates/*.crt "$work/rust-builder/extra-ca/" 2>/dev/null || true
    cat >"$work/rust-builder/Containerfile" <<EOF
FROM $base
RUN apt-get update \\
 && apt-get install -y --no-install-recommends gcc libc6-dev make perl ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY extra-ca /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    CARGO_HOME=/usr/local/cargo
RUN cargo --version && rustc --version
EOF
    podman build --network host --pull=never -t "$builder" "$work/rust-builder"
fi
build_image() { # tag, context directory, extra podman build flags...
    local tag=$1 context=$2
    shift 2
    # docker format: OCI image configs have no HEALTHCHECK.
    podman build --network host --pull=never --format docker "$@" \
        --build-arg RUST_IMAGE="$builder" --build-arg RUNTIME_IMAGE="$base" \
        -t "$tag" "$context"
}

say "build the image of this commit from $repo/Dockerfile"
build_started=$SECONDS
build_image "$image" "$repo" ${NO_CACHE:+--no-cache}
build_secs=$((SECONDS - build_started))
image_bytes=$(podman image inspect --format '{{.Size}}' "$image")
base_bytes=$(podman image inspect --format '{{.Size}}' "$base")

newest_migration=$(cd "$repo/migrations/sqlite" && ls | tail -1)
previous=${PREVIOUS_REV:-$(git -C "$repo" log --diff-filter=A --format=%H -n 1 -- "migrations/sqlite/$newest_migration" "migrations/$newest_migration")^}
say "build the image of $previous (before $newest_migration), to upgrade from"
rm -rf "$work/previous" && mkdir -p "$work/previous"
git -C "$repo" archive "$previous" | tar -x -C "$work/previous"
build_image "$previous_image" "$work/previous"

say "a local site on 127.0.0.1:$port"
site=$work/site
rm -rf "$site" && mkdir -p "$site"
for i in 1 2 3 4 5 6 7; do
    printf '<html><head><title>Page %s</title></head><body><span class="price">%s.00</span></body></html>\n' \
        "$i" "$i" >"$site/page$i.html"
done
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" >"$work/http.log" 2>&1 &
server_pid=$!
server_up() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/page1.html')" 2>/dev/null; }
wait_for 10 "the HTTP server" server_up

podman rm -f "$container" >/dev/null 2>&1 || true
podman volume rm -f "$volume" >/dev/null 2>&1 || true
podman volume create "$volume" >/dev/null
# podman finds no systemd here to schedule the HEALTHCHECK and says so on stderr (kept in
# podman-run.err); the check itself is run below with `podman healthcheck run`.
start_daemon() { # image
    podman run -d --name "$container" --network host -v "$volume:/data" \
        -e CRAWLQ__LIMITS__PER_HOST_RPS=50 "$1" >/dev/null 2>"$work/podman-run.err" ||
        { cat "$work/podman-run.err" >&2; fail "podman run $1"; }
}
stop_daemon() { # prints the exit code
    podman stop --time 10 "$container" >/dev/null 2>>"$work/podman-run.err"
    podman inspect --format '{{.State.ExitCode}}' "$container"
}
data=$(podman volume inspect --format '{{.Mountpoint}}' "$volume")
db=$data/crawlq.db
sql() { sqlite3 -cmd '.timeout 30000' "$db" "$@"; }
selectors='{"title":"title","price":"span.price"}'
insert_here() { # page numbers: this machine's sqlite3 on the volume's file
    for i in "$@"; do
        sql "INSERT INTO jobs (url, selectors) VALUES ('http://127.0.0.1:$port/page$i.html', '$selectors')"
    done
}
insert_exec() { # page numbers: the sqlite3 shell inside the image, as the README shows
    for i in "$@"; do
        podman exec "$container" sqlite3 -cmd '.timeout 30000' /data/crawlq.db \
            "INSERT INTO jobs (url, selectors) VALUES ('http://127.0.0.1:$port/page$i.html', '$selectors')"
    done
}
done_count_is() { [[ $(sql "SELECT COUNT(*) FROM jobs WHERE status = 'done'") == "$1" ]]; }

say "1. the previous image, detached, with a volume for /data"
start_daemon "$previous_image"
jobs_table() { [[ -f $db ]] && sql "SELECT COUNT(*) FROM jobs" >/dev/null 2>&1; }
wait_for 30 "the previous daemon to create $db" jobs_table
insert_exec 1 2
wait_for 60 "2 jobs done by the previous image" done_count_is 2
previous_exit=$(stop_daemon)
[[ $previous_exit == 0 ]] || fail "the previous image exited $previous_exit after SIGTERM"
migrations_before=$(sql "SELECT COUNT(*) FROM _sqlx_migrations")
podman rm "$container" >/dev/null

say "2. upgrade: this commit's image on the same volume"
start_daemon "$image"
migrations_now=$(find "$repo/migrations/sqlite" -name '*.sql' | wc -l)
migrated() { [[ $(sql "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1") == "$migrations_now" ]]; }
wait_for 30 "the new daemon to apply its migrations" migrated
podman exec "$container" crawlq migrate
podman logs "$container" 2>&1 | sed -n 1p

insert_ms=$(date +%s%3N)
insert_here 3 4 5
insert_exec 6 7
wait_for 60 "7 jobs done" done_count_is 7
result_ms=$(($(date +%s%3N) - insert_ms))
podman exec "$container" sqlite3 -cmd '.timeout 30000' /data/crawlq.db \
    "SELECT j.status, r.http_status, r.title FROM jobs j JOIN latest_results r ON r.job_id = j.id"
prices=$(sql "SELECT group_concat(price, ' ') FROM (SELECT json_extract(r.data, '$.price[0]') AS price
                                                      FROM latest_results r ORDER BY r.job_id)")
[[ $prices == "1.00 2.00 3.00 4.00 5.00 6.00 7.00" ]] || fail "unexpected prices: $prices"

say "crawlq status inside the container"
podman exec "$container" crawlq status
podman exec "$container" crawlq status --json | python3 -c '
import json, sys
report = json.load(sys.stdin)
assert report["jobs"]["done"] == 7, report'

say "healthcheck (the image's HEALTHCHECK command)"
podman inspect --format '{{json .Config.Healthcheck}}' "$container"
healthy() { podman healthcheck run "$container" 2>>"$work/podman-run.err"; }
wait_for 30 "a passing healthcheck" healthy
podman exec "$container" crawlq healthcheck
health=$(podman inspect --format '{{.State.Health.Status}}' "$container")

say "logs are JSON (log.format = json in the image)"
podman logs "$container" 2>&1 | tail -n 2
podman logs "$container" 2>&1 | python3 -c '
import json, sys
for line in sys.stdin:
    json.loads(line)' || fail "a log line is not JSON"

say "stop (SIGTERM) and check the exit"
stop_started=$SECONDS
exit_code=$(stop_daemon)
stop_secs=$((SECONDS - stop_started))
running=$(sql "SELECT COUNT(*) FROM jobs WHERE status = 'running'")
worker_state=$(sql "SELECT state FROM worker_status ORDER BY started_at DESC LIMIT 1")
podman logs "$container" 2>&1 | tail -n 1
[[ $exit_code == 0 ]] || fail "the container exited $exit_code after SIGTERM"
[[ $running == 0 ]] || fail "$running jobs left running"
[[ $worker_state == stopped ]] || fail "worker row says $worker_state"

say "summary"
printf 'image size:                %s MB (the locally made base: %s MB)\n' "$((image_bytes / 1000000))" "$((base_bytes / 1000000))"
printf 'build time:                %s s%s\n' "$build_secs" "${NO_CACHE:+ (from scratch)}"
printf 'upgrade:                   %s -> %s migrations, 2 earlier results kept\n' "$migrations_before" "$migrations_now"
printf 'insert to 5 results:       %s ms\n' "$result_ms"
printf 'health after results:      %s\n' "$health"
printf 'stop took:                 %s s\n' "$stop_secs"
printf 'exit code after stop:      %s (the previous image: %s)\n' "$exit_code" "$previous_exit"
printf 'jobs left running:         %s\n' "$running"
printf 'worker row after stop:     %s\n' "$worker_state"
echo "container test passed"
