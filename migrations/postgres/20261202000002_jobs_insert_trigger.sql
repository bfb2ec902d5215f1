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
-- it that a role allowed only to insert jobs does not have; search_path is pinned and
-- nobody else may call it, as for any such function. Statements that move the identity
-- take turns (a transaction-scoped advisory lock), so two cannot move it backwards.
CREATE OR REPLACE FUNCTION crawlq_jobs_inserted() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids CONSTANT regclass :=
        pg_get_serial_sequence(format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id')::regclass;
    highest bigint;
    handed_out bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE host IS NULL) THEN
        PERFORM pg_notify('crawlq_jobs', '');
    END IF;
    SELECT max(id) INTO highest FROM inserted;
    -- The highest id the identity has handed out or will skip (a sequence not yet called,
    -- or restarted, hands out last_value next).
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s', ids)
        INTO handed_out;
    IF highest > handed_out THEN
        PERFORM pg_advisory_xact_lock(7165897122648252265);  -- the bytes of 'crawlq_i'
        EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s', ids)
            INTO handed_out;
        IF highest > handed_out THEN
            PERFORM setval(ids, highest);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;
REVOKE EXECUTE ON FUNCTION crawlq_jobs_inserted() FROM PUBLIC;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION crawlq_jobs_inserted();
