//! Stored page bodies (`fetch.store_body`): gzip-compressed with `flate2` on the way into
//! the `bodies` table, and expanded again for `crawlq body`. Also the one place gzip sent
//! by a site is expanded (a `.xml.gz` sitemap), with a cap on what it may grow to.

use std::io::{Read, Write};

use flate2::Compression;

/// gzip at a fast level: the daemon compresses every body it fetches, so speed matters
/// more than the last few percent of size.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), Compression::fast());
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .expect("writing to a Vec cannot fail")
}

/// The body as fetched, from what [`gzip`] stored.
pub fn gunzip(stored: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    flate2::read::GzDecoder::new(stored).read_to_end(&mut body)?;
    Ok(body)
}

/// Whether `bytes` start like a gzip stream (RFC 1952 magic bytes).
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Why [`gunzip_capped`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GunzipError {
    #[error("it is larger than {limit} bytes once uncompressed")]
    TooLarge { limit: u64 },
    #[error("it is not valid gzip: {0}")]
    Corrupt(String),
}

/// Expands gzip that came from the network, reading at most `limit` bytes out of it: a
/// gzip bomb (a few KB that expand to gigabytes) stops at the cap instead of filling
/// memory. Concatenated members (what `cat a.gz b.gz` makes) are read as one stream.
pub fn gunzip_capped(gzipped: &[u8], limit: u64) -> Result<Vec<u8>, GunzipError> {
    let mut body = Vec::with_capacity(gzipped.len().saturating_mul(4).min(1 << 20));
    // One byte past the limit tells "exactly at the limit" from "over it".
    flate2::read::MultiGzDecoder::new(gzipped)
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| GunzipError::Corrupt(e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(GunzipError::TooLarge { limit });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn network_gzip_is_expanded_up_to_its_cap() {
        let xml = b"<urlset/>".repeat(1000);
        let gzipped = super::gzip(&xml);
        assert!(super::is_gzip(&gzipped) && !super::is_gzip(&xml));
        assert_eq!(super::gunzip_capped(&gzipped, 9000).unwrap(), xml);
        assert_eq!(
            super::gunzip_capped(&gzipped, 8999),
            Err(super::GunzipError::TooLarge { limit: 8999 })
        );
        assert!(matches!(
            super::gunzip_capped(&gzipped[..gzipped.len() / 2], 1 << 20),
            Err(super::GunzipError::Corrupt(_))
        ));
    }

    #[test]
    fn a_body_survives_the_round_trip() {
        let page = "<html>caf\u{e9}</html>".repeat(100).into_bytes();
        let stored = super::gzip(&page);
        assert!(stored.len() < page.len() / 10);
        assert_eq!(super::gunzip(&stored).unwrap(), page);
        assert!(super::gunzip(b"not gzip").is_err());
    }
}
