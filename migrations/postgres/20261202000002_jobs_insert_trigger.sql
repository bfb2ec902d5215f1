-- What follows an INSERT into `jobs`, once per statement (never per row), reading the
-- statement's rows from its transition table:
-- - a NOTIFY on `crawlq_jobs` only if it inserted jobs awaiting admission (a user's INSERT,
--   `host` NULL), not for the links and redirect targets a daemon queues itself (their
--   `host` is set and they need no admission): those woke every daemon once per stored
--   batch for nothing;
-- - ids a user wrote by hand (`INSERT INTO jobs (id, url) ...`, which SQLite takes in its
--   stride) move the identity past them, or the next job the daemon queued would be given
--   one of them and be refused. Ids the identity handed out are never above its last
--   value, so this costs a comparison.
DROP TRIGGER jobs_inserted ON jobs;
-- It runs as its owner (who made the tables), since moving the identity needs a right on
-- it that a role allowed only to insert jobs does not have; search_path is pinned, as
-- for any such function.
CREATE OR REPLACE FUNCTION crawlq_jobs_inserted() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    ids CONSTANT regclass :=
        pg_get_serial_sequence(format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id')::regclass;
    highest bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE host IS NULL) THEN
        PERFORM pg_notify('crawlq_jobs', '');
    END IF;
    SELECT max(id) INTO highest FROM inserted;
    IF highest > COALESCE(pg_sequence_last_value(ids), 0) THEN
        PERFORM setval(ids, highest);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION crawlq_jobs_inserted();
