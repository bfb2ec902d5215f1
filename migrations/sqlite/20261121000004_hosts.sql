-- Per-host state that must survive a restart. Written by the daemon; readable by users.
CREATE TABLE hosts (
    host         TEXT PRIMARY KEY,
    -- No request goes to this host before this UTC time (a 429/503 Retry-After).
    paused_until TEXT,
    pause_reason TEXT,
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
