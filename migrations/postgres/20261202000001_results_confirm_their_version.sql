-- On a 304 Not Modified row, the full fetch whose content it confirmed (and copied): what
-- `crawlq body` prints for it, and what to join to. NULL on every other row.
ALTER TABLE results ADD COLUMN confirms_result_id BIGINT REFERENCES results (id) ON DELETE SET NULL;
-- Deleting a result looks up the rows that confirm it (to set their column NULL): without
-- this index, each deleted result scanned the whole table.
CREATE INDEX results_confirms ON results (confirms_result_id) WHERE confirms_result_id IS NOT NULL;

-- The view shows every column of `results`, as SQLite's does (which expands `*` when read).
CREATE OR REPLACE VIEW latest_results AS
SELECT r.* FROM results r
 WHERE r.fetch_no = (SELECT MAX(l.fetch_no) FROM results l WHERE l.job_id = r.job_id);
