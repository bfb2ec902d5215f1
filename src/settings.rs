//! Settings: the layered configuration, checked once into typed values.
//!
//! Layers, later ones winning: `config/default.toml` (compiled in), an optional file
//! (`--config FILE`), environment variables `CRAWLQ__SECTION__KEY`, then command-line
//! flags. The raw layer (`Raw*`, plain serde types) is turned into [`Settings`] by
//! [`Settings::load`], which refuses a bad value with the key, the value and the reason,
//! before the daemon touches any job.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::IpAddr;

use config::{Config, Environment, File, FileFormat};
use ipnet::IpNet;
use serde::Deserialize;

use crate::destinations::AddressPolicy;

/// The defaults, compiled in so that the binary runs from any working directory.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");
pub const ENV_PREFIX: &str = "CRAWLQ";
/// Bodies are held in memory while parsed; more than this per page is a mistake or an attack.
const MAX_BODY_BYTES: u64 = 1 << 30;
/// The most URLs `crawl.sitemap_max_urls` may allow (20 times the protocol's 50 000): each
/// URL kept is held in memory until its sitemap's links are stored.
const MAX_SITEMAP_URLS: u64 = 1_000_000;
const MAX_IN_FLIGHT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value that did not fit its type, or a key that does not exist, in one of `layers`.
    #[error("configuration: {source} (read from: {layers})")]
    Unreadable {
        source: config::ConfigError,
        layers: String,
    },
    #[error("configuration: `{key}` = {value}{}: {reason}", set_by(origin))]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
        /// Another key the value was checked against.
        related: Option<&'static str>,
        /// Which layers set the value and the related one (filled in by [`Settings::load`]).
        origin: Option<String>,
    },
    #[error(
        "configuration: `limits.hosts.\"{host}\".{field}` = {value}{}: {reason}",
        set_by(origin)
    )]
    InvalidHost {
        host: String,
        field: &'static str,
        value: String,
        reason: &'static str,
        origin: Option<String>,
    },
    /// `fetch.ca_file` cannot be used: unreadable, or no certificate in it.
    #[error(
        "configuration: `fetch.ca_file` = {path:?}{}: {reason}",
        set_by(origin)
    )]
    CaFile {
        path: String,
        reason: String,
        origin: Option<String>,
    },
    /// The database file's directory cannot be made: a file stands where a directory must.
    #[error(
        "configuration: `database.url` = {value:?}{}: cannot create database {path}: {}",
        set_by(origin),
        blocked_by(path, in_the_way)
    )]
    DatabaseDirectory {
        value: String,
        path: String,
        in_the_way: String,
        origin: Option<String>,
    },
}

fn blocked_by(path: &str, in_the_way: &str) -> String {
    let parent = Path::new(path).parent().map(Path::to_path_buf);
    if parent.as_deref() == Some(Path::new(in_the_way)) {
        format!("its parent {in_the_way} is a file, not a directory")
    } else {
        format!("{in_the_way}, on its path, is a file, not a directory")
    }
}

fn set_by(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|origin| format!(" (set by {origin})"))
        .unwrap_or_default()
}

impl SettingsError {
    /// Names the layer that set the bad value: the environment variable, the file, the
    /// command line, or the built-in defaults.
    fn locate(mut self, config: &Config, overrides: &Overrides) -> SettingsError {
        match &mut self {
            SettingsError::Invalid {
                key,
                related,
                origin,
                ..
            } => {
                let own = layer_of(config, overrides, &key.split('.').collect::<Vec<_>>());
                let other = related.map(|related| {
                    let layer =
                        layer_of(config, overrides, &related.split('.').collect::<Vec<_>>());
                    format!(
                        "`{related}` set by {}",
                        layer.as_deref().unwrap_or("an unknown layer")
                    )
                });
                *origin = match (own, other) {
                    (Some(own), Some(other)) => Some(format!("{own}; {other}")),
                    (Some(own), None) => Some(own),
                    (None, other) => other,
                };
            }
            SettingsError::InvalidHost {
                host,
                field,
                origin,
                ..
            } => {
                *origin = layer_of(
                    config,
                    overrides,
                    &["limits", "hosts", host.as_str(), field],
                )
            }
            SettingsError::DatabaseDirectory { origin, .. } => {
                *origin = layer_of(config, overrides, &["database", "url"])
            }
            SettingsError::CaFile { origin, .. } => {
                *origin = layer_of(config, overrides, &["fetch", "ca_file"])
            }
            SettingsError::Load(_) | SettingsError::Unreadable { .. } => {}
        }
        self
    }
}

/// Which layer set the value at `path`, for an error message; None if it is not found.
fn layer_of(config: &Config, overrides: &Overrides, path: &[&str]) -> Option<String> {
    let layer = match origin_of(config, path)? {
        // `config` calls every environment value's origin "the environment".
        Some(origin) if origin == "the environment" => {
            let wanted = format!("{ENV_PREFIX}__{}", path.join("__")).to_ascii_lowercase();
            let variable = std::env::vars()
                .map(|(name, _)| name)
                .find(|name| name.to_ascii_lowercase() == wanted)
                .unwrap_or(wanted);
            format!("environment variable {variable}")
        }
        Some(variable) if variable.starts_with("environment variable ") => variable,
        Some(file) => format!("--config {file}"),
        // Built-in and override values are recorded without an origin.
        None if path == ["database", "url"] && overrides.database.is_some() => {
            "--database".to_owned()
        }
        None => "the built-in config/default.toml".to_owned(),
    };
    Some(layer)
}

