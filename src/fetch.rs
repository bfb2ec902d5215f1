//! HTTP with `surf`: one GET, body capped, time-limited, errors in words.
//!
//! surf is unmaintained; this is the only module that names it, so the HTTP client can be
//! swapped here alone. We use surf's curl backend (isahc) through our own small adapter
//! ([`CurlBackend`]): it sets a connect timeout, turns curl's redirect handling off, and,
//! unlike http-client's adapter, does not panic on a status http-types does not know
//! (e.g. 299) or on header bytes that are not ASCII. Redirects are followed by
//! the caller ([`crate::crawl`]) so every hop passes the rate limiter; surf's Redirect
//! middleware is deliberately not used (it sends an extra request past the limiter).
//! `surf::Error` is not a `std::error::Error`: it is turned into [`FetchError`] here.
//!
//! TLS: OpenSSL is built into crawlq, so the CA certificates are the system's, found here
//! ([`trusted_cas`]), or `fetch.ca_file`. A certificate that fails verification is a
//! [`FetchError::Certificate`], never retried; isahc drops curl's reason for it, so the
//! handshake is made once more with curl's blocking API to learn it ([`tls_failure`]).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, FutureExt};
use isahc::auth::{Authentication, Credentials};
use isahc::config::{CaCertificate, Configurable, Dialer, DnsCache, RedirectPolicy};
use url::Url;

use crate::limits::RateLimits;
use crate::runtime;
use crate::settings::{FetchSettings, LimitSettings, Proxy};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FetchError {
    #[error("timed out after {} connecting to {host}", secs(*.after))]
    ConnectTimeout { host: String, after: Duration },
    #[error("timed out after {} waiting for {host}", secs(*.after))]
    Timeout { host: String, after: Duration },
    #[error("could not resolve host {host}")]
    Resolve { host: String },
    #[error("could not connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("response body is larger than {setting} ({limit} bytes)")]
    BodyTooLarge { limit: u64, setting: &'static str },
    #[error("network error talking to {host}: {reason}")]
    Network { host: String, reason: String },
    #[error(
        "refused to connect to {host}: it resolves to {address}, a {kind} address \
         (fetch.block_private_addresses is on)"
    )]
    Refused {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
    /// crawlq's own fault, not the site's: see [`FetchError::is_internal`].
    #[error("could not connect to {host}: crawlq has run out of file descriptors")]
    OutOfDescriptors { host: String },
    #[error("the HTTP client stopped while talking to {host} ({reason}); it was restarted")]
    ClientFailed { host: String, reason: String },
    /// The server's TLS certificate failed verification: retrying cannot fix it.
    #[error(
        "the TLS certificate of {host} was not accepted: {reason}{}",
        ca_advice(reason)
    )]
    Certificate { host: String, reason: String },
    /// The TLS handshake failed for another reason (TLS spoken to a plain port, no
    /// protocol version in common, a connection reset mid-handshake).
    #[error("TLS handshake with {host} failed: {reason}")]
    Handshake { host: String, reason: String },
    /// A failure on the way through a proxy: the proxy itself, or the site behind it
    /// (curl does not tell which), named by the proxy (`proxy` is shown masked).
    #[error("proxy {proxy}: {problem}")]
    Proxy {
        proxy: String,
        host: String,
        problem: String,
    },
    #[error(
        "proxy {proxy} answered 407 Proxy Authentication Required: the user:password@ in \
         its URL is missing or wrong"
    )]
    ProxyAuth { proxy: String, host: String },
}

/// For a certificate from an issuer crawlq does not trust: where to name one it should.
fn ca_advice(reason: &str) -> &'static str {
    let unknown_issuer = ["issuer", "self-signed", "self signed", "unable to get"]
        .iter()
        .any(|words| reason.contains(words));
    if unknown_issuer {
        " (to trust a private CA, name its certificate in fetch.ca_file)"
    } else {
        ""
    }
}

