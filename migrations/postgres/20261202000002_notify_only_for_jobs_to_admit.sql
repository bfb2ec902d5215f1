-- A NOTIFY on `crawlq_jobs` only for statements that inserted jobs awaiting admission (a
-- user's INSERT, whose `host` is NULL), not for the links and redirect targets a daemon
-- queues itself (their `host` is set, and they need no admission): those woke every daemon
-- once per stored batch for nothing. Still one NOTIFY per statement, never per row.
DROP TRIGGER jobs_inserted ON jobs;
CREATE OR REPLACE FUNCTION crawlq_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE host IS NULL) THEN
        PERFORM pg_notify('crawlq_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION crawlq_jobs_inserted();
