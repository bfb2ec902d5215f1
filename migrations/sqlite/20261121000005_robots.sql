-- robots.txt answers per origin ('https://example.com', 'http://a.test:8080'), so a restart
-- or a second daemon does not fetch them again. Written by the daemon; readable by users.
CREATE TABLE robots (
    origin      TEXT PRIMARY KEY,
    -- The final HTTP status (after up to 5 redirects), NULL when no answer came.
    http_status INTEGER,
    -- The body as sent (at most 512 KiB), for a 2xx answer.
    body        BLOB,
    -- Why no answer came (network error, timeout, bad redirect).
    error       TEXT,
    fetched_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- The answer is trusted until this UTC time; after it, robots.txt is fetched again.
    expires_at  TEXT NOT NULL
);