impl FetchError {
    /// Whether the failure is crawlq's and not the site's: the job goes back to the queue
    /// without using up an attempt.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            FetchError::OutOfDescriptors { .. } | FetchError::ClientFailed { .. }
        )
    }

    /// Whether nothing could be reached at all: the name does not resolve, or no
    /// connection could be made (refused, unreachable, timed out). A proxy failing counts:
    /// it says nothing about the site (its robots.txt is not "unreachable" for it). A
    /// proxy refusing crawlq's credentials is not transient, and fails the job at once.
    pub fn is_no_connection(&self) -> bool {
        matches!(
            self,
            FetchError::Resolve { .. }
                | FetchError::Connect { .. }
                | FetchError::ConnectTimeout { .. }
                | FetchError::Proxy { .. }
        )
    }

    /// Whether trying the same request later might work. A proxy that is down may be back
    /// later; one that refuses crawlq's credentials wants the configuration changed.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            FetchError::BodyTooLarge { .. }
                | FetchError::Refused { .. }
                | FetchError::Certificate { .. }
                | FetchError::ProxyAuth { .. }
        )
    }

    /// The same failure met through `proxy`: the connection crawlq makes is to the proxy,
    /// so a refused connection, a connect timeout or a broken exchange may be the proxy's
    /// or the site's (curl reports a tunnel the proxy would not open as a failed connect),
    /// and the message names the proxy.
    fn through(self, proxy: &Proxy) -> FetchError {
        let (host, problem) = match &self {
            FetchError::ConnectTimeout { host, after } => (
                host,
                format!(
                    "timed out after {} connecting through it to {host}",
                    secs(*after)
                ),
            ),
            FetchError::Connect { host, .. } => (
                host,
                format!("refused the connection or is unreachable, or could not connect to {host}"),
            ),
            FetchError::Network { host, reason } => (
                host,
                format!("network error on the way to {host}: {reason}"),
            ),
            _ => return self,
        };
        FetchError::Proxy {
            proxy: proxy.to_string(),
            host: host.clone(),
            problem,
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// A response as crawlq needs it. For redirects the body is not read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    /// The `Retry-After` header as sent (see [`retry_after`]).
    pub retry_after: Option<String>,
    /// `ETag` and `Last-Modified`, for a conditional GET of the same URL later.
    pub validators: Validators,
    pub body: Vec<u8>,
    pub elapsed: Duration,
    /// "HTTP/1.1", "HTTP/2.0": the protocol the exchange used (HTTP/2 when a server offers
    /// it through ALPN).
    pub protocol: &'static str,
    /// How long the server took from our request being sent to the first byte of its
    /// answer, by curl's timers (its pretransfer and starttransfer times); zero when curl
    /// did not say. The request was on the wire no later than this before the answer was
    /// in (see [`Fetcher::get`]).
    pub server_wait: Duration,
}

/// What identifies the version of a page we have: sent back as `If-None-Match` and
/// `If-Modified-Since`, so an unchanged page costs the server a `304` and no body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// How one GET differs from a plain one.
#[derive(Clone, Copy, Default)]
pub struct GetOptions<'a> {
    /// The rate limits to pass once more just before the request is handed to the HTTP
    /// client (see [`RateLimits::until_sendable`]).
    pub pace: Option<&'a RateLimits>,
    /// Keep only the first this many bytes of the body instead of failing on a larger one
    /// (robots.txt); never more than `fetch.max_body_bytes`.
    pub cut_body_at: Option<u64>,
    /// Ask for the page only if it changed since the copy these came with.
    pub if_changed: Option<&'a Validators>,
    /// The body cap and the setting that holds it, in place of `fetch.max_body_bytes`
    /// (a sitemap's own cap, `crawl.sitemap_max_bytes`).
    pub max_body: Option<(u64, &'static str)>,
}

impl Response {
    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status) && self.location.is_some()
    }
}

pub struct Fetcher {
    /// The HTTP client and how many times it was restarted; replaced by a new one if it
    /// stops (see [`Fetcher::restart_client`]).
    client: RwLock<(u64, surf::Client)>,
    settings: FetchSettings,
    /// The connections the client keeps.
    pool: Pool,
    /// Host names resolved lately (curl's own DNS cache is off).
    dns: crate::dns::DnsCache,
    /// The hosts whose connections are kept open for their next request (see
    /// [`Fetcher::keep_connections_to`]).
    kept_hosts: Mutex<HashSet<String>>,
    /// The CA certificates servers are checked against (see [`trusted_cas`]).
    trusted_cas: Option<PathBuf>,
}

impl Fetcher {
    /// `limits.max_in_flight` requests at once at most (the scheduler's cap): the
    /// connection cache is sized from the descriptors that leave. A connection idle for
    /// twice the default per-host interval (at least 1 s) is closed: its host's next
    /// request would have come by then, so the host is done, and a cache full of such
    /// connections makes curl walk all of them each time one is handed back (13 % of
    /// the HTTP client's thread at 10 000 hosts, perf).
    pub fn new(settings: &FetchSettings, limits: &LimitSettings) -> Result<Fetcher, String> {
        let pool = Pool {
            idle_connections: crate::descriptors::idle_connections(limits.max_in_flight.get()),
            idle_for: (limits.per_host.rate.period() * 2).max(Duration::from_secs(1)),
        };
        let trusted_cas = trusted_cas(settings);
        let client = build_client(settings, pool, trusted_cas.as_deref())?;
        tracing::debug!(?pool, ?trusted_cas, "HTTP client");
        let proxies = &settings.proxies;
        for proxy in proxies
            .default
            .iter()
            .chain(proxies.hosts.values().flatten())
        {
            // Checked as a URL with the settings; the HTTP client's own URI type is
            // stricter about some host names, and a request is a late place to find out.
            if let Err(e) = proxy.address().parse::<isahc::http::Uri>() {
                return Err(format!("the HTTP client does not take proxy {proxy}: {e}"));
            }
        }
        if let Some(proxy) = &proxies.default {
            tracing::info!(%proxy, no_proxy = ?proxies.no_proxy, "requests go through a proxy");
        }
        Ok(Fetcher {
            client: RwLock::new((0, client)),
            settings: settings.clone(),
            pool,
            dns: crate::dns::DnsCache::default(),
            kept_hosts: Mutex::new(HashSet::new()),
            trusted_cas,
        })
    }

