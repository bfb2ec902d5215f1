//! A tiny HTTP/1.1 server for integration tests, built on std only.
//!
//! Why write one instead of using a crate: the tests need exact control
//! over timing (arrival timestamps, slow replies) and over which loopback
//! address a "host" lives on (127.0.0.1 and 127.0.0.2 count as different
//! hosts for per-host rate limits). A few hundred lines of blocking std code
//! give that without pulling an async runtime into the test side.
//!
//! Model: one accept thread, one thread per connection, keep-alive
//! supported. It does **not** try to be a general HTTP server. It does not
//! decode chunked request bodies (if a request has one, the server replies
//! and closes the connection) and it always sets the response framing
//! (`Content-Length`, `Connection`) itself.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslMethod};

use super::tls::Identity;

/// Largest request head accepted, terminator included. Beyond it: 431.
const MAX_HEAD: usize = 64 * 1024;

/// Read timeout on connections. Reads wake up this often so an idle
/// keep-alive connection notices that its server was dropped and closes,
/// the way a real server going away would close it.
const POLL: Duration = Duration::from_millis(20);

/// Write timeout on connections. If a client stops reading, the
/// connection thread gives up after this instead of blocking forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server saw: one entry per request, recorded when the request
/// head was fully read (before the body is read and before the handler
/// runs), so `at` is the arrival time and does not include handler time.
#[derive(Clone, Debug)]
pub struct Hit {
    /// No test asks for it yet, but failure messages that print hits show it.
    #[allow(dead_code, reason = "read only through Debug")]
    pub method: String,
    /// Request target as sent: path plus query, e.g. `/a?b=1`.
    pub path: String,
    /// Headers in the order received; names keep the client's casing.
    pub headers: Vec<(String, String)>,
    pub at: Instant,
    /// Which of the server's connections it came on, numbered from 0 in accept order.
    pub connection: usize,
}

impl Hit {
    /// First header called `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The request a handler sees. The body is read and thrown away, because
/// a scraper's tests only need to check what it asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Request target as sent: path plus query, e.g. `/a?b=1`.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First header called `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// What the handler answers.
///
/// The server sets `Content-Length` and `Connection` itself and drops any
/// `Content-Length`, `Transfer-Encoding` or `Connection` in `headers`: a
/// wrong value there would break the keep-alive stream for later requests.
/// A `Connection: close` in `headers` is still honoured: the server closes
/// the connection after this reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long the server waits before writing the response (a slow
    /// server). Only this connection's thread sleeps.
    pub delay: Duration,
}

impl Reply {
    /// 200 with an HTML body.
    pub fn html(body: impl Into<String>) -> Reply {
        Reply::bytes("text/html; charset=utf-8", body.into().into_bytes())
    }

    /// That status with a small text body such as `status 500`.
    /// 1xx, 204 and 304 get no body, because HTTP does not allow one.
    pub fn status(code: u16) -> Reply {
        let body = if status_forbids_body(code) {
            Vec::new()
        } else {
            format!("status {code}").into_bytes()
        };
        Reply::bytes("text/plain; charset=utf-8", body).with_status(code)
    }