/// The origin `config` recorded for the value at `path`: None if there is no such value,
/// Some(None) for a value recorded without one.
fn origin_of(config: &Config, path: &[&str]) -> Option<Option<String>> {
    let (last, parents) = path.split_last()?;
    let (first, middle) = parents.split_first()?;
    let mut table = config.get_table(first).ok()?;
    for segment in middle {
        table = table.get(*segment)?.clone().into_table().ok()?;
    }
    Some(table.get(*last)?.origin().map(str::to_owned))
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub daemon: DaemonSettings,
    pub fetch: FetchSettings,
    pub retry: RetrySettings,
    pub limits: LimitSettings,
    pub crawl: CrawlSettings,
    pub log: LogSettings,
    /// The configuration layers that were read, for the start-up line.
    pub sources: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub location: DatabaseLocation,
    /// SQLite: how long a statement waits for another writer before failing.
    pub busy_timeout: Duration,
}

/// Where the database is: `database.url` checked. Its `Debug` masks a password, as
/// [`DatabaseSettings::name`] does.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A SQLite file (a plain path or a `sqlite:` URL).
    File(PathBuf),
    /// A PostgreSQL server: a `postgres://` or `postgresql://` URL as given, which may hold
    /// a password (see [`DatabaseSettings::name`]).
    Postgres(String),
}

impl DatabaseSettings {
    /// The database as messages name it: its file, or its URL without a password.
    pub fn name(&self) -> String {
        match &self.location {
            DatabaseLocation::File(path) => path.display().to_string(),
            DatabaseLocation::Postgres(url) => without_password(url),
        }
    }
}

impl std::fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseLocation::File(path) => f.debug_tuple("File").field(path).finish(),
            DatabaseLocation::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&without_password(url))
                .finish(),
        }
    }
}

/// A database URL with any password (`user:secret@`, `?password=secret`) replaced by `***`.
fn without_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return crate::telemetry::mask_url_passwords(url);
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    pub poll_interval: Duration,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    pub stats_interval: Option<Duration>,
    /// How often the daemon's `workers` row is refreshed (its heartbeat and counters).
    pub heartbeat: Duration,
}

#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub user_agent: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_redirects: u32,
    /// Send back a URL's ETag / Last-Modified when fetching it again.
    pub conditional_get: bool,
    /// Keep every fetched body, gzip-compressed, in the `bodies` table.
    pub store_body: bool,
    /// Which addresses may be connected to (`fetch.block_private_addresses`).
    pub addresses: AddressPolicy,
    /// PEM file of the CA certificates to trust instead of the system's (`fetch.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Which proxy, if any, each host is reached through.
    pub proxies: Proxies,
}

/// Which proxy each host is reached through: `fetch.proxy`, `fetch.no_proxy` and the hosts'
/// own `limits.hosts."NAME".proxy`. The `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` /
/// `NO_PROXY` environment variables are not read: a daemon inherits its environment from
/// whatever started it, and where requests go should be in its configuration.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    /// `fetch.proxy`; None: direct.
    pub default: Option<Proxy>,
    /// `fetch.no_proxy`: lower case, without a leading dot; "*" is every host.
    pub no_proxy: Vec<String>,
    /// A host's own choice (lower case, no port), which beats the two above; None: direct.
    pub hosts: HashMap<String, Option<Proxy>>,
}