    /// Kept-alive connections the client may hold.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_connections
    }

    /// Whether requests to `host` ask to keep their connection open: the scheduler names
    /// the hosts it is crawling at a pace that brings their next request soon (at most
    /// what the connection cache holds). A request to any other host (a redirect to a
    /// new one) keeps its connection too while those are few. Otherwise it asks the
    /// server to close it: with more hosts than the cache holds, a connection would be
    /// evicted before it is used again, and each eviction walks the whole cache (11 % of
    /// the CPU at 10 000 hosts, perf).
    pub fn keep_connections_to(&self, host: &str, keep: bool) {
        let mut kept = self.kept_hosts.lock().expect("kept hosts lock");
        if keep {
            kept.insert(host.to_owned());
        } else {
            kept.remove(host);
        }
    }

    fn keeps_connection_to(&self, host: &str) -> bool {
        let kept = self.kept_hosts.lock().expect("kept hosts lock");
        kept.contains(host) || kept.len() < self.pool.idle_connections / 2
    }

    /// The HTTP client in use, with its generation.
    fn client(&self) -> (u64, surf::Client) {
        self.client.read().expect("HTTP client lock").clone()
    }

    /// A new HTTP client in place of generation `failed`, which stopped (its thread died:
    /// curl could no longer poll its sockets). Requests that were under way on it failed
    /// with [`FetchError::ClientFailed`], and their jobs go back to the queue.
    fn restart_client(&self, failed: u64) {
        let mut client = self.client.write().expect("HTTP client lock");
        // Several requests see the same client fail: it is restarted once.
        if client.0 != failed {
            return;
        }
        match build_client(&self.settings, self.pool, self.trusted_cas.as_deref()) {
            Ok(new) => {
                tracing::error!("the HTTP client stopped; started a new one");
                *client = (failed + 1, new);
            }
            Err(e) => {
                tracing::error!(error = %e, "the HTTP client stopped and could not be restarted")
            }
        }
    }

    /// One GET of `url`, no redirects followed. The exchange, body included, must finish
    /// within `fetch.timeout_secs` (and so must resolving the host for the address
    /// guard); the wait for the host's quota just before the send does not count.
    #[tracing::instrument(level = "debug", name = "fetch", skip_all, fields(url = %url))]
    pub async fn get(&self, url: &Url, options: GetOptions<'_>) -> Result<Response, FetchError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        // The key for the proxy settings and for the host's quota, before and after.
        let key = crate::urls::host_key(url);
        let proxy = key
            .as_deref()
            .and_then(|key| self.settings.proxies.for_host(key));
        if let Some(proxy) = proxy {
            tracing::debug!(%proxy, "through a proxy");
        }
        let limit = self.settings.timeout;
        let timed_out = |_| FetchError::Timeout {
            host: host.clone(),
            after: limit,
        };
        let request = runtime::timeout(limit, self.request(url, &host, proxy, options))
            .await
            .map_err(timed_out)??;
        // As late as we can, just before the request is handed over; outside the time
        // limit and the clock: a wait for the quota or a pause is not the server's
        // slowness.
        if let (Some(limits), Some(key)) = (options.pace, &key) {
            limits.until_sendable(key).await;
        }
        let started = Instant::now();
        let exchanged =
            runtime::timeout(limit, self.exchange(request, &host, proxy, options)).await;
        if let (Some(limits), Some(key)) = (options.pace, &key) {
            // Through a proxy the wait includes the proxy's own hop to the site, and the
            // request reached the site somewhere in it: only the answer bounds it then.
            let server_wait = match &exchanged {
                Ok(Ok(response)) if proxy.is_none() => response.server_wait,
                _ => Duration::ZERO,
            };
            let now = Instant::now();
            limits.answered(key, now.checked_sub(server_wait).unwrap_or(now));
        }
        let mut response = exchanged.map_err(timed_out)??;
        response.elapsed = started.elapsed();
        tracing::debug!(
            status = response.status,
            protocol = response.protocol,
            bytes = response.body.len(),
            elapsed_ms = response.elapsed.as_millis() as u64,
            server_wait_us = response.server_wait.as_micros() as u64,
            "fetched"
        );
        Ok(response)
    }

    /// The private-address guard's verdict on `url` alone, for a caller that must know
    /// before fetching something else first (robots.txt). Ok when the guard is off.
    pub async fn check_destination(&self, url: &Url) -> Result<(), FetchError> {
        if !self.settings.addresses.block_private {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default();
        self.checked_address(url, host).await.map(|_| ())
    }

    /// The address the request must connect to. A host name is resolved here, through
    /// crawlq's own cache (see [`crate::dns`]); an IP literal is left to the client. With
    /// `fetch.block_private_addresses` on, every address of the host is checked: one that is
    /// not public (even among public ones) refuses the host, and the literal is pinned too.
    async fn checked_address(
        &self,
        url: &Url,
        host: &str,
    ) -> Result<Option<SocketAddr>, FetchError> {
        let policy = &self.settings.addresses;
        let port = url.port_or_known_default().unwrap_or(80);
        let addresses = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::from(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::from(ip)],
            Some(url::Host::Domain(name)) => {
                self.dns
                    .resolve(name)
                    .await
                    .map_err(|_| FetchError::Resolve {
                        host: host.to_owned(),
                    })?
            }
            None => Vec::new(),
        };
        if policy.block_private {
            for address in &addresses {
                if let Some(kind) = policy.refusal(*address) {
                    return Err(FetchError::Refused {
                        host: host.to_owned(),
                        address: *address,
                        kind,
                    });
                }
            }
        } else if !matches!(url.host(), Some(url::Host::Domain(_))) {
            return Ok(None);
        }
        crate::dns::preferred(&addresses)
            .map(|address| Some(SocketAddr::new(address, port)))
            .ok_or_else(|| FetchError::Resolve {
                host: host.to_owned(),
            })
    }

    /// The GET to send: its headers, the proxy it goes through, and the address it must go
    /// to (resolved and checked here).
    ///
    /// Through a proxy, the name is left to the proxy (or to curl, for `socks5://`), so
    /// names only the proxy's network knows work, unless the address guard is on: then the
    /// name is resolved and checked here as without a proxy, and the checked address is
    /// what the proxy is asked to connect to (curl tunnels with CONNECT to it through an
    /// HTTP proxy, and hands it to a SOCKS proxy), so the proxy cannot pick another.
    async fn request(
        &self,
        url: &Url,
        host: &str,
        proxy: Option<&Proxy>,
        options: GetOptions<'_>,
    ) -> Result<surf::Request, FetchError> {
        let pinned = match proxy {
            Some(_) if !self.settings.addresses.block_private => None,
            _ => self.checked_address(url, host).await?,
        };
        let mut request = self
            .client()
            .1
            .get(url.as_str())
            .header("User-Agent", self.settings.user_agent.as_str())
            .header("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
        if let Some(credentials) = basic_auth(url) {
            request = request.header("Authorization", credentials.as_str());
        }
        if !self.keeps_connection_to(host) {
            request = request.header("Connection", "close");
        }
        if let Some(known) = options.if_changed {
            if let Some(etag) = &known.etag {
                request = request.header("If-None-Match", etag.as_str());
            }
            if let Some(date) = &known.last_modified {
                request = request.header("If-Modified-Since", date.as_str());
            }
        }
        let mut request = request.build();
        if let Some(address) = pinned {
            request.set_ext(PinnedAddress(address));
        }
        request.set_ext(Route(proxy.cloned()));
        Ok(request)
    }

    /// [`Fetcher::exchange_on`] with the client in use. isahc panics when its thread has
    /// died, as the request is handed over or while its body is read: caught at this edge,
    /// the client is restarted and the job goes back to the queue. Any other panic there
    /// was caused by this response: the attempt counts, as for a network error, so that a
    /// response that always makes the client panic ends its job instead of coming back
    /// for ever.
    async fn exchange(
        &self,
        request: surf::Request,
        host: &str,
        proxy: Option<&Proxy>,
        options: GetOptions<'_>,
    ) -> Result<Response, FetchError> {
        let (generation, client) = self.client();
        let exchanged = AssertUnwindSafe(self.exchange_on(&client, request, host, options))
            .catch_unwind()
            .await;
        let Some(proxy) = proxy else {
            return self.caught(exchanged, generation, host);
        };
        match self.caught(exchanged, generation, host) {
            // Only a proxy sends 407; it is not the site's answer. (Refusing a CONNECT
            // tunnel, a proxy's 407 reaches us only as curl's failure to connect.)
            Ok(response) if response.status == 407 => Err(FetchError::ProxyAuth {
                proxy: proxy.to_string(),
                host: host.to_owned(),
            }),
            Ok(response) => Ok(response),
            Err(e) => Err(e.through(proxy)),
        }
    }

    /// The exchange's outcome, a panic in the HTTP client turned into an error.
    fn caught(
        &self,
        exchanged: Result<Result<Response, FetchError>, Box<dyn std::any::Any + Send>>,
        generation: u64,
        host: &str,
    ) -> Result<Response, FetchError> {
        exchanged.unwrap_or_else(|panic| {
            let reason = crate::runtime::panic_message(&*panic);
            // isahc's words when its thread is gone: "agent thread terminated prematurely",
            // "... terminated with error: ...", "agent thread panicked".
            if reason.starts_with("agent thread") {
                self.restart_client(generation);
                return Err(FetchError::ClientFailed {
                    host: host.to_owned(),
                    reason,
                });
            }
            Err(FetchError::Network {
                host: host.to_owned(),
                reason: format!("the HTTP client failed on this response ({reason})"),
            })
        })
    }

    async fn exchange_on(
        &self,
        client: &surf::Client,
        request: surf::Request,
        host: &str,
        options: GetOptions<'_>,
    ) -> Result<Response, FetchError> {
        let target = Target {
            url: request.url().clone(),
            pinned: request.ext::<PinnedAddress>().map(|pinned| pinned.0),
            proxy: request.ext::<Route>().and_then(|route| route.0.clone()),
        };
        let mut response = match client.send(request).await {
            Ok(response) => response,
            Err(e) => return Err(self.explain(self.classify(e, host), target).await),
        };
        let status = response
            .ext::<RawStatus>()
            .map_or_else(|| u16::from(response.status()), |raw| raw.0);
        let header = |name: &str| response.header(name).map(|v| v.last().as_str().to_owned());
        let content_type = header("Content-Type");
        let location = header("Location");
        let retry_after = header("Retry-After");
        let validators = Validators {
            etag: header("ETag"),
            last_modified: header("Last-Modified"),
        };
        let declared_length = header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
        let protocol = response.ext::<Protocol>().map_or("HTTP/1.1", |p| p.0);
        let server_wait = response
            .ext::<isahc::TransferTimes>()
            .map_or(Duration::ZERO, server_wait);
        let mut parsed = Response {
            status,
            content_type,
            location,
            retry_after,
            validators,
            body: Vec::new(),
            elapsed: Duration::ZERO,
            protocol,
            server_wait,
        };
        if parsed.is_redirect() {
            return Ok(parsed);
        }
        let (max, setting) = options
            .max_body
            .unwrap_or((self.settings.max_body_bytes, "fetch.max_body_bytes"));
        let (limit, cut) = match options.cut_body_at {
            Some(cut) => (cut.min(max), true),
            None => (max, false),
        };
        if !cut && declared_length.is_some_and(|len| len > limit) {
            return Err(FetchError::BodyTooLarge { limit, setting });
        }
        // Read one byte past the limit to tell "exactly at the limit" from "over it".
        let mut body = response.take_body().into_reader().take(limit + 1);
        // The declared length is a hint from the server, not a promise: cap the up-front
        // allocation so a lying Content-Length cannot reserve the whole body limit.
        let initial = declared_length.unwrap_or(16 * 1024).min(limit).min(1 << 20);
        let mut buffer = read_capped(&mut body, initial as usize, limit as usize + 1)
            .await
            .map_err(|e| FetchError::Network {
                host: host.to_owned(),
                reason: format!("reading the body failed: {e}"),
            })?;
        if buffer.len() as u64 > limit {
            if !cut {
                return Err(FetchError::BodyTooLarge { limit, setting });
            }
            buffer.truncate(limit as usize);
        }
        parsed.body = buffer;
        Ok(parsed)
    }

    /// The edge where `surf::Error` becomes ours, in words a user can act on.
    fn classify(&self, error: surf::Error, host: &str) -> FetchError {
        let host = host.to_owned();
        match error.downcast_ref::<isahc::Error>() {
            Some(isahc::Error::Timeout) => FetchError::ConnectTimeout {
                host,
                after: self.settings.connect_timeout,
            },
            Some(isahc::Error::CouldntResolveHost) => FetchError::Resolve { host },
            Some(isahc::Error::ConnectFailed) if crate::descriptors::nearly_exhausted() => {
                FetchError::OutOfDescriptors { host }
            }
            Some(isahc::Error::ConnectFailed) => FetchError::Connect {
                host,
                reason: "connection refused or unreachable".to_owned(),
            },
            // isahc drops curl's own words for these (its error buffer): `explain` asks
            // curl again for them.
            Some(isahc::Error::BadServerCertificate(detail)) => FetchError::Certificate {
                host,
                reason: detail.clone().unwrap_or_default(),
            },
            Some(isahc::Error::SSLConnectFailed(detail)) => FetchError::Handshake {
                host,
                reason: detail.clone().unwrap_or_default(),
            },
            Some(other) => FetchError::Network {
                host,
                reason: isahc_reason(other),
            },
            None => FetchError::Network {
                host,
                reason: error.to_string(),
            },
        }
    }
}

