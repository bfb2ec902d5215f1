-- Recrawls and page history.
--
-- A job with recrawl_every (seconds) goes back to `queued` that long after each fetch
-- finishes, and `results` keeps one row per fetch: (job_id, fetch_no) instead of one row
-- per job. `latest_results` is the old one-row-per-job shape.
-- At most ten years: beyond that SQLite's date arithmetic gives up.
ALTER TABLE jobs ADD COLUMN recrawl_every INTEGER
    CHECK (recrawl_every IS NULL
           OR (typeof(recrawl_every) IN ('integer', 'real')
               AND recrawl_every >= 1 AND recrawl_every <= 315360000));
-- Which fetch of this job is current: 1 for the first, one more for each recrawl.
ALTER TABLE jobs ADD COLUMN fetch_no INTEGER NOT NULL DEFAULT 1;

CREATE TABLE results_by_fetch (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    fetch_no     INTEGER NOT NULL DEFAULT 1,
    url          TEXT    NOT NULL,
    final_url    TEXT    NOT NULL,
    http_status  INTEGER NOT NULL,
    content_type TEXT,
    title        TEXT,
    description  TEXT,
    links        TEXT    NOT NULL DEFAULT '[]',
    data         TEXT    NOT NULL DEFAULT '{}',
    bytes        INTEGER NOT NULL,
    elapsed_ms   INTEGER NOT NULL,
    fetched_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- 1 when the server answered 304 Not Modified to a conditional GET: content_type,
    -- title, description, links and data are then those of the fetch it confirmed.
    not_modified INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, fetch_no)
);
INSERT INTO results_by_fetch (id, job_id, fetch_no, url, final_url, http_status, content_type,
                              title, description, links, data, bytes, elapsed_ms, fetched_at)
SELECT id, job_id, 1, url, final_url, http_status, content_type, title, description, links,
       data, bytes, elapsed_ms, fetched_at
  FROM results
 -- Results of jobs deleted while foreign keys were off (the sqlite3 shell's default)
 -- belong to nothing; keeping them would break the new table's foreign key.
 WHERE job_id IN (SELECT id FROM jobs);
DROP TABLE results;
ALTER TABLE results_by_fetch RENAME TO results;

-- The newest fetch of every job: what `results` held before this migration.
CREATE VIEW latest_results AS
SELECT r.* FROM results r
 WHERE r.fetch_no = (SELECT MAX(l.fetch_no) FROM results l WHERE l.job_id = r.job_id);

-- Conditional GET: the ETag / Last-Modified a URL (canonical form) last came with, and the
-- result holding that version. A later fetch of the URL (a recrawl, or a new job) sends
-- them back, and a 304 answer copies that result.
CREATE TABLE validators (
    url           TEXT PRIMARY KEY,
    etag          TEXT,
    last_modified TEXT,
    result_id     INTEGER NOT NULL REFERENCES results (id) ON DELETE CASCADE
);
CREATE INDEX validators_result ON validators (result_id);

-- Raw bodies (after Content-Encoding), gzip-compressed, when fetch.store_body is on. Kept
-- apart so that results stay light to scan. `crawlq body RESULT_ID` prints one.
CREATE TABLE bodies (
    result_id INTEGER PRIMARY KEY REFERENCES results (id) ON DELETE CASCADE,
    encoding  TEXT    NOT NULL DEFAULT 'gzip',
    body      BLOB    NOT NULL
);
