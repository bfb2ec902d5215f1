-- Crawls: a job with max_depth > 0 follows the links of its page. The links it follows
-- become child jobs of the same crawl (same root_id), one depth further. Defaults keep a
-- one-column INSERT a single-page job.
ALTER TABLE jobs ADD COLUMN max_depth INTEGER NOT NULL DEFAULT 0;
-- Which links a crawl may follow, relative to the host of its root job's URL:
-- 'host' the same host, 'domain' the same registrable domain (www.a.com ~ b.a.com), 'any'.
ALTER TABLE jobs ADD COLUMN scope TEXT NOT NULL DEFAULT 'host'
    CHECK (scope IN ('host', 'domain', 'any'));
-- Optional regular expressions over absolute URLs: a link is followed only if it matches
-- `allow` (when set) and does not match `deny` (when set).
ALTER TABLE jobs ADD COLUMN allow TEXT;
ALTER TABLE jobs ADD COLUMN deny TEXT;
-- Optional budget: jobs the crawl may hold in all, root included.
ALTER TABLE jobs ADD COLUMN max_pages INTEGER;
ALTER TABLE jobs ADD COLUMN parent_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL;
-- The crawl this job belongs to: its root job's id (a root's own id), set at admission.
ALTER TABLE jobs ADD COLUMN root_id INTEGER;
ALTER TABLE jobs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
-- Written by the daemon: the URL in canonical form (what dedupe compares), the root's host
-- (what scope compares), and on a root the number of jobs its crawl holds (for max_pages).
ALTER TABLE jobs ADD COLUMN canonical_url TEXT;
ALTER TABLE jobs ADD COLUMN crawl_host TEXT;
ALTER TABLE jobs ADD COLUMN crawl_size INTEGER NOT NULL DEFAULT 1;

-- Jobs admitted before this migration start crawls of their own.
UPDATE jobs SET root_id = id WHERE host IS NOT NULL;

-- One job per URL per crawl; memory does not grow with the URLs seen, the index does.
CREATE UNIQUE INDEX jobs_crawl_url ON jobs (root_id, canonical_url)
    WHERE root_id IS NOT NULL AND canonical_url IS NOT NULL;
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