/// The CA certificates that servers' certificates are checked against: `fetch.ca_file`
/// when set (instead of the system's, as curl's `--cacert`), else the system's bundle.
/// OpenSSL is built into crawlq, and its own default location is its build prefix, not the
/// system's: the bundle is looked up where systems keep it (`SSL_CERT_FILE` first).
fn trusted_cas(settings: &FetchSettings) -> Option<PathBuf> {
    if let Some(file) = &settings.ca_file {
        return Some(file.clone());
    }
    let found = openssl_probe::probe().cert_file;
    if found.is_none() {
        tracing::warn!(
            "no CA certificate bundle found on this system (set SSL_CERT_FILE or \
             fetch.ca_file, or install ca-certificates): HTTPS sites will fail \
             certificate verification"
        );
    }
    found
}

impl Fetcher {
    /// Why a TLS handshake failed, in curl's words (which isahc does not pass on): the same
    /// handshake once more on a connection of its own, made only when one failed. Any
    /// other error comes back unchanged.
    async fn explain(&self, error: FetchError, target: Target) -> FetchError {
        let (FetchError::Certificate { reason, .. } | FetchError::Handshake { reason, .. }) =
            &error
        else {
            return error;
        };
        if !reason.is_empty() {
            return error;
        }
        let trusted_cas = self.trusted_cas.clone();
        let connect_timeout = self.settings.connect_timeout;
        let words = runtime::run_blocking(move || {
            tls_failure(&target, trusted_cas.as_deref(), connect_timeout)
        })
        .await
        .unwrap_or_else(|| "no detail from the TLS library".to_owned());
        match error {
            FetchError::Certificate { host, .. } => FetchError::Certificate {
                host,
                reason: words,
            },
            FetchError::Handshake { host, .. } => FetchError::Handshake {
                host,
                reason: words,
            },
            other => other,
        }
    }
}

