-- On a 304 Not Modified row, the full fetch whose content it confirmed (and copied): what
-- `crawlq body` prints for it, and what to join to. NULL on every other row, and on 304
-- rows stored before this migration.
ALTER TABLE results ADD COLUMN confirms_result_id INTEGER REFERENCES results (id) ON DELETE SET NULL;
-- Deleting a result looks up the rows that confirm it (to set their column NULL): without
-- this index, each deleted result scanned the whole table.
CREATE INDEX results_confirms ON results (confirms_result_id) WHERE confirms_result_id IS NOT NULL;