impl Proxies {
    /// The proxy for requests to `host` (a host key: lower case, no port), None for direct:
    /// the host's own `proxy` if it has one, else direct for a `fetch.no_proxy` match
    /// (the name itself or a subdomain of it, as curl's NO_PROXY), else `fetch.proxy`.
    pub fn for_host(&self, host: &str) -> Option<&Proxy> {
        if let Some(own) = self.hosts.get(host) {
            return own.as_ref();
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let exempt = self.no_proxy.iter().any(|entry| {
            entry == "*"
                || bare == entry
                || bare
                    .strip_suffix(entry.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        });
        if exempt {
            return None;
        }
        self.default.as_ref()
    }
}

/// A proxy, checked: `http://`, `https://`, `socks5://` or `socks5h://` (the proxy resolves
/// host names), a host, a port (the scheme's default, 1080 for SOCKS, when left out) and
/// optional `user:password@`. Display and Debug show the password as `***`, so a proxy can
/// be named in any log line or job error.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `scheme://host:port`, without credentials: what the HTTP client is given.
    address: String,
    /// Percent-decoded user name and password.
    credentials: Option<(String, String)>,
    /// The URL as messages show it, password masked.
    shown: String,
}

const PROXY_SCHEMES: &[&str] = &["http", "https", "socks5", "socks5h"];

impl Proxy {
    /// A `proxy` setting: `Ok(None)` for "" or "none" (direct), else a proxy URL, or why it
    /// is not one.
    pub fn parse_setting(value: &str) -> Result<Option<Proxy>, &'static str> {
        let value = value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        // curl would take "proxy.example:3128" for http://; a setting says which it means.
        if !value.contains("://") {
            return Err(
                "must start with its scheme, as in \"http://proxy.example:3128\" \
                        (http, https, socks5 or socks5h)",
            );
        }
        let url = url::Url::parse(value).map_err(|_| {
            "must be a proxy URL such as \"http://proxy.example:3128\" or \"socks5://user:password@10.0.0.2:1080\", or \"none\""
        })?;
        let scheme = url.scheme();
        if !PROXY_SCHEMES.contains(&scheme) {
            return Err("the proxy's scheme must be http, https, socks5 or socks5h");
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host,
            _ => return Err("must name the proxy's host, as in \"http://proxy.example:3128\""),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("must be scheme://[user:password@]host[:port], without a path or query");
        }
        let port = url.port_or_known_default().unwrap_or(1080);
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = (!url.username().is_empty() || url.password().is_some()).then(|| {
            (
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        let address = format!("{scheme}://{host}:{port}");
        let shown = match (url.username(), url.password()) {
            ("", None) => address.clone(),
            (user, None) => format!("{scheme}://{user}@{host}:{port}"),
            (user, Some(_)) => format!("{scheme}://{user}:***@{host}:{port}"),
        };
        Ok(Some(Proxy {
            address,
            credentials,
            shown,
        }))
    }

    /// `scheme://host:port`, without credentials.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The user name and password to give the proxy, decoded.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Proxy").field(&self.shown).finish()
    }
}

/// A setting's value for an error message, quoted, with any URL password masked.
fn masked_value(value: &str) -> String {
    format!("{:?}", crate::telemetry::mask_url_passwords(value))
}

/// A `fetch.no_proxy` entry: a host name or domain (covering its subdomains; a leading
/// "." or "*." is the same), an IP address, or "*" for every host.
fn no_proxy_entry(entry: &str) -> Result<String, SettingsError> {
    let cleaned = entry.trim().to_ascii_lowercase();
    let cleaned = cleaned
        .strip_prefix("*.")
        .or_else(|| cleaned.strip_prefix('.'))
        .unwrap_or(&cleaned)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let is_ip = cleaned.parse::<IpAddr>().is_ok();
    if cleaned.is_empty() || cleaned.contains(['/', '@', ' ']) || (cleaned.contains(':') && !is_ip)
    {
        return Err(invalid(
            "fetch.no_proxy",
            format!("{entry:?}"),
            "each entry must be a host name or domain (\"example.com\" also covers its \
             subdomains), an IP address, or \"*\", without a scheme or port",
        ));
    }
    Ok(cleaned)
}

#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_attempts: NonZeroU32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The longest host pause a Retry-After header can ask for.
    pub max_retry_after: Duration,
}

/// A request rate: `rps` requests per second on average, at most `burst` back to back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub rps: f64,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Time between two requests at this rate.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rps)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostLimits {
    pub rate: Rate,
    pub in_flight: NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub per_host: HostLimits,
    pub global_rate: Option<Rate>,
    pub max_in_flight: NonZeroUsize,
    /// Overrides by host name (lower case, no port).
    pub hosts: HashMap<String, HostLimits>,
}

impl LimitSettings {
    pub fn for_host(&self, host: &str) -> &HostLimits {
        self.hosts.get(host).unwrap_or(&self.per_host)
    }
}

#[derive(Debug, Clone)]
pub struct CrawlSettings {
    /// Query parameters removed from followed links ("utm_*" is a prefix).
    pub strip_query_params: Vec<String>,
    pub obey_robots: bool,
    /// How long a fetched robots.txt (or its 4xx "no rules") is trusted.
    pub robots_cache: Duration,
    /// How long a host whose robots.txt could not be fetched (5xx, 429, network error) is
    /// treated as fully disallowed before robots.txt is tried again.
    pub robots_unreachable_wait: Duration,
    /// The longest Crawl-delay honoured; a longer one is cut to this.
    pub max_crawl_delay: Duration,
    /// A crawl's root page queues the sitemaps its robots.txt names (`Sitemap:` lines).
    pub follow_sitemaps: bool,
    /// The most bytes a sitemap may hold, uncompressed (and, gzipped, as sent).
    pub sitemap_max_bytes: u64,
    /// The most URLs read from one sitemap; the rest are left out, and the result says so.
    pub sitemap_max_urls: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// Values given on the command line; they beat every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub database: Option<String>,
}

