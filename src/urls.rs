//! The rules a URL must pass to be fetched, and the host key rate limits use: a leaf that
//! admission (`job`), link following (`follow`) and the HTTP client (`fetch`) all ask,
//! so none of them has to import another for it.

use url::Url;

/// The longest URL crawlq accepts; longer ones are almost always garbage or an attack, and
/// most servers refuse them anyway.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// Parses a URL a user gave us; surrounding whitespace is ignored, as browsers do.
pub fn check_url(raw: &str) -> Result<Url, String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!(
            "invalid URL: {} bytes long, the limit is {MAX_URL_BYTES}",
            raw.len()
        ));
    }
    if raw.trim().is_empty() {
        return Err("invalid URL: empty".to_owned());
    }
    if raw.contains(char::REPLACEMENT_CHARACTER) {
        return Err(format!("invalid URL {raw:?}: not valid UTF-8 text"));
    }
    let url = Url::parse(raw.trim()).map_err(|e| format!("invalid URL {raw:?}: {e}"))?;
    check_fetchable(&url)?;
    Ok(url)
}

/// Only http and https with a host can be fetched (also checked on every redirect hop).
pub fn check_fetchable(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "unsupported URL scheme {other:?} in {url}: only http and https can be fetched"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL {url}: no host"));
    }
    Ok(())
}

/// The key rate limits and fairness use: the host name without port, lower case.
pub fn host_key(url: &Url) -> Option<String> {
    url.host_str().map(|h| h.to_ascii_lowercase())
}
