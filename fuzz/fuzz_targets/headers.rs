//! Response headers crawlq acts on: `Retry-After` (seconds or an HTTP-date; it pauses a
//! whole host) and `Content-Type` (whether a body is parsed, and with which charset, with
//! `<meta charset>` and byte-order marks). Nothing may panic; a pause is what the value
//! asks, never more than `retry.max_retry_after_secs`, and never longer at a later clock;
//! decoding keeps UTF-8 as it is and does not grow a body by more than UTF-8 can.
//!
//! Input, one field a line: the status, the clock (seconds since 1970), a second reading
//! that many seconds later, `retry.max_retry_after_secs`, the `Retry-After` value, the
//! `Content-Type` (an empty line: none); the rest is the body, bytes as fetched.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

use crawlq::{crawl, fetch, parse};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(7, |&b| b == b'\n');
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (status, now, later, cap) = (field(), field(), field(), field());
    let (retry_after, content_type) = (field(), field());
    let body = parts.next().unwrap_or_default();
    let number = |text: &str| text.trim().parse::<u64>().ok();
    let status = number(&status)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(503);
    // Clocks up to the year 9999 (what an HTTP-date can say, and past it).
    let now =
        SystemTime::UNIX_EPOCH + Duration::from_secs(number(&now).unwrap_or(0) % 300_000_000_000);
    let later = now + Duration::from_secs(number(&later).unwrap_or(0) % 300_000_000_000);
    // The settings check allows 0 to 86400 seconds.
    let cap = Duration::from_secs(number(&cap).unwrap_or(3600) % 86_401);
    let content_type = (!content_type.is_empty()).then_some(content_type.as_str());

    let asked = fetch::retry_after(&retry_after, now);
    let trimmed = retry_after.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = trimmed.parse().unwrap_or(u64::MAX);
        assert_eq!(asked, Some(Duration::from_secs(seconds)), "delay-seconds");
    }
    let asked_later = fetch::retry_after(&retry_after, later);
    assert_eq!(asked.is_some(), asked_later.is_some());
    assert!(asked_later <= asked, "a later clock asks for a longer wait");

    let pause = crawl::retry_after_pause(status, &retry_after, now, cap);
    if matches!(status, 429 | 503) {
        assert_eq!(pause, asked.map(|asked| asked.min(cap)));
    } else {
        assert_eq!(pause, None, "status {status} paused its host");
    }
    if let Some(pause) = pause {
        assert!(pause <= cap, "pause {pause:?} above the cap {cap:?}");
    }

    if let Some(value) = content_type {
        assert_eq!(
            parse::is_html(Some(value)),
            parse::is_html(Some(value.to_ascii_uppercase().as_str())),
            "media types are case-insensitive"
        );
    }
    let text = parse::decode_html(body, content_type);
    // No decoder makes more than 3 bytes of UTF-8 per byte it reads (a U+FFFD for a bad
    // byte is 3), so the 10 MB body cap also bounds the text parsed.
    assert!(
        text.len() <= 3 * body.len(),
        "{} bytes decoded to {}",
        body.len(),
        text.len()
    );
    let as_utf8 = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let utf8_declared =
        content_type.is_some_and(|c| c.eq_ignore_ascii_case("text/html; charset=utf-8"));
    let nothing_declared = content_type.is_none()
        && !body[..body.len().min(1024)]
            .to_ascii_lowercase()
            .windows(5)
            .any(|w| w == b"<meta");
    let utf16_bom = body.starts_with(b"\xFE\xFF") || body.starts_with(b"\xFF\xFE");
    if let Some(rest) = body.strip_prefix(UTF8_BOM) {
        assert_eq!(text, as_utf8(rest), "a UTF-8 byte-order mark wins");
    } else if !utf16_bom && (utf8_declared || nothing_declared) {
        assert_eq!(text, as_utf8(body), "UTF-8 decoded");
    }
});