impl Settings {
    /// Reads every layer and checks the result. `config_file`, when given, must exist.
    pub fn load(
        config_file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Settings, SettingsError> {
        let mut sources = vec!["built-in config/default.toml".to_owned()];
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_CONFIG, FileFormat::Toml));
        if let Some(path) = config_file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
            sources.push(path.display().to_string());
        }
        // The prefix in any case, as the `config` crate matches it.
        let mut environment: config::Map<String, String> = std::env::vars()
            .filter(|(key, _)| {
                key.to_ascii_uppercase()
                    .starts_with(&format!("{ENV_PREFIX}__"))
            })
            .collect();
        if !environment.is_empty() {
            let names: Vec<&str> = environment.keys().map(String::as_str).collect();
            sources.push(format!("environment ({})", names.join(", ")));
        }
        // Host names have dots, which no variable name can hold: the per-host overrides
        // come from one variable holding them all as JSON.
        let hosts = environment.remove(HOSTS_VARIABLE);
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(environment)),
        );
        if let Some(json) = hosts {
            builder = builder.add_source(HostsFromJson(json));
        }
        if let Some(database) = &overrides.database {
            builder = builder.set_override("database.url", database.as_str())?;
            sources.push("--database".to_owned());
        }
        let config = builder.build()?;
        let raw: RawSettings =
            config
                .clone()
                .try_deserialize()
                .map_err(|source| SettingsError::Unreadable {
                    source,
                    layers: sources.join(", "),
                })?;
        raw.check(sources)
            .map_err(|error| error.locate(&config, overrides))
    }

    /// The defaults alone, as a test or a tool would start from.
    pub fn defaults() -> Settings {
        Settings::load_from_str(DEFAULT_CONFIG).expect("config/default.toml is valid")
    }

    /// Settings from one TOML document layered over the defaults (no environment).
    pub fn load_from_str(toml: &str) -> Result<Settings, SettingsError> {
        let raw: RawSettings = Config::builder()
            .add_source(File::from_str(DEFAULT_CONFIG, FileFormat::Toml))
            .add_source(File::from_str(toml, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        raw.check(vec![
            "built-in config/default.toml".to_owned(),
            "inline".to_owned(),
        ])
    }
}

/// The variable holding every per-host override as one JSON object, for the places where
/// only the environment can be set (`docker run -e`):
/// `{"example.com": {"rps": 0.5, "in_flight": 1}}`.
pub const HOSTS_VARIABLE: &str = "CRAWLQ__LIMITS__HOSTS";

/// [`HOSTS_VARIABLE`]'s JSON as a configuration layer: `limits.hosts`, host by host, over
/// the file's (a host named in both takes the variable's keys over the file's).
#[derive(Debug, Clone)]
struct HostsFromJson(String);

impl config::Source for HostsFromJson {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let origin = format!("environment variable {HOSTS_VARIABLE}");
        let hosts: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&self.0)
            .map_err(|e| {
                config::ConfigError::Message(format!(
                    "{origin} must be a JSON object of host name to overrides, as in \
                     {{\"example.com\": {{\"rps\": 0.5, \"in_flight\": 1}}}}: {e}"
                ))
            })?;
        // Said here in our words: the deserializer would name the internal struct.
        if let Some((host, value)) = hosts.iter().find(|(_, value)| !value.is_object()) {
            return Err(config::ConfigError::Message(format!(
                "{origin}: the overrides of host {host:?} must be a JSON object such as \
                 {{\"rps\": 0.5, \"in_flight\": 1}}, not {value}"
            )));
        }
        let hosts = config_value(serde_json::Value::Object(hosts), &origin);
        let limits: config::Map<String, config::Value> = [("hosts".to_owned(), hosts)].into();
        Ok([(
            "limits".to_owned(),
            config::Value::new(Some(&origin), limits),
        )]
        .into())
    }
}

fn config_value(json: serde_json::Value, origin: &String) -> config::Value {
    use config::ValueKind;
    use serde_json::Value as Json;
    let kind = match json {
        Json::Null => ValueKind::Nil,
        Json::Bool(b) => ValueKind::Boolean(b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ValueKind::I64(i),
            (None, Some(u)) => ValueKind::U64(u),
            _ => ValueKind::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(text) => ValueKind::String(text),
        Json::Array(items) => {
            ValueKind::Array(items.into_iter().map(|v| config_value(v, origin)).collect())
        }
        Json::Object(map) => ValueKind::Table(
            map.into_iter()
                .map(|(key, v)| (key, config_value(v, origin)))
                .collect(),
        ),
    };
    config::Value::new(Some(origin), kind)
}

// ---- The raw layer: exactly what the TOML / environment says. ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    database: RawDatabase,
    daemon: RawDaemon,
    fetch: RawFetch,
    retry: RawRetry,
    limits: RawLimits,
    crawl: RawCrawl,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrawl {
    strip_query_params: Vec<String>,
    obey_robots: bool,
    robots_cache_secs: f64,
    robots_unreachable_wait_secs: f64,
    max_crawl_delay_secs: f64,
    follow_sitemaps: bool,
    sitemap_max_bytes: u64,
    sitemap_max_urls: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    busy_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    poll_interval_ms: u64,
    lease_secs: u64,
    shutdown_grace_secs: u64,
    stats_interval_secs: u64,
    heartbeat_secs: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    user_agent: String,
    timeout_secs: f64,
    connect_timeout_secs: f64,
    max_body_bytes: u64,
    max_redirects: u32,
    conditional_get: bool,
    store_body: bool,
    block_private_addresses: bool,
    allowed_private_addresses: Vec<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    proxy: String,
    no_proxy: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: u32,
    backoff_initial_ms: u64,
    backoff_max_secs: u64,
    max_retry_after_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_host_rps: f64,
    per_host_burst: u32,
    global_rps: f64,
    global_burst: u32,
    max_in_flight: usize,
    per_host_in_flight: usize,
    #[serde(default)]
    hosts: HashMap<String, RawHostLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostLimits {
    rps: Option<f64>,
    burst: Option<u32>,
    in_flight: Option<usize>,
    proxy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

fn invalid(key: &'static str, value: impl ToString, reason: &'static str) -> SettingsError {
    SettingsError::Invalid {
        key,
        value: value.to_string(),
        reason,
        related: None,
        origin: None,
    }
}

/// A rate must lie between one request a day and a million a second.
fn positive_rps(rps: f64) -> bool {
    rps.is_finite() && (1.0 / 86_400.0..=1_000_000.0).contains(&rps)
}

const RPS_RANGE: &str =
    "must be a number of requests per second from 0.0000116 (one a day) to 1000000";

fn seconds(key: &'static str, value: f64) -> Result<Duration, SettingsError> {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(invalid(
            key,
            value,
            "must be a number of seconds above 0 and at most 86400",
        ))
    }
}

