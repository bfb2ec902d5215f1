# crawlq image: build with the Rust toolchain, run on a slim Debian with only what the
# binary needs. Base images are build arguments so they can be swapped or mirrored.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# Nothing to install: libcurl, OpenSSL and zlib are built from source and linked in.
WORKDIR /src
# Dependencies first, in their own layer: a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# isahc with one accessor added (vendor/README.md), patched in by Cargo.toml.
COPY vendor vendor
# Build settings for the C libraries (libcurl waits on its sockets with poll()).
COPY .cargo .cargo
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
COPY migrations migrations
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM ${RUNTIME_IMAGE}
# CA certificates for https (the binary links its own OpenSSL, zlib and libcurl), and the
# sqlite3 shell so users can `docker exec crawlq sqlite3 /data/crawlq.db ...`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates sqlite3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin crawlq \
 && mkdir -p /data && chown crawlq:crawlq /data
COPY --from=build /src/target/release/crawlq /usr/local/bin/crawlq
# Defaults are compiled in (config/default.toml); the image only changes these two.
ENV CRAWLQ__DATABASE__URL=/data/crawlq.db \
    CRAWLQ__LOG__FORMAT=json
USER crawlq
WORKDIR /data
VOLUME /data
# crawlq handles SIGTERM itself (it is PID 1 here): it stops claiming, lets in-flight jobs
# finish for daemon.shutdown_grace_secs, puts the rest back to queued and exits 0.
STOPSIGNAL SIGTERM
# Healthy = this container's daemon wrote its heartbeat (every daemon.heartbeat_secs, 5 s)
# within three intervals, and the database takes writes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["crawlq", "healthcheck"]
ENTRYPOINT ["crawlq"]
CMD ["run"]
