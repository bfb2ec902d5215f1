-- Sitemaps. `kind` says what a job fetches: 'page' (the default: parsed as HTML, its links
-- followed in a crawl) or 'sitemap' (a sitemap or sitemap index whose URLs are queued as
-- jobs of its crawl). Users set it on INSERT: INSERT INTO jobs (url, kind) VALUES (…, 'sitemap').
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'page' CHECK (kind IN ('page', 'sitemap'));
-- For a job queued from a sitemap: the <lastmod> the sitemap gave for its URL when it was
-- last queued, as written (a W3C datetime, compared as text). A re-read of the sitemap
-- (recrawl_every) queues the page again only if this changed. NULL otherwise.
ALTER TABLE jobs ADD COLUMN lastmod TEXT;