impl RawSettings {
    fn check(self, sources: Vec<String>) -> Result<Settings, SettingsError> {
        let location = database_location(&self.database.url)?;
        if let DatabaseLocation::File(path) = &location {
            if let Some(file) = file_in_the_way(path) {
                return Err(SettingsError::DatabaseDirectory {
                    value: self.database.url.clone(),
                    path: path.display().to_string(),
                    in_the_way: file.display().to_string(),
                    origin: None,
                });
            }
        }
        let database = DatabaseSettings {
            location,
            busy_timeout: Duration::from_millis(self.database.busy_timeout_ms),
        };

        let d = &self.daemon;
        if d.poll_interval_ms == 0 {
            return Err(invalid("daemon.poll_interval_ms", 0, "must be at least 1"));
        }
        if d.lease_secs < 2 {
            return Err(invalid(
                "daemon.lease_secs",
                d.lease_secs,
                "must be at least 2 (it is renewed every third of it)",
            ));
        }
        // In-flight jobs finishing during the grace period must still hold their leases.
        if d.shutdown_grace_secs.saturating_mul(2) >= d.lease_secs {
            return Err(SettingsError::Invalid {
                key: "daemon.shutdown_grace_secs",
                value: d.shutdown_grace_secs.to_string(),
                reason: "must be less than half of daemon.lease_secs",
                related: Some("daemon.lease_secs"),
                origin: None,
            });
        }
        let daemon = DaemonSettings {
            poll_interval: Duration::from_millis(d.poll_interval_ms),
            lease: Duration::from_secs(d.lease_secs),
            shutdown_grace: Duration::from_secs(d.shutdown_grace_secs),
            stats_interval: (d.stats_interval_secs > 0)
                .then(|| Duration::from_secs(d.stats_interval_secs)),
            heartbeat: seconds("daemon.heartbeat_secs", d.heartbeat_secs)?,
        };

        let f = &self.fetch;
        if f.user_agent.trim().is_empty() {
            return Err(invalid("fetch.user_agent", "\"\"", "must not be empty"));
        }
        if !(1..=MAX_BODY_BYTES).contains(&f.max_body_bytes) {
            return Err(invalid(
                "fetch.max_body_bytes",
                f.max_body_bytes,
                "must be from 1 to 1073741824 (1 GiB)",
            ));
        }
        let ca_file = match &f.ca_file {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(ca_file(path)?),
            None => None,
        };
        let fetch = FetchSettings {
            ca_file,
            user_agent: f.user_agent.clone(),
            timeout: seconds("fetch.timeout_secs", f.timeout_secs)?,
            connect_timeout: seconds("fetch.connect_timeout_secs", f.connect_timeout_secs)?,
            max_body_bytes: f.max_body_bytes,
            max_redirects: f.max_redirects,
            conditional_get: f.conditional_get,
            store_body: f.store_body,
            addresses: AddressPolicy {
                block_private: f.block_private_addresses,
                allowed: f
                    .allowed_private_addresses
                    .iter()
                    .map(|entry| network(entry))
                    .collect::<Result<_, _>>()?,
            },
            proxies: Proxies {
                default: Proxy::parse_setting(&f.proxy)
                    .map_err(|reason| invalid("fetch.proxy", masked_value(&f.proxy), reason))?,
                no_proxy: f
                    .no_proxy
                    .iter()
                    .map(|entry| no_proxy_entry(entry))
                    .collect::<Result<_, _>>()?,
                hosts: self
                    .limits
                    .hosts
                    .iter()
                    .filter_map(|(host, raw)| Some((host, raw.proxy.as_ref()?)))
                    .map(|(host, proxy)| {
                        let route = Proxy::parse_setting(proxy).map_err(|reason| {
                            SettingsError::InvalidHost {
                                host: host.clone(),
                                field: "proxy",
                                value: masked_value(proxy),
                                reason,
                                origin: None,
                            }
                        })?;
                        Ok((host.trim().to_ascii_lowercase(), route))
                    })
                    .collect::<Result<_, SettingsError>>()?,
            },
        };

        let r = &self.retry;
        if r.backoff_max_secs > 86_400 {
            return Err(invalid(
                "retry.backoff_max_secs",
                r.backoff_max_secs,
                "must be at most 86400 (a day)",
            ));
        }
        if r.backoff_initial_ms > 86_400_000 {
            return Err(invalid(
                "retry.backoff_initial_ms",
                r.backoff_initial_ms,
                "must be at most 86400000 (a day)",
            ));
        }
        if r.max_retry_after_secs > 86_400 {
            return Err(invalid(
                "retry.max_retry_after_secs",
                r.max_retry_after_secs,
                "must be at most 86400 (a day)",
            ));
        }
        let retry = RetrySettings {
            max_attempts: NonZeroU32::new(r.max_attempts)
                .ok_or_else(|| invalid("retry.max_attempts", 0, "must be at least 1"))?,
            backoff_initial: Duration::from_millis(r.backoff_initial_ms),
            backoff_max: Duration::from_secs(r.backoff_max_secs),
            max_retry_after: Duration::from_secs(r.max_retry_after_secs),
        };

        let l = &self.limits;
        if !positive_rps(l.per_host_rps) {
            return Err(invalid("limits.per_host_rps", l.per_host_rps, RPS_RANGE));
        }
        let per_host = HostLimits {
            rate: Rate {
                rps: l.per_host_rps,
                burst: NonZeroU32::new(l.per_host_burst)
                    .ok_or_else(|| invalid("limits.per_host_burst", 0, "must be at least 1"))?,
            },
            in_flight: NonZeroUsize::new(l.per_host_in_flight)
                .ok_or_else(|| invalid("limits.per_host_in_flight", 0, "must be at least 1"))?,
        };
        let global_rate = if l.global_rps == 0.0 {
            None
        } else if positive_rps(l.global_rps) {
            Some(Rate {
                rps: l.global_rps,
                burst: NonZeroU32::new(l.global_burst)
                    .ok_or_else(|| invalid("limits.global_burst", 0, "must be at least 1"))?,
            })
        } else {
            return Err(invalid(
                "limits.global_rps",
                l.global_rps,
                "must be 0 (no global limit) or a number of requests per second from 0.0000116 (one a day) to 1000000",
            ));
        };
        if !(1..=MAX_IN_FLIGHT).contains(&l.max_in_flight) {
            return Err(invalid(
                "limits.max_in_flight",
                l.max_in_flight,
                "must be from 1 to 10000",
            ));
        }
        let max_in_flight = NonZeroUsize::new(l.max_in_flight).expect("checked above");
        let mut hosts = HashMap::new();
        for (host, raw) in &l.hosts {
            let host_error = |field, value: String, reason| SettingsError::InvalidHost {
                host: host.clone(),
                field,
                value,
                reason,
                origin: None,
            };
            let rps = raw.rps.unwrap_or(per_host.rate.rps);
            if !positive_rps(rps) {
                return Err(host_error("rps", rps.to_string(), RPS_RANGE));
            }
            let burst = match raw.burst {
                None => per_host.rate.burst,
                Some(b) => NonZeroU32::new(b)
                    .ok_or_else(|| host_error("burst", b.to_string(), "must be at least 1"))?,
            };
            let in_flight = match raw.in_flight {
                None => per_host.in_flight,
                Some(n) => NonZeroUsize::new(n)
                    .ok_or_else(|| host_error("in_flight", n.to_string(), "must be at least 1"))?,
            };
            hosts.insert(
                host.trim().to_ascii_lowercase(),
                HostLimits {
                    rate: Rate { rps, burst },
                    in_flight,
                },
            );
        }
        let limits = LimitSettings {
            per_host,
            global_rate,
            max_in_flight,
            hosts,
        };

        let format = match self.log.format.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}"),
                    "must be \"pretty\" or \"json\"",
                ))
            }
        };
        let log = LogSettings {
            level: self.log.level.clone(),
            format,
        };

        let c = &self.crawl;
        if !(1..=MAX_BODY_BYTES).contains(&c.sitemap_max_bytes) {
            return Err(invalid(
                "crawl.sitemap_max_bytes",
                c.sitemap_max_bytes,
                "must be from 1 to 1073741824 (1 GiB)",
            ));
        }
        if !(1..=MAX_SITEMAP_URLS).contains(&c.sitemap_max_urls) {
            return Err(invalid(
                "crawl.sitemap_max_urls",
                c.sitemap_max_urls,
                "must be from 1 to 1000000",
            ));
        }

        Ok(Settings {
            database,
            daemon,
            fetch,
            retry,
            limits,
            crawl: CrawlSettings {
                strip_query_params: self.crawl.strip_query_params.clone(),
                obey_robots: self.crawl.obey_robots,
                robots_cache: seconds("crawl.robots_cache_secs", self.crawl.robots_cache_secs)?,
                robots_unreachable_wait: seconds(
                    "crawl.robots_unreachable_wait_secs",
                    self.crawl.robots_unreachable_wait_secs,
                )?,
                max_crawl_delay: seconds(
                    "crawl.max_crawl_delay_secs",
                    self.crawl.max_crawl_delay_secs,
                )?,
                follow_sitemaps: c.follow_sitemaps,
                sitemap_max_bytes: c.sitemap_max_bytes,
                sitemap_max_urls: c.sitemap_max_urls as usize,
            },
            log,
            sources,
        })
    }
}

