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
           SUM(status = 'skipped' AND error LIKE 'disallowed by robots.txt%') AS robots_skipped,
           MAX(finished_at)                                         AS last_finished_at
      FROM jobs
     WHERE host IS NOT NULL
     GROUP BY host
)
SELECT p.host,
       p.queued, p.due, p.running, p.done, p.failed, p.skipped, p.cancelled,
       -- Failed jobs among those that got an answer one way or the other.
       ROUND(CAST(p.failed AS REAL) / NULLIF(p.done + p.failed, 0), 3) AS error_rate,
       p.last_finished_at,
       -- Set only while the pause lasts.
       CASE WHEN h.paused_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
            THEN h.paused_until END                                  AS paused_until,
       CASE WHEN h.paused_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
            THEN h.pause_reason END                                  AS pause_reason,
       -- The newest robots.txt answer of any of the host's origins (schemes, ports):
       -- 'rules', 'allow all' (4xx, or redirects that led nowhere), 'unreachable'
       -- (5xx, 429, no answer), or NULL when none was fetched (or obey_robots is off).
       (SELECT CASE WHEN r.http_status BETWEEN 200 AND 299 THEN 'rules'
                    WHEN r.http_status IS NULL OR r.http_status = 429
                         OR r.http_status >= 500 THEN 'unreachable'
                    ELSE 'allow all' END
          FROM robots r
         WHERE substr(r.origin, instr(r.origin, '://') + 3) = p.host
            OR substr(r.origin, instr(r.origin, '://') + 3, length(p.host) + 1) = p.host || ':'
         ORDER BY r.fetched_at DESC LIMIT 1)                         AS robots,
       p.robots_skipped
  FROM per_host p
  LEFT JOIN hosts h ON h.host = p.host;
