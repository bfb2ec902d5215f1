-- Operator views and the indexes `crawlq status` needs to stay cheap on a big database.

-- Fetches per minute / hour: results by time.
CREATE INDEX results_fetched_at ON results (fetched_at);
-- Jobs waiting for a retry (recrawls waiting for their next fetch have attempts = 0).
CREATE INDEX jobs_retrying ON jobs (updated_at) WHERE status = 'queued' AND error IS NOT NULL;

-- One row per host the daemon has admitted jobs for: what is waiting, what came of the
-- rest, whether the host is paused (a Retry-After, or an unreachable robots.txt) and what
-- its robots.txt said. Read-only; it scans `jobs`, so it is for people and dashboards,
-- not for a tight loop.
CREATE VIEW host_stats AS
WITH per_host AS (
    SELECT host,
           SUM(status = 'queued')                                   AS queued,
           SUM(status = 'queued'
               AND run_after <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) AS due,
           SUM(status = 'running')                                  AS running,
           SUM(status = 'done')                                     AS done,
           SUM(status = 'failed')                                   AS failed,
           SUM(status = 'skipped')                                  AS skipped,
           SUM(status = 'cancelled')                                AS cancelled,
           SUM(status = 'skipped'
               AND IFNULL(error, '') LIKE 'disallowed by robots.txt%') AS robots_skipped,
           MAX(finished_at)                                         AS last_finished_at
      FROM jobs
     WHERE host IS NOT NULL
     GROUP BY host
)
SELECT p.host,
       p.queued, p.due, p.running, p.done, p.failed, p.skipped, p.cancelled,
       -- The share of finished fetches that failed (by their current status, so a job
       -- waiting for its next recrawl counts as neither).
       ROUND(CAST(p.failed AS REAL) / NULLIF(p.done + p.failed, 0), 3) AS error_rate,
       p.last_finished_at,
       -- Set only while the pause lasts.
       CASE WHEN h.paused_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
            THEN h.paused_until END                                  AS paused_until,
       CASE WHEN h.paused_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
            THEN h.pause_reason END                                  AS pause_reason,
       -- The newest robots.txt answer of any of the host's origins (http or https, any
       -- port): 'rules' (2xx), 'allow all' (4xx, or redirects that led nowhere),
       -- 'unreachable' (5xx, 429, no answer), or NULL when none was fetched (or
       -- crawl.obey_robots is off). The ranges ("…host:" < origin < "…host;") find
       -- "http://host:PORT" through the primary key instead of reading every row.
       (SELECT CASE WHEN r.http_status BETWEEN 200 AND 299 THEN 'rules'
                    WHEN r.http_status IS NULL OR r.http_status = 429
                         OR r.http_status >= 500 THEN 'unreachable'
                    ELSE 'allow all' END
          FROM robots r
         WHERE r.origin IN ('http://' || p.host, 'https://' || p.host)
            OR (r.origin > 'http://' || p.host || ':' AND r.origin < 'http://' || p.host || ';')
            OR (r.origin > 'https://' || p.host || ':' AND r.origin < 'https://' || p.host || ';')
         ORDER BY r.fetched_at DESC LIMIT 1)                         AS robots,
       p.robots_skipped
  FROM per_host p
  LEFT JOIN hosts h ON h.host = p.host;
