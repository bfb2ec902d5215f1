-- The public SQL contract of crawlq: users INSERT into `jobs` and SELECT from `results`.
-- Change it only with new migrations; never edit a migration that has shipped.
--
-- All timestamps are UTC ISO-8601 text, e.g. '2026-11-21T09:26:39.123Z', written by SQLite
-- itself so that every comparison (run_after, leases) uses one clock and one format.

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    url              TEXT    NOT NULL,
    -- queued -> running -> done | failed. Users may set 'cancelled' on a queued job.
    -- 'skipped' is reserved for crawl policy (robots.txt) decisions.
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'skipped')),
    priority         INTEGER NOT NULL DEFAULT 0,
    -- Optional JSON object: {"name": "css selector", "name2": "css@attr"}.
    selectors        TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- NULL means the daemon's retry.max_attempts setting.
    max_attempts     INTEGER,
    error            TEXT,
    -- Not before this time (UTC). Retry backoff is written here too. NULL = now.
    run_after        TEXT    DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Filled by the daemon when it admits the job (validated URL's host); NULL = not admitted yet.
    host             TEXT,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at      TEXT
);

-- New jobs waiting for the daemon to validate them and fill `host`.
CREATE INDEX jobs_unadmitted ON jobs (id) WHERE status = 'queued' AND host IS NULL;
-- Host-fair claiming: walk the hosts that have queued work, then take each host's best jobs.
CREATE INDEX jobs_claimable ON jobs (host, priority DESC, id) WHERE status = 'queued' AND host IS NOT NULL;
-- Expired leases (a crashed daemon) are found without scanning finished jobs.
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Users write run_after however SQLite's date functions read a time ('2026-11-21 10:00:00',
-- '2026-11-21T10:00:00Z'), or NULL for "now". Store it in one canonical form so that the
-- daemon's text comparison with 'now' is right, and refuse what SQLite cannot read.
CREATE TRIGGER jobs_run_after_checked_on_insert
BEFORE INSERT ON jobs
WHEN NEW.run_after IS NOT NULL AND strftime('%Y-%m-%dT%H:%M:%fZ', NEW.run_after) IS NULL
BEGIN
    SELECT RAISE(ABORT, 'jobs.run_after must be a UTC date-time such as ''2026-11-21 10:00:00''');
END;

CREATE TRIGGER jobs_run_after_checked_on_update
BEFORE UPDATE OF run_after ON jobs
WHEN NEW.run_after IS NOT NULL AND strftime('%Y-%m-%dT%H:%M:%fZ', NEW.run_after) IS NULL
BEGIN
    SELECT RAISE(ABORT, 'jobs.run_after must be a UTC date-time such as ''2026-11-21 10:00:00''');
END;

CREATE TRIGGER jobs_run_after_normalised_on_insert
AFTER INSERT ON jobs
WHEN NEW.run_after IS NULL OR NEW.run_after IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.run_after)
BEGIN
    UPDATE jobs
       SET run_after = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.run_after),
                                strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
     WHERE id = NEW.id;
END;

CREATE TRIGGER jobs_run_after_normalised_on_update
AFTER UPDATE OF run_after ON jobs
WHEN NEW.run_after IS NULL OR NEW.run_after IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.run_after)
BEGIN
    UPDATE jobs
       SET run_after = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.run_after),
                                strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
     WHERE id = NEW.id;
END;

-- A user who edits a job's URL gets it validated again.
CREATE TRIGGER jobs_url_changed
AFTER UPDATE OF url ON jobs
WHEN NEW.url IS NOT OLD.url
BEGIN
    UPDATE jobs SET host = NULL WHERE id = NEW.id;
END;

-- Keep updated_at honest for changes made by users (the daemon sets it itself).
CREATE TRIGGER jobs_touched
AFTER UPDATE ON jobs
WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE jobs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

CREATE TABLE results (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    url          TEXT    NOT NULL,
    final_url    TEXT    NOT NULL,
    http_status  INTEGER NOT NULL,
    content_type TEXT,
    title        TEXT,
    description  TEXT,
    -- JSON array of absolute http(s) URLs, fragments stripped, deduplicated, in page order.
    links        TEXT    NOT NULL DEFAULT '[]',
    -- JSON object: selector name -> array of matched strings.
    data         TEXT    NOT NULL DEFAULT '{}',
    bytes        INTEGER NOT NULL,
    elapsed_ms   INTEGER NOT NULL,
    fetched_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
