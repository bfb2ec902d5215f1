//! Sitemaps (the sitemaps.org protocol, 0.9): a `<urlset>` of page URLs or a
//! `<sitemapindex>` of further sitemaps, plain or gzip-compressed, read into owned data.
//! The only module that names `quick-xml`.
//!
//! Synchronous and free of I/O, so that it runs on a blocking thread and can be fuzzed:
//! [`read`] takes the body as fetched and returns what it lists, or a reason in words.
//! Memory is bounded by the caller's limits, not by what the site sends: the body is
//! already capped by the fetch, a gzip body is expanded only up to `max_bytes`, the XML is
//! read as a stream of events (no tree of the document is built), at most `max_urls`
//! entries are kept, and a `<loc>` or `<lastmod>` longer than any real one is left out.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::body::{self, GunzipError};

/// The longest `<loc>` kept (the protocol allows 2 048 characters; crawlq's URL limit is
/// a little larger): text past this is not collected, and the entry is left out.
const MAX_LOC_BYTES: usize = 8 * 1024;

/// The longest `<lastmod>` kept (a W3C datetime is at most 35 characters).
const MAX_LASTMOD_BYTES: usize = 64;

/// What one sitemap may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of XML, after gzip is expanded.
    pub max_bytes: u64,
    /// The most entries kept; the rest are counted, not kept.
    pub max_urls: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SitemapKind {
    /// `<urlset>`: its entries are pages.
    UrlSet,
    /// `<sitemapindex>`: its entries are sitemaps.
    Index,
}

/// One `<url>` or `<sitemap>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As written (trimmed): the protocol asks for an absolute URL.
    pub loc: String,
    /// As written (trimmed), a W3C datetime such as `2026-11-30` or
    /// `2026-11-30T10:00:00+00:00`; compared as text, never interpreted.
    pub lastmod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sitemap {
    pub kind: SitemapKind,
    /// The first `max_urls` entries with a `<loc>`, in document order.
    pub entries: Vec<Entry>,
    /// How many entries with a `<loc>` the sitemap lists, kept or not.
    pub listed: usize,
}

impl Sitemap {
    /// Entries past `max_urls`, counted but not kept.
    pub fn left_out(&self) -> usize {
        self.listed - self.entries.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SitemapError {
    #[error(
        "the sitemap is larger than crawl.sitemap_max_bytes ({limit} bytes) once uncompressed"
    )]
    TooLarge { limit: u64 },
    #[error("the sitemap looks gzip-compressed but {0}")]
    BadGzip(String),
    #[error("the sitemap is not well-formed XML (at byte {position}): {reason}")]
    Xml { position: u64, reason: String },
    #[error("not a sitemap: the root element is <{0}>, not <urlset> or <sitemapindex>")]
    NotASitemap(String),
    #[error("not a sitemap: the body holds no XML element")]
    NoRoot,
    #[error("the sitemap ends before its <{0}> element is closed (cut short?)")]
    Unclosed(String),
}