/// `fetch.ca_file`, checked at start-up: a file that is missing, unreadable or holds no
/// PEM certificate would otherwise show only as every HTTPS site failing verification.
fn ca_file(path: &Path) -> Result<PathBuf, SettingsError> {
    let refuse = |reason: String| SettingsError::CaFile {
        path: path.display().to_string(),
        reason,
        origin: None,
    };
    let text = std::fs::read(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    if !text
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(refuse(
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    // curl reads the file again whenever it sets up a TLS connection: an absolute path
    // keeps pointing at it whatever the working directory.
    std::path::absolute(path).map_err(|e| refuse(format!("cannot resolve the path: {e}")))
}

/// An address ("10.0.0.7") or a network ("10.0.0.0/8") of `fetch.allowed_private_addresses`.
fn network(entry: &str) -> Result<IpNet, SettingsError> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            invalid(
                "fetch.allowed_private_addresses",
                format!("{entry:?}"),
                "each entry must be an IP address or a network such as \"10.0.0.0/8\"",
            )
        })
}

/// Accepts a `postgres://` (or `postgresql://`) URL, a plain path or a `sqlite:` URL
/// (`sqlite://data/x.db`, `sqlite:data/x.db`). A URL of another scheme is refused, never
/// taken for a file path; so are `sqlite:` URL options other than the read-write-create
/// mode the daemon opens the file in anyway.
fn database_location(url: &str) -> Result<DatabaseLocation, SettingsError> {
    // A password in the URL is masked where the error is printed, as in every log line.
    let refuse = |why: &'static str| invalid("database.url", format!("{url:?}"), why);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Its options (sslmode, host=/socket/dir, …) are read by the PostgreSQL driver when
        // the store connects; a URL that does not parse at all is refused here.
        if url::Url::parse(url).is_err() {
            return Err(refuse("is not a valid URL"));
        }
        return Ok(DatabaseLocation::Postgres(url.to_owned()));
    }
    let path = match url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        Some(path) => path,
        None => {
            if let Some((scheme, _)) = url.split_once("://") {
                if !scheme.is_empty() && !scheme.contains(['/', '\\']) {
                    return Err(refuse(
                        "its scheme is not known: crawlq takes a postgres:// URL, a SQLite \
                         file path or a sqlite: URL, never another URL taken for a file name",
                    ));
                }
            }
            url
        }
    };
    let (path, options) = path.split_once('?').unwrap_or((path, ""));
    if options.split('&').any(|o| !o.is_empty() && o != "mode=rwc") {
        return Err(refuse(
            "URL options are not supported: the daemon opens the file to read and write, \
             creating it if need be (mode=rwc)",
        ));
    }
    if path.trim().is_empty() {
        return Err(invalid(
            "database.url",
            format!("{url:?}"),
            "must name a database file",
        ));
    }
    if path == ":memory:" {
        return Err(invalid(
            "database.url",
            format!("{url:?}"),
            "must be a file: users reach the queue through it",
        ));
    }
    Ok(DatabaseLocation::File(PathBuf::from(path)))
}