/// Where a request went: its URL, the address it was pinned to, the proxy it went through.
struct Target {
    url: Url,
    pinned: Option<SocketAddr>,
    proxy: Option<Proxy>,
}

/// Connects to the target as far as the TLS handshake, the way the request did, with
/// curl's blocking API, which keeps curl's error message, and returns that message.
fn tls_failure(
    target: &Target,
    trusted_cas: Option<&Path>,
    connect_timeout: Duration,
) -> Option<String> {
    let Target { url, pinned, proxy } = target;
    let mut easy = curl::easy::Easy::new();
    let set_up = (|| -> Result<(), curl::Error> {
        easy.url(url.as_str())?;
        match proxy {
            Some(proxy) => {
                easy.proxy(proxy.address())?;
                if let Some((user, password)) = proxy.credentials() {
                    easy.proxy_username(user)?;
                    easy.proxy_password(password)?;
                }
            }
            // Not the environment's http_proxy either, as for the request itself.
            None => easy.noproxy("*")?,
        }
        easy.connect_only(true)?;
        easy.connect_timeout(connect_timeout)?;
        easy.timeout(connect_timeout * 2)?;
        if let Some(file) = trusted_cas {
            easy.cainfo(file)?;
        }
        if let Some(address) = *pinned {
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(443);
            let ip = match address.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            };
            let mut to = curl::easy::List::new();
            to.append(&format!("{host}:{port}:{ip}:{}", address.port()))?;
            easy.connect_to(to)?;
        }
        Ok(())
    })();
    if let Err(e) = set_up {
        return Some(e.to_string());
    }
    match easy.perform() {
        Ok(()) => None,
        Err(e) => Some(tidy(
            e.extra_description().unwrap_or_else(|| e.description()),
        )),
    }
}

