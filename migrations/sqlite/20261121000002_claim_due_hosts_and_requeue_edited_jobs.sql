-- Claiming looks only at hosts whose earliest queued job is due (one seek per host), so
-- hosts waiting on retry backoff do not take a turn's slots.
CREATE INDEX jobs_due ON jobs (host, run_after) WHERE status = 'queued' AND host IS NOT NULL;

-- A user who edits a job's URL gets it validated again. A running job also goes back to
-- the queue: its lease is gone, so the old URL's result cannot be stored under the new URL.
DROP TRIGGER jobs_url_changed;
CREATE TRIGGER jobs_url_changed
AFTER UPDATE OF url ON jobs
WHEN NEW.url IS NOT OLD.url
BEGIN
    UPDATE jobs
       SET host = NULL,
           status = CASE WHEN status = 'running' THEN 'queued' ELSE status END,
           lease_owner = NULL,
           lease_expires_at = NULL
     WHERE id = NEW.id;
END;