/// The nearest existing directory above `database`, if it is a file instead: the
/// database (and its lock file) could not be created, and SQLite and the lock would each
/// report it in words of their own ("Not a directory" about the lock file).
fn file_in_the_way(database: &Path) -> Option<PathBuf> {
    database
        .ancestors()
        .skip(1)
        .filter(|dir| !dir.as_os_str().is_empty())
        .find_map(|dir| match std::fs::metadata(dir) {
            Ok(meta) => Some((!meta.is_dir()).then(|| dir.to_owned())),
            Err(_) => None,
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let s = Settings::defaults();
        assert_eq!(
            s.database.location,
            DatabaseLocation::File(PathBuf::from("data/crawlq.db"))
        );
        assert_eq!(s.limits.per_host.rate.rps, 2.0);
        assert_eq!(s.limits.per_host.rate.burst.get(), 1);
        assert_eq!(s.limits.per_host.in_flight.get(), 2);
        assert_eq!(s.limits.max_in_flight.get(), 64);
        assert_eq!(s.limits.global_rate, None);
        assert_eq!(s.retry.max_attempts.get(), 3);
        assert_eq!(s.fetch.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(s.fetch.timeout, Duration::from_secs(30));
        assert_eq!(s.fetch.max_redirects, 10);
    }

    #[test]
    fn host_overrides_keep_dotted_names_and_fall_back_per_field() {
        let s = Settings::load_from_str(
            "[limits.hosts.\"Example.com\"]\nrps = 0.5\n[limits.hosts.\"b.example.org\"]\nin_flight = 1\n",
        )
        .unwrap();
        let a = s.limits.for_host("example.com");
        assert_eq!(a.rate.rps, 0.5);
        assert_eq!(a.in_flight.get(), 2);
        let b = s.limits.for_host("b.example.org");
        assert_eq!(b.rate.rps, 2.0);
        assert_eq!(b.in_flight.get(), 1);
        assert_eq!(s.limits.for_host("other.net").rate.rps, 2.0);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = Settings::load_from_str("[limits]\nper_host_rps = -1.0\n").unwrap_err();
        assert!(err.to_string().contains("limits.per_host_rps"), "{err}");
        let err = Settings::load_from_str("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(err.to_string().contains("log.format"), "{err}");
        let err = Settings::load_from_str("[limits]\nper_host_rps = 1e-20\n").unwrap_err();
        assert!(err.to_string().contains("limits.per_host_rps"), "{err}");
        let err = Settings::load_from_str("[daemon]\nlease_secs = 10\nshutdown_grace_secs = 5\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("daemon.shutdown_grace_secs"),
            "{err}"
        );
        let err = Settings::load_from_str("[limits]\nper_host_rpz = 1.0\n").unwrap_err();
        assert!(err.to_string().contains("per_host_rpz"), "{err}");
        let err =
            Settings::load_from_str("[fetch]\nallowed_private_addresses = [\"10.0.0.0/33\"]\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("fetch.allowed_private_addresses")
                && err.to_string().contains("10.0.0.0/33"),
            "{err}"
        );
        let ok = Settings::load_from_str(
            "[fetch]\nblock_private_addresses = true\nallowed_private_addresses = [\"10.1.2.3\", \"fd00::/8\"]\n",
        )
        .unwrap();
        assert!(ok.fetch.addresses.block_private);
        assert_eq!(ok.fetch.addresses.allowed.len(), 2);
        assert_eq!(
            ok.fetch.addresses.refusal("10.1.2.3".parse().unwrap()),
            None
        );
    }

    #[test]
    fn fetch_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("crawlq-ca-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |path: &Path| {
            Settings::load_from_str(&format!("[fetch]\nca_file = {:?}\n", path.display()))
        };
        let missing = load(&dir.join("missing.pem")).unwrap_err().to_string();
        assert!(
            missing.contains("fetch.ca_file") && missing.contains("cannot read it"),
            "{missing}"
        );
        std::fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let not_a_certificate = load(&dir.join("key.pem")).unwrap_err().to_string();
        assert!(
            not_a_certificate.contains("holds no PEM certificate"),
            "{not_a_certificate}"
        );
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let ok = load(&dir.join("ca.pem")).unwrap();
        assert_eq!(ok.fetch.ca_file, Some(dir.join("ca.pem")));
        assert_eq!(
            Settings::load_from_str("[fetch]\nca_file = \"\"\n")
                .unwrap()
                .fetch
                .ca_file,
            None,
            "an empty value means the system's CAs"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proxies_are_chosen_per_host_then_no_proxy_then_the_global_one() {
        let s = Settings::load_from_str(
            r#"
            [fetch]
            proxy = "http://ann:p%40ss@proxy.internal:3128"
            no_proxy = [".Intranet.example", "10.0.0.7"]
            [limits.hosts."a.example"]
            proxy = "socks5h://10.0.0.2"
            [limits.hosts."b.example"]
            proxy = "none"
            [limits.hosts."c.example"]
            rps = 1.0
            "#,
        )
        .unwrap();
        let p = &s.fetch.proxies;
        let global = p.for_host("www.example.org").expect("the global proxy");
        assert_eq!(global.address(), "http://proxy.internal:3128");
        assert_eq!(global.credentials(), Some(("ann", "p@ss")));
        assert_eq!(global.to_string(), "http://ann:***@proxy.internal:3128");
        assert!(!format!("{global:?}").contains("p%40ss"), "{global:?}");
        let own = p.for_host("a.example").expect("its own proxy");
        assert_eq!(own.address(), "socks5h://10.0.0.2:1080");
        assert_eq!(own.credentials(), None);
        assert_eq!(p.for_host("b.example"), None);
        assert_eq!(
            p.for_host("c.example"),
            Some(global),
            "rps alone keeps the global"
        );
        assert_eq!(p.for_host("intranet.example"), None);
        assert_eq!(p.for_host("wiki.intranet.example"), None);
        assert_eq!(p.for_host("notintranet.example"), Some(global));
        assert_eq!(p.for_host("10.0.0.7"), None);
        let direct = Settings::defaults();
        assert_eq!(direct.fetch.proxies.for_host("example.com"), None);
    }

    #[test]
    fn a_bad_proxy_is_refused_naming_its_key_without_its_password() {
        let refused = |toml: &str| Settings::load_from_str(toml).unwrap_err().to_string();
        let scheme = refused("[fetch]\nproxy = \"ftp://ann:s3cret@proxy:21\"\n");
        assert!(
            scheme.contains("`fetch.proxy` = \"ftp://ann:***@proxy:21\"")
                && scheme.contains("http, https, socks5 or socks5h")
                && !scheme.contains("s3cret"),
            "{scheme}"
        );
        let no_scheme = refused("[fetch]\nproxy = \"proxy.internal:3128\"\n");
        assert!(
            no_scheme.contains("`fetch.proxy`") && no_scheme.contains("must start with its scheme"),
            "{no_scheme}"
        );
        let no_host = refused("[fetch]\nproxy = \"socks5://\"\n");
        assert!(no_host.contains("must name the proxy's host"), "{no_host}");
        let path = refused("[fetch]\nproxy = \"http://proxy:3128/x\"\n");
        assert!(path.contains("without a path"), "{path}");
        let host = refused("[limits.hosts.\"a.example\"]\nproxy = \"socks4://p:1\"\n");
        assert!(
            host.contains("`limits.hosts.\"a.example\".proxy` = \"socks4://p:1\""),
            "{host}"
        );
        let entry = refused("[fetch]\nno_proxy = [\"http://a.example/\"]\n");
        assert!(entry.contains("`fetch.no_proxy`"), "{entry}");
    }

    #[test]
    fn database_urls_and_paths_are_both_accepted() {
        let file = |url: &str| {
            database_location(url).map(|l| match l {
                DatabaseLocation::File(path) => path,
                other => panic!("{url}: {other:?}"),
            })
        };
        assert_eq!(file("sqlite://a/b.db").unwrap(), PathBuf::from("a/b.db"));
        assert_eq!(file("sqlite:b.db?mode=rwc").unwrap(), PathBuf::from("b.db"));
        assert_eq!(file("/tmp/c.db").unwrap(), PathBuf::from("/tmp/c.db"));
        assert!(database_location("sqlite::memory:").is_err());
        assert_eq!(
            database_location("postgres://u:secret@h/db?sslmode=require").unwrap(),
            DatabaseLocation::Postgres("postgres://u:secret@h/db?sslmode=require".into())
        );
        let refused = |url: &str| database_location(url).unwrap_err().to_string();
        let mysql = refused("mysql://u:secret@h/db");
        assert!(mysql.contains("its scheme is not known"), "{mysql}");
        let read_only = refused("sqlite://x.db?mode=ro");
        assert!(
            read_only.contains("\"sqlite://x.db?mode=ro\"")
                && read_only.contains("URL options are not supported"),
            "{read_only}"
        );
    }

    #[test]
    fn a_database_is_named_and_debugged_without_its_password() {
        let named = |url: &str| {
            DatabaseSettings {
                location: database_location(url).unwrap(),
                busy_timeout: Duration::ZERO,
            }
            .name()
        };
        assert_eq!(
            named("postgres://crawlq:s3cret@db.internal:5433/crawlq?sslmode=require"),
            "postgres://crawlq:***@db.internal:5433/crawlq?sslmode=require"
        );
        assert_eq!(
            named("postgresql://crawlq@db/crawlq?password=s3cret&sslmode=disable"),
            "postgresql://crawlq@db/crawlq?password=***&sslmode=disable"
        );
        assert_eq!(named("data/crawlq.db"), "data/crawlq.db");
        let debugged = format!(
            "{:?}",
            database_location("postgres://u:s3cret@h/db").unwrap()
        );
        assert!(!debugged.contains("s3cret"), "{debugged}");
    }
}