/// curl's words without the prefixes and the OpenSSL code that say nothing to a user:
/// "SSL certificate OpenSSL verify result: certificate has expired (10)" → "certificate
/// has expired".
fn tidy(words: &str) -> String {
    let mut words = words.trim();
    for prefix in [
        "SSL certificate OpenSSL verify result: ",
        "SSL certificate problem: ",
        "SSL: ",
    ] {
        words = words.strip_prefix(prefix).unwrap_or(words);
    }
    if let Some((text, code)) = words.rsplit_once(" (") {
        if code
            .strip_suffix(')')
            .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
        {
            words = text;
        }
    }
    words.to_owned()
}

/// What the HTTP client's connection cache keeps (see [`Fetcher::new`]).
#[derive(Debug, Clone, Copy)]
struct Pool {
    /// Kept-alive connections at most; see [`crate::descriptors`].
    idle_connections: usize,
    /// How long a connection may stay idle and still be kept.
    idle_for: Duration,
}

/// The client crawlq sends with: curl through isahc, with a bounded connection cache.
fn build_client(
    settings: &FetchSettings,
    pool: Pool,
    trusted_cas: Option<&Path>,
) -> Result<surf::Client, String> {
    let mut builder = isahc::HttpClient::builder();
    if let Some(file) = trusted_cas {
        builder = builder.ssl_ca_certificate(CaCertificate::file(file));
    }
    let isahc = builder
        .connect_timeout(settings.connect_timeout)
        // No curl-level total timeout: `get` enforces it, so an isahc timeout can only
        // mean the connect timeout and the two are told apart in the error.
        .redirect_policy(RedirectPolicy::None)
        .tcp_nodelay()
        // Kept-alive connections beyond this are closed, the least recently used first:
        // with thousands of hosts they would otherwise take every descriptor. (No cap on
        // open connections: curl queues a request past one instead of closing an idle
        // connection for it, and the scheduler already caps requests in flight.)
        .connection_cache_size(pool.idle_connections)
        .connection_cache_ttl(pool.idle_for)
        // crawlq resolves names itself and pins the address (see `crate::dns`): curl's
        // cache would be walked whole at the end of every transfer.
        .dns_cache(DnsCache::Disable)
        // curl would otherwise take a proxy from http_proxy / HTTPS_PROXY / ALL_PROXY in
        // the daemon's environment; each request names its own (see `Route`).
        .proxy(None)
        .build()
        .map_err(|e| format!("could not start the HTTP client: {e}"))?;
    Ok(surf::Client::with_http_client(CurlBackend {
        client: isahc,
    }))
}