    /// That 3xx status with a `Location` header and an empty body.
    pub fn redirect(code: u16, location: &str) -> Reply {
        assert!(
            (300..400).contains(&code),
            "Reply::redirect: {code} is not a 3xx status"
        );
        Reply {
            status: code,
            headers: vec![("Location".to_string(), location.to_string())],
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with that `Content-Type` and body.
    pub fn bytes(content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".to_string(), content_type.to_string())],
            body,
            delay: Duration::ZERO,
        }
    }

    /// Adds a header. Names may repeat (e.g. several `Set-Cookie`).
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_status(mut self, code: u16) -> Reply {
        self.status = code;
        self
    }

    /// The server waits `delay` before writing the response.
    pub fn with_delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync + 'static;

/// State shared by the accept thread and all connection threads.
struct Shared {
    handler: Box<Handler>,
    hits: Mutex<Vec<Hit>>,
    /// Requests being answered now, and the most there ever were at once (see
    /// [`TestServer::most_at_once`]).
    answering: AtomicUsize,
    most_at_once: AtomicUsize,
    /// Set by `Drop`. The accept loop and idle connections check it.
    stop: AtomicBool,
    /// Set for a server that speaks HTTPS (see [`TestServer::start_tls`]).
    tls: Option<SslAcceptor>,
}

/// A connection the server reads requests from: plain TCP or TLS over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn hits(&self) -> MutexGuard<'_, Vec<Hit>> {
        // A panic elsewhere must not hide what was recorded: ignore poisoning.
        self.hits.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running test server. Serves until dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Binds `ip:0` (e.g. "127.0.0.1", "127.0.0.2": on Linux all of 127/8
    /// is loopback, so each address can act as a separate host) and serves
    /// with `handler` until dropped.
    ///
    /// Panics if `ip` is not a loopback address: tests must never listen
    /// on, or send a crawler to, a real network.
    pub fn start(
        ip: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        TestServer::start_with(ip, None, handler)
    }

    /// Like [`TestServer::start`], but speaking HTTPS with `identity`'s certificate (HTTP/1.1
    /// only: it offers no other protocol through ALPN). [`TestServer::url`] gives `https://`.
    pub fn start_tls(
        ip: &str,
        identity: &Identity,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let mut acceptor =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("TLS acceptor");
        acceptor
            .set_private_key(&identity.key)
            .expect("the identity's key");
        acceptor
            .set_certificate(&identity.certificate)
            .expect("the identity's certificate");
        acceptor
            .check_private_key()
            .expect("key and certificate match");
        TestServer::start_with(ip, Some(acceptor.build()), handler)
    }

    fn start_with(
        ip: &str,
        tls: Option<SslAcceptor>,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let ip: IpAddr = ip
            .parse()
            .unwrap_or_else(|e| panic!("TestServer::start: bad IP {ip:?}: {e}"));
        assert!(
            ip.is_loopback(),
            "TestServer::start: {ip} is not a loopback address"
        );
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("TestServer::start: cannot bind {ip}:0: {e}"));
        let addr = listener.local_addr().expect("listener has a local address");
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            hits: Mutex::new(Vec::new()),
            answering: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            tls,
        });
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("test-server-accept-{addr}"))
            .spawn(move || accept_loop(listener, for_thread))
            .expect("spawn accept thread");
        TestServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// A server where every path answers `Reply::html` of a tiny page whose
    /// `<title>` is the request target (path plus query, HTML-escaped).
    pub fn pages(ip: &str) -> TestServer {
        TestServer::start(ip, |req| {
            let title = escape_html(&req.path);
            Reply::html(format!(
                "<!doctype html>\n<html><head><title>{title}</title></head>\
                 <body><p>{title}</p></body></html>\n"
            ))
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` (`https://` for a TLS server) followed by `path`, which must
    /// start with '/'.
    pub fn url(&self, path: &str) -> String {
        assert!(
            path.starts_with('/'),
            "TestServer::url: path {path:?} must start with '/'"
        );
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// All requests so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits().clone()
    }

    /// Requests for anything but `/robots.txt` (which a daemon obeying robots.txt asks
    /// for first).
    pub fn page_hits(&self) -> Vec<Hit> {
        self.shared
            .hits()
            .iter()
            .filter(|h| h.path != "/robots.txt")
            .cloned()
            .collect()
    }

    /// The most requests this server was answering at the same time, each from its head
    /// arriving to its reply written (a delayed reply counts for its whole delay). With a
    /// loopback address of its own, a server is one host to the daemon (whose limits go by
    /// host, not port), and this is what the daemon's per-host in-flight cap bounds. A
    /// request the daemon gave up on (its timeout) still counts until its reply is written.
    pub fn most_at_once(&self) -> usize {
        self.shared.most_at_once.load(Ordering::SeqCst)
    }

    /// Requests whose target is exactly `path` (the query counts too).
    pub fn hits_for(&self, path: &str) -> Vec<Hit> {
        self.shared
            .hits()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for TestServer {
    /// Stops accepting and closes idle connections. Does not wait for
    /// connection threads: one may be in a long `delay`, and a test
    /// should not have to wait for it. A reply already being delayed is
    /// still written once the delay ends.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // `accept()` has no timeout, so connect once to wake it; the loop
        // then sees the flag and returns, which closes the listener.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(accept) = self.accept.take() {
            // If the wake-up connect failed, joining could block forever;
            // leaving one thread behind is the lesser evil.
            if woke {
                let _ = accept.join();
            }
        }
    }
}

/// Owns the listener so that returning from here closes it.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for (number, conn) in listener.incoming().enumerate() {
        if shared.stopped() {
            break;
        }
        let Ok(stream) = conn else {
            // e.g. EMFILE or a connection reset before accept;
            // pause briefly so a persistent error doesn't spin a core.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let shared = Arc::clone(&shared);
        // If the spawn fails, the stream is dropped and the client sees the
        // connection close. That beats killing the accept loop.
        let _ = thread::Builder::new()
            .name("test-server-conn".to_string())
            .spawn(move || serve_connection(stream, &shared, number));
    }
}

fn serve_connection(mut stream: TcpStream, shared: &Shared, number: usize) {
    // Without TCP_NODELAY, Nagle plus delayed ACK can add ~40 ms to small
    // writes, which would distort timing tests.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    // Bytes read but not yet used. Kept across requests so that pipelined
    // requests (or a body plus the next head in one read) are not lost.
    let mut buf = Vec::new();
    let Some(acceptor) = &shared.tls else {
        if stream.set_read_timeout(Some(POLL)).is_err() {
            return;
        }
        while let Ok(true) = serve_one(&mut stream, &mut buf, shared, number) {}
        // Send FIN now rather than waiting for the drop below.
        let _ = stream.shutdown(Shutdown::Write);
        return;
    };
    // The handshake gets a plain deadline; a client that refuses the certificate just
    // closes the connection, which ends it here.
    if stream.set_read_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let Ok(mut tls) = acceptor.accept(stream) else {
        return;
    };
    if tls.get_ref().set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    while let Ok(true) = serve_one(&mut tls, &mut buf, shared, number) {}
    let _ = tls.shutdown();
    let _ = tls.get_ref().shutdown(Shutdown::Write);
}

/// Serves one request on connection number `connection`. `Ok(true)` means keep the
/// connection open. Errors (client gone, server stopped) just close the connection.
fn serve_one(
    stream: &mut impl ReadWrite,
    buf: &mut Vec<u8>,
    shared: &Shared,
    connection: usize,
) -> io::Result<bool> {
    if shared.stopped() {
        return Ok(false);
    }

    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() >= MAX_HEAD {
            write_response(stream, &Reply::status(431), false, false)?;
            return Ok(false);
        }
        if read_more(stream, buf, shared)? == 0 {
            return Ok(false); // client closed, between or during requests
        }
    };
    let at = Instant::now();
    if shared.stopped() {
        // The server is gone: close without answering, as a dead server would.
        return Ok(false);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);

    let Some((req, version)) = parse_head(&head) else {
        write_response(stream, &Reply::status(400), false, false)?;
        return Ok(false);
    };
    shared.hits().push(Hit {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        at,
        connection,
    });
    let _answering = Answering::start(shared);

    // HTTP/1.1 defaults to keep-alive; HTTP/1.0 (or anything else) closes.
    let mut keep_alive = version == "HTTP/1.1" && !has_token(&req.headers, "connection", "close");

    if req.header("transfer-encoding").is_some() {
        // We don't decode chunked bodies, so we can't find where the next
        // request starts: answer, then close.
        keep_alive = false;
    } else {
        let body_len = match req.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                write_response(stream, &Reply::status(400), false, false)?;
                return Ok(false);
            }
        };
        // curl sends `Expect: 100-continue` for large bodies and otherwise
        // waits about a second before sending the body anyway.
        if body_len > 0 && has_token(&req.headers, "expect", "100-continue") {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        discard(stream, buf, body_len, shared)?;
    }

    // A panicking handler (say, a failed assert) becomes a 500 instead of a
    // dropped connection, which would be harder to understand in a client
    // error. The panic message is still printed.
    let reply = panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(&req)))
        .unwrap_or_else(|_| Reply::status(500).with_header("X-Test-Server", "handler panicked"));
    if has_token(&reply.headers, "connection", "close") {
        keep_alive = false;
    }
    if !reply.delay.is_zero() {
        thread::sleep(reply.delay);
    }
    write_response(stream, &reply, req.method == "HEAD", keep_alive)?;
    Ok(keep_alive)
}

