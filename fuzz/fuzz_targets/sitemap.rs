//! Sitemaps: a body as fetched (plain XML, or gzip by its magic bytes) read as the daemon
//! reads a sitemap job's body. Nothing may panic, and the limits hold: at most `max_urls`
//! entries kept, every one counted, each with a `<loc>`, and an error for a body over
//! `max_bytes` (after gzip is expanded).
//!
//! Input: the first two bytes choose the limits (entries kept: 0 to 255; bytes: 1 KiB to
//! 256 KiB, so the size cap is reached too); the rest is the body.

#![no_main]

use libfuzzer_sys::fuzz_target;

use crawlq::sitemap::{self, Limits, SitemapError};

fuzz_target!(|data: &[u8]| {
    let (Some(&urls), Some(&kib)) = (data.first(), data.get(1)) else {
        return;
    };
    let body = &data[2..];
    let limits = Limits {
        max_bytes: (u64::from(kib) + 1) * 1024,
        max_urls: usize::from(urls),
    };
    match sitemap::read(body, limits) {
        Ok(read) => {
            assert!(read.entries.len() <= limits.max_urls, "{read:?}");
            assert!(read.listed >= read.entries.len(), "{read:?}");
            assert_eq!(read.left_out(), read.listed - read.entries.len());
            for entry in &read.entries {
                assert!(!entry.loc.is_empty(), "{read:?}");
                assert_eq!(entry.loc.trim(), entry.loc, "trimmed");
            }
            // Plain XML over the cap is refused before it is parsed.
            if !body.starts_with(&[0x1f, 0x8b]) {
                assert!(body.len() as u64 <= limits.max_bytes);
            }
        }
        Err(SitemapError::TooLarge { limit }) => assert_eq!(limit, limits.max_bytes),
        Err(_) => {}
    }
});