/// Reads a sitemap body as fetched: gzip (by its magic bytes, whatever the URL or the
/// Content-Type say) is expanded first, then the XML is parsed.
pub fn read(body: &[u8], limits: Limits) -> Result<Sitemap, SitemapError> {
    if body::is_gzip(body) {
        let xml = body::gunzip_capped(body, limits.max_bytes).map_err(|e| match e {
            GunzipError::TooLarge { limit } => SitemapError::TooLarge { limit },
            GunzipError::Corrupt(reason) => SitemapError::BadGzip(reason),
        })?;
        return parse(&xml, limits);
    }
    if body.len() as u64 > limits.max_bytes {
        return Err(SitemapError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    parse(body, limits)
}

/// Which field of an entry text is being collected for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Loc,
    Lastmod,
}

/// Parses sitemap XML. Elements are matched by local name, so a prefixed or unusual
/// namespace still reads; only `<loc>` and `<lastmod>` directly inside a `<url>` or
/// `<sitemap>` entry count (an image extension's `<image:loc>` one level deeper does not).
pub fn parse(xml: &[u8], limits: Limits) -> Result<Sitemap, SitemapError> {
    let mut reader = Reader::from_reader(xml);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = true;

    let mut kind = None;
    let mut root_name = String::new();
    let mut depth = 0usize;
    let mut entries = Vec::new();
    let mut listed = 0usize;
    // The entry being read, and the field whose text is being collected.
    let mut entry: Option<(Option<String>, Option<String>)> = None;
    let mut field: Option<(Field, String, bool)> = None;

    let xml_error = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| SitemapError::Xml {
        position: reader.error_position(),
        reason: e.to_string(),
    };
    loop {
        let event = reader.read_event().map_err(|e| xml_error(&reader, &e))?;
        match event {
            Event::Start(start) => {
                depth += 1;
                let name = start.local_name().as_ref().to_owned();
                match depth {
                    1 => {
                        if kind.is_some() {
                            return Err(SitemapError::Xml {
                                position: reader.buffer_position(),
                                reason: format!("a second root element <{name}>"),
                            });
                        }
                        kind = Some(match name.as_str() {
                            "urlset" => SitemapKind::UrlSet,
                            "sitemapindex" => SitemapKind::Index,
                            _ => return Err(SitemapError::NotASitemap(name)),
                        });
                        root_name = name;
                    }
                    2 if name == "url" || name == "sitemap" => entry = Some((None, None)),
                    3 if entry.is_some() => {
                        field = match name.as_str() {
                            "loc" => Some((Field::Loc, String::new(), false)),
                            "lastmod" => Some((Field::Lastmod, String::new(), false)),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                match depth {
                    2 => {
                        if let Some((Some(loc), lastmod)) = entry.take() {
                            listed += 1;
                            if entries.len() < limits.max_urls {
                                entries.push(Entry { loc, lastmod });
                            }
                        }
                    }
                    3 => {
                        if let (Some((which, text, too_long)), Some((loc, lastmod))) =
                            (field.take(), entry.as_mut())
                        {
                            let text = text.trim();
                            if !too_long && !text.is_empty() {
                                match which {
                                    Field::Loc => *loc = Some(text.to_owned()),
                                    Field::Lastmod => *lastmod = Some(text.to_owned()),
                                }
                            }
                        }
                    }
                    _ => {}
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(text) => collect(&mut field, &text.xml10_content()),
            Event::CData(text) => collect(&mut field, &text.xml10_content()),
            Event::GeneralRef(reference) => {
                let resolved: Cow<str> = match reference.resolve_char_ref() {
                    Ok(Some(c)) => Cow::Owned(c.to_string()),
                    Ok(None) => {
                        let name = reference.xml10_content();
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(text) => Cow::Borrowed(text),
                            None => {
                                return Err(xml_error(&reader, &format!("unknown entity &{name};")))
                            }
                        }
                    }
                    Err(e) => return Err(xml_error(&reader, &e)),
                };
                collect(&mut field, &resolved);
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions, a DOCTYPE: nothing listed.
            _ => {}
        }
    }
    if depth > 0 {
        return Err(SitemapError::Unclosed(root_name));
    }
    let kind = kind.ok_or(SitemapError::NoRoot)?;
    Ok(Sitemap {
        kind,
        entries,
        listed,
    })
}

/// Adds text to the field being collected, up to its cap (past it, the field is marked
/// too long and its text stops growing).
fn collect(field: &mut Option<(Field, String, bool)>, text: &str) {
    let Some((which, collected, too_long)) = field else {
        return;
    };
    let cap = match which {
        Field::Loc => MAX_LOC_BYTES,
        Field::Lastmod => MAX_LASTMOD_BYTES,
    };
    if *too_long || collected.len() + text.len() > cap {
        *too_long = true;
        collected.clear();
        return;
    }
    collected.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_urls: 3,
    };

    fn entry(loc: &str, lastmod: Option<&str>) -> Entry {
        Entry {
            loc: loc.to_owned(),
            lastmod: lastmod.map(str::to_owned),
        }
    }

    #[test]
    fn a_urlset_lists_its_pages_with_their_lastmod() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
            <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"
                    xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">
              <!-- a comment -->
              <url><loc> http://a.test/1?x=1&amp;y=2 </loc><lastmod>2026-11-30</lastmod>
                   <image:image><image:loc>http://a.test/pic.png</image:loc></image:image></url>
              <url><loc><![CDATA[http://a.test/2]]></loc><priority>0.5</priority></url>
              <url><lastmod>2026-01-01</lastmod></url>
              <url><loc>http://a.test/&#51;</loc></url>
            </urlset>"#;
        let sitemap = parse(xml.as_bytes(), LIMITS).unwrap();
        assert_eq!(sitemap.kind, SitemapKind::UrlSet);
        assert_eq!(
            sitemap.entries,
            [
                entry("http://a.test/1?x=1&y=2", Some("2026-11-30")),
                entry("http://a.test/2", None),
                entry("http://a.test/3", None),
            ]
        );
        assert_eq!(sitemap.left_out(), 0);
    }

    #[test]
    fn an_index_lists_sitemaps_and_extra_entries_are_counted_not_kept() {
        let xml: String = format!(
            "<sm:sitemapindex xmlns:sm='http://www.sitemaps.org/schemas/sitemap/0.9'>{}</sm:sitemapindex>",
            (0..5)
                .map(|n| format!("<sm:sitemap><sm:loc>http://a.test/s{n}.xml</sm:loc></sm:sitemap>"))
                .collect::<String>()
        );
        let sitemap = parse(xml.as_bytes(), LIMITS).unwrap();
        assert_eq!(sitemap.kind, SitemapKind::Index);
        assert_eq!(sitemap.entries.len(), 3);
        assert_eq!(sitemap.listed, 5);
        assert_eq!(sitemap.left_out(), 2);
    }

    #[test]
    fn what_is_not_a_sitemap_says_why() {
        let err = |xml: &str| parse(xml.as_bytes(), LIMITS).unwrap_err().to_string();
        assert!(err("<html><body>hi</body></html>").contains("root element is <html>"));
        assert!(err("just text").contains("no XML element"));
        assert!(err("").contains("no XML element"));
        assert!(err("<urlset><url><loc>x</loc></urlset>").contains("not well-formed XML"));
        assert!(err("<urlset><url><loc>x</loc>").contains("before its <urlset>"));
        assert!(err("<urlset>&nbsp;</urlset>").contains("unknown entity &nbsp;"));
        assert!(err("<urlset/><urlset/>").contains("second root element"));
        // The protocol asks for UTF-8: other bytes are refused, not guessed at.
        let latin1 = b"<urlset><url><loc>http://a.test/caf\xe9</loc></url></urlset>";
        assert!(parse(latin1, LIMITS).is_err());
    }

    #[test]
    fn a_byte_order_mark_is_fine() {
        let xml =
            "\u{feff}<?xml version=\"1.0\"?><urlset><url><loc>http://a.test/</loc></url></urlset>";
        assert_eq!(parse(xml.as_bytes(), LIMITS).unwrap().entries.len(), 1);
    }

    #[test]
    fn gzip_is_expanded_within_the_byte_limit() {
        let xml = b"<urlset><url><loc>http://a.test/</loc></url></urlset>";
        let gzipped = body::gzip(xml);
        assert_eq!(read(&gzipped, LIMITS).unwrap().entries.len(), 1);
        let small = Limits {
            max_bytes: 20,
            ..LIMITS
        };
        assert_eq!(
            read(&gzipped, small),
            Err(SitemapError::TooLarge { limit: 20 })
        );
        assert_eq!(read(xml, small), Err(SitemapError::TooLarge { limit: 20 }));
        assert!(matches!(
            read(&gzipped[..10], LIMITS),
            Err(SitemapError::BadGzip(_))
        ));
    }

    #[test]
    fn an_overlong_loc_is_left_out() {
        let xml = format!(
            "<urlset><url><loc>http://a.test/{}</loc></url><url><loc>http://a.test/ok</loc></url></urlset>",
            "a".repeat(MAX_LOC_BYTES)
        );
        let sitemap = parse(xml.as_bytes(), LIMITS).unwrap();
        assert_eq!(sitemap.entries, [entry("http://a.test/ok", None)]);
    }
}
