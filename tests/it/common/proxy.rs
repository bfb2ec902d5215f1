//! A small forwarding proxy for integration tests, std threads only, like [`super::server`]:
//! an HTTP proxy (absolute-form requests forwarded, `CONNECT host:port` tunnelled) or a
//! SOCKS5 one, recording every request it was asked to carry, optionally requiring
//! credentials (Basic for HTTP, user/password for SOCKS5). It only ever connects to
//! loopback addresses: tests must not reach a real network through it either.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use base64::Engine;

/// One request the proxy was asked to carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHit {
    /// `GET` (forwarded), `CONNECT` (tunnelled), or `SOCKS5`.
    pub method: String,
    /// As the client named it: `http://127.0.0.5:4000/a` for a forwarded GET, `host:port`
    /// for CONNECT and SOCKS5.
    pub target: String,
    /// The `Proxy-Authorization` header (HTTP) or `user:password` (SOCKS5) it came with.
    pub credentials: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Socks5,
}

struct Shared {
    kind: Kind,
    /// `user:password` the client must present.
    required: Option<String>,
    /// Take the request, then close the connection without an answer (a proxy dying).
    hang_up: bool,
    hits: Mutex<Vec<ProxyHit>>,
    stop: AtomicBool,
}

pub struct TestProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// An HTTP proxy on `ip:0` (a loopback address).
    pub fn http(ip: &str) -> TestProxy {
        TestProxy::start(ip, Kind::Http, None, false)
    }

    /// An HTTP proxy that answers 407 unless the request carries `user:password` as Basic.
    pub fn http_with_login(ip: &str, user: &str, password: &str) -> TestProxy {
        TestProxy::start(ip, Kind::Http, Some(format!("{user}:{password}")), false)
    }

    /// An HTTP proxy that reads each request and closes the connection without answering.
    pub fn http_hanging_up(ip: &str) -> TestProxy {
        TestProxy::start(ip, Kind::Http, None, true)
    }

    /// A SOCKS5 proxy without authentication.
    pub fn socks5(ip: &str) -> TestProxy {
        TestProxy::start(ip, Kind::Socks5, None, false)
    }

    /// A SOCKS5 proxy that takes only `user` / `password` (RFC 1929).
    pub fn socks5_with_login(ip: &str, user: &str, password: &str) -> TestProxy {
        TestProxy::start(ip, Kind::Socks5, Some(format!("{user}:{password}")), false)
    }

    fn start(ip: &str, kind: Kind, required: Option<String>, hang_up: bool) -> TestProxy {
        let ip: IpAddr = ip.parse().expect("a proxy IP");
        assert!(
            ip.is_loopback(),
            "TestProxy: {ip} is not a loopback address"
        );
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind the test proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            kind,
            required,
            hang_up,
            hits: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("test-proxy-{addr}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if for_thread.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&for_thread);
                    thread::spawn(move || {
                        let _ = match shared.kind {
                            Kind::Http => serve_http(stream, &shared),
                            Kind::Socks5 => serve_socks5(stream, &shared),
                        };
                    });
                }
            })
            .unwrap();
        TestProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The proxy's URL as crawlq's settings take it, e.g. `http://127.0.0.7:41234`.
    pub fn url(&self) -> String {
        let scheme = match self.shared.kind {
            Kind::Http => "http",
            Kind::Socks5 => "socks5",
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The same with `user:password@`.
    pub fn url_with_login(&self, user: &str, password: &str) -> String {
        self.url()
            .replacen("://", &format!("://{user}:{password}@"), 1)
    }

    /// Every request it was asked to carry so far, in arrival order.
    pub fn hits(&self) -> Vec<ProxyHit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// The targets of [`TestProxy::hits`].
    pub fn targets(&self) -> Vec<String> {
        self.hits().into_iter().map(|hit| hit.target).collect()
    }
}

impl Drop for TestProxy {
    /// Stops accepting: new connections are refused from then on, as a dead proxy's are.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// An address on `ip` where nothing listens: connections to it are refused.
pub fn refusing_address(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    listener.local_addr().unwrap()
}

fn record(shared: &Shared, method: &str, target: &str, credentials: Option<String>) {
    shared.hits.lock().unwrap().push(ProxyHit {
        method: method.to_owned(),
        target: target.to_owned(),
        credentials,
    });
}

/// A loopback address for `host:port` (a name is resolved, as a proxy would).
fn loopback(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .ok()?
        .find(|addr| addr.ip().is_loopback())
}

/// Reads a request or response head, through the blank line; None at a clean EOF.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// One client connection to the HTTP proxy: requests one after another (keep-alive), a
/// CONNECT turning it into a tunnel.
fn serve_http(client: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    while let Some(head) = read_head(&mut reader)? {
        let mut words = head[0].split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let offered = header(&head, "Proxy-Authorization").map(str::to_owned);
        record(shared, &method, &target, offered.clone());
        if shared.hang_up {
            return writer.shutdown(Shutdown::Both);
        }
        if let Some(required) = &shared.required {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(required)
            );
            if offered.as_deref() != Some(expected.as_str()) {
                writer.write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"test\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return writer.shutdown(Shutdown::Both);
            }
        }
        if method == "CONNECT" {
            let origin = target
                .rsplit_once(':')
                .and_then(|(host, port)| loopback(host, port.parse().ok()?))
                .and_then(|addr| TcpStream::connect(addr).ok());
            let Some(origin) = origin else {
                writer.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")?;
                continue;
            };
            writer.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            // Bytes curl sent after the CONNECT head, if any, are still in the reader.
            return tunnel(reader, writer, origin);
        }
        forward(&head, &target, &mut writer)?;
    }
    Ok(())
}

/// One absolute-form request sent on to its origin as origin-form, the answer copied back.
fn forward(head: &[String], target: &str, client: &mut TcpStream) -> io::Result<()> {
    let bad_gateway = |client: &mut TcpStream| {
        client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
    };
    let Ok(url) = url::Url::parse(target) else {
        return bad_gateway(client);
    };
    let origin = url
        .host_str()
        .and_then(|host| loopback(host, url.port_or_known_default()?))
        .and_then(|addr| TcpStream::connect(addr).ok());
    let Some(mut origin) = origin else {
        return bad_gateway(client);
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let method = head[0].split_whitespace().next().unwrap_or("GET");
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for line in &head[1..] {
        let name = line.split_once(':').map_or("", |(name, _)| name.trim());
        if !["proxy-authorization", "proxy-connection", "connection"]
            .contains(&name.to_ascii_lowercase().as_str())
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    origin.write_all(out.as_bytes())?;
    // The origin closes after its answer (Connection: close): copy it all, then tell the
    // client how long it was, so its connection to the proxy can be kept alive.
    let mut answer = BufReader::new(origin);
    let Some(response) = read_head(&mut answer)? else {
        return bad_gateway(client);
    };
    let mut body = Vec::new();
    answer.read_to_end(&mut body)?;
    let mut out = String::new();
    for line in &response {
        let name = line.split_once(':').map_or("", |(name, _)| name.trim());
        if !["content-length", "connection", "transfer-encoding"]
            .contains(&name.to_ascii_lowercase().as_str())
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    client.write_all(out.as_bytes())?;
    client.write_all(&body)
}

/// Copies bytes both ways until either side closes.
fn tunnel(
    mut from_client: impl Read + Send + 'static,
    mut to_client: TcpStream,
    origin: TcpStream,
) -> io::Result<()> {
    let mut to_origin = origin.try_clone()?;
    let upstream = thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_origin);
        let _ = to_origin.shutdown(Shutdown::Write);
    });
    let mut from_origin = origin;
    let _ = io::copy(&mut from_origin, &mut to_client);
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = upstream.join();
    Ok(())
}

/// One SOCKS5 connection (RFC 1928, CONNECT only; RFC 1929 user/password when required).
fn serve_socks5(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting)?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods)?;
    let wanted = if shared.required.is_some() { 2 } else { 0 };
    if greeting[0] != 5 || !methods.contains(&wanted) {
        client.write_all(&[5, 0xff])?;
        return Ok(());
    }
    client.write_all(&[5, wanted])?;
    let mut offered = None;
    if let Some(required) = &shared.required {
        let mut version_and_length = [0u8; 2];
        client.read_exact(&mut version_and_length)?;
        let mut user = vec![0u8; usize::from(version_and_length[1])];
        client.read_exact(&mut user)?;
        let mut length = [0u8; 1];
        client.read_exact(&mut length)?;
        let mut password = vec![0u8; usize::from(length[0])];
        client.read_exact(&mut password)?;
        let login = format!(
            "{}:{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&password)
        );
        let accepted = &login == required;
        offered = Some(login);
        client.write_all(&[1, if accepted { 0 } else { 1 }])?;
        if !accepted {
            return Ok(());
        }
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request)?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip)?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut length = [0u8; 1];
            client.read_exact(&mut length)?;
            let mut name = vec![0u8; usize::from(length[0])];
            client.read_exact(&mut name)?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip)?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        _ => return Ok(()),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port)?;
    let port = u16::from_be_bytes(port);
    record(shared, "SOCKS5", &format!("{host}:{port}"), offered);
    if shared.hang_up {
        return client.shutdown(Shutdown::Both);
    }
    let origin = loopback(&host, port).and_then(|addr| TcpStream::connect(addr).ok());
    let Some(origin) = origin else {
        // Reply 5: connection refused.
        client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])?;
        return Ok(());
    };
    client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])?;
    tunnel(client.try_clone()?, client, origin)
}