/// From the request being sent (curl's pretransfer time: connected, and the request
/// written out) to the first byte of the answer (its starttransfer time). Both are from the
/// same start, so the difference holds whatever delays came before the send (a queue in
/// curl's thread, a new connection). The vendored isahc reads both once, when it hands the
/// response over (`isahc::TransferTimes`); a timer curl did not fill in reads as zero, and
/// so then does the wait.
fn server_wait(times: &isahc::TransferTimes) -> Duration {
    if times.pretransfer.is_zero() {
        return Duration::ZERO;
    }
    times.starttransfer.saturating_sub(times.pretransfer)
}

/// isahc's Display is "Variant: description"; the description alone reads better.
fn isahc_reason(error: &isahc::Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((_, description)) if !description.is_empty() => description.to_owned(),
        _ => text,
    }
}

/// How long a `Retry-After` value asks us to wait from `now`: delay-seconds or an
/// HTTP-date (a date in the past means no wait). None when the value is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time"; the caller caps it.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// "404 Not Found": the code with its standard reason phrase, when it has one.
pub fn describe_status(status: u16) -> String {
    match http_client::http_types::StatusCode::try_from(status) {
        Ok(known) => format!("{status} {}", known.canonical_reason()),
        Err(_) => status.to_string(),
    }
}

