//! Stored page bodies (`fetch.store_body`): gzip-compressed with `flate2` on the way into
//! the `bodies` table, and expanded again for `crawlq body`.

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

#[cfg(test)]
mod tests {
    #[test]
    fn a_body_survives_the_round_trip() {
        let page = "<html>caf\u{e9}</html>".repeat(100).into_bytes();
        let stored = super::gzip(&page);
        assert!(stored.len() < page.len() / 10);
        assert_eq!(super::gunzip(&stored).unwrap(), page);
        assert!(super::gunzip(b"not gzip").is_err());
    }
}
