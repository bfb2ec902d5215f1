-- One row per daemon process that ran on this database: who it is, whether it is alive
-- (heartbeat), and what it has done. Written by the daemon; readable by users and by
-- `crawlq healthcheck`.
CREATE TABLE workers (
    -- The daemon's id, also the prefix of its lease tokens: crawlq-PID-XXXXXXXX.
    id               TEXT PRIMARY KEY,
    hostname         TEXT    NOT NULL,
    pid              INTEGER NOT NULL,
    version          TEXT    NOT NULL,
    started_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Written every heartbeat_every_secs while the daemon runs.
    heartbeat_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    heartbeat_every_secs REAL NOT NULL,
    -- Set on a clean exit; a row with no stopped_at and an old heartbeat is a daemon that died.
    stopped_at       TEXT,
    -- Since this daemon started.
    claimed          INTEGER NOT NULL DEFAULT 0,
    done             INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    retried          INTEGER NOT NULL DEFAULT 0,
    skipped          INTEGER NOT NULL DEFAULT 0,
    bytes            INTEGER NOT NULL DEFAULT 0,
    in_flight        INTEGER NOT NULL DEFAULT 0
);

-- Each worker with its state: 'running', 'stopped', or 'stale' (no heartbeat for three
-- intervals: the process died without a clean exit, e.g. kill -9 or a power cut).
CREATE VIEW worker_status AS
SELECT w.*,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN julianday('now') - julianday(w.heartbeat_at) > 3 * w.heartbeat_every_secs / 86400.0
                 THEN 'stale'
            ELSE 'running' END AS state,
       ROUND((julianday('now') - julianday(w.heartbeat_at)) * 86400.0, 1) AS heartbeat_age_secs
  FROM workers w;