/// `user:password@` in a URL, sent as HTTP Basic credentials (as curl and browsers do). A
/// redirect only carries them on if its Location names them again.
fn basic_auth(url: &Url) -> Option<String> {
    use base64::Engine;

    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// With `fetch.block_private_addresses`: the address the request must connect to, the one
/// that was checked (so that a second DNS answer cannot differ from it).
#[derive(Debug, Clone, Copy)]
struct PinnedAddress(SocketAddr);

/// The proxy a request goes through (`fetch.proxy`, `fetch.no_proxy`, a host's own
/// `proxy`); None: direct, whatever the environment says.
#[derive(Debug, Clone)]
struct Route(Option<Proxy>);

/// The status line's code as sent; surf's own status type only holds codes it knows.
#[derive(Debug, Clone, Copy)]
struct RawStatus(u16);

/// The HTTP version of a response, as [`Response::protocol`] reads.
#[derive(Debug, Clone, Copy)]
struct Protocol(&'static str);

/// surf's backend: curl through isahc, adapted by hand (see the module comment).
#[derive(Debug)]
struct CurlBackend {
    client: isahc::HttpClient,
}

#[http_client::async_trait]
impl http_client::HttpClient for CurlBackend {
    async fn send(
        &self,
        request: http_client::Request,
    ) -> Result<http_client::Response, http_client::Error> {
        use http_client::http_types::{Body, StatusCode};

        let method = isahc::http::Method::from_bytes(request.method().to_string().as_bytes())
            .map_err(|e| http_client::Error::from_str(StatusCode::BadRequest, e.to_string()))?;
        let mut builder = isahc::http::Request::builder()
            .uri(request.url().as_str())
            .method(method);
        if let Some(PinnedAddress(address)) = request.ext().get::<PinnedAddress>() {
            builder = builder.dial(Dialer::ip_socket(*address));
        }
        match request
            .ext()
            .get::<Route>()
            .and_then(|route| route.0.as_ref())
        {
            Some(proxy) => {
                let uri = proxy.address().parse::<isahc::http::Uri>().map_err(|e| {
                    http_client::Error::from_str(
                        StatusCode::BadRequest,
                        format!("proxy {proxy}: {e}"),
                    )
                })?;
                builder = builder.proxy(Some(uri));
                if let Some((user, password)) = proxy.credentials() {
                    builder = builder
                        .proxy_authentication(Authentication::basic())
                        .proxy_credentials(Credentials::new(user, password));
                }
            }
            None => builder = builder.proxy(None),
        }
        for (name, values) in request.iter() {
            for value in values.iter() {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        // crawlq only sends GETs, without a body.
        let outgoing = builder
            .body(isahc::Body::empty())
            .map_err(|e| http_client::Error::from_str(StatusCode::BadRequest, e.to_string()))?;
        let incoming = self
            .client
            .send_async(outgoing)
            .await
            .map_err(http_client::Error::from)?;
        let (parts, body) = incoming.into_parts();
        let code = parts.status.as_u16();
        let mut response =
            http_client::Response::new(StatusCode::try_from(code).unwrap_or(StatusCode::Ok));
        response.ext_mut().insert(RawStatus(code));
        if let Some(times) = parts.extensions.get::<isahc::TransferTimes>() {
            response.ext_mut().insert(*times);
        }
        response.ext_mut().insert(Protocol(match parts.version {
            isahc::http::Version::HTTP_09 => "HTTP/0.9",
            isahc::http::Version::HTTP_10 => "HTTP/1.0",
            isahc::http::Version::HTTP_2 => "HTTP/2.0",
            isahc::http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }));
        for (name, value) in &parts.headers {
            response.append_header(name.as_str(), ascii_header_value(value.as_bytes()).as_str());
        }
        response.set_body(Body::from_reader(
            futures_lite::io::BufReader::new(body),
            None,
        ));
        Ok(response)
    }
}

/// Header values must be ASCII for http-types; other bytes (raw UTF-8 in a Location, say)
/// are percent-encoded, which is also how a URL parser would treat them.
fn ascii_header_value(bytes: &[u8]) -> String {
    let mut value = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte == b'\t' || (0x20..0x7f).contains(&byte) {
            value.push(byte as char);
        } else {
            value.push_str(&format!("%{byte:02X}"));
        }
    }
    value
}

/// Reads `body` to its end (at most `most` bytes: the caller's `take`). Capacity doubles as
/// `read_to_end`'s does, but never past `most`: a body cut at the 10 MB limit then holds
/// 10 MB, not the 16 MB `read_to_end` would reserve (and 24 MB while copying to it).
async fn read_capped(
    body: &mut (impl futures_lite::AsyncRead + Unpin),
    initial: usize,
    most: usize,
) -> std::io::Result<Vec<u8>> {
    use futures_lite::AsyncReadExt;
    let mut buffer = Vec::with_capacity(initial.min(most));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match body.read(&mut chunk).await {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            return Ok(buffer);
        }
        let needed = buffer.len() + read;
        if needed > buffer.capacity() {
            let grown = (buffer.capacity() * 2).clamp(needed, most.max(needed));
            buffer.reserve_exact(grown - buffer.len());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn tls_failures_read_without_curl_and_openssl_prefixes() {
        assert_eq!(
            tidy("SSL certificate OpenSSL verify result: certificate has expired (10)"),
            "certificate has expired"
        );
        assert_eq!(
            tidy("SSL: no alternative certificate subject name matches target host name 'a'"),
            "no alternative certificate subject name matches target host name 'a'"
        );
        assert_eq!(tidy("wrong version number (a)"), "wrong version number (a)");
    }

    #[test]
    fn header_values_become_ascii_without_losing_information() {
        assert_eq!(
            ascii_header_value(b"text/html; charset=utf-8"),
            "text/html; charset=utf-8"
        );
        assert_eq!(ascii_header_value("/caf\u{e9}".as_bytes()), "/caf%C3%A9");
        assert_eq!(ascii_header_value(b"a\x00b\x7f"), "a%00b%7F");
    }
}