/// A request being answered, counted in `Shared::answering` until dropped: after its reply
/// is written, or when the connection fails.
struct Answering<'s>(&'s Shared);

impl<'s> Answering<'s> {
    fn start(shared: &'s Shared) -> Answering<'s> {
        let now = shared.answering.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_at_once.fetch_max(now, Ordering::SeqCst);
        Answering(shared)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads more bytes into `buf`. `Ok(0)` means the client closed.
/// Fails once the server is stopped, so idle connections end on drop.
fn read_more(stream: &mut impl ReadWrite, buf: &mut Vec<u8>, shared: &Shared) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            // The read timeout: a chance to look at the stop flag.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stopped() {
                    return Err(io::Error::other("test server stopped"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads and drops `len` body bytes, starting with any already in `buf`.
fn discard(
    stream: &mut impl ReadWrite,
    buf: &mut Vec<u8>,
    mut len: usize,
    shared: &Shared,
) -> io::Result<()> {
    loop {
        let take = len.min(buf.len());
        buf.drain(..take);
        len -= take;
        if len == 0 {
            return Ok(());
        }
        if read_more(stream, buf, shared)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Parses "METHOD TARGET VERSION" and the header lines.
/// Returns the request and its HTTP version, or `None` if malformed.
fn parse_head(head: &str) -> Option<(Request, String)> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || path.is_empty() {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
    };
    Some((req, version.to_string()))
}

/// Writes the whole response in one `write_all`. The caller treats a write
/// error as "client gone" and just closes the connection.
fn write_response(
    stream: &mut impl ReadWrite,
    reply: &Reply,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let status = reply.status;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in &reply.headers {
        let framing = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f));
        if !framing {
            let _ = write!(head, "{name}: {value}\r\n");
        }
    }
    // 1xx and 204 must not carry Content-Length. For HEAD and 304 it states
    // the length a GET would have returned.
    if !(status < 200 || status == 204) {
        let _ = write!(head, "Content-Length: {}\r\n", reply.body.len());
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(head, "Connection: {connection}\r\n\r\n");

    let mut out = head.into_bytes();
    if !head_only && !status_forbids_body(status) {
        out.extend_from_slice(&reply.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

fn status_forbids_body(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Does any `name` header hold `token` in its comma-separated list?
/// (e.g. `Connection: keep-alive, close`)
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}
