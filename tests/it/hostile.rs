//! Servers that misbehave on purpose, at the byte level: each job ends `done` or `failed`
//! with a readable reason within the timeout, and the daemon keeps serving other jobs.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};
use crate::common::RunningDaemon;
use crawlq::runtime::block_on;

/// A loopback server that answers each request by running `behave` on the raw socket,
/// chosen by the request path.
struct RawServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    fn start(behave: fn(&str, &mut TcpStream)) -> RawServer {
        let listener = TcpListener::bind("127.0.0.3:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let stopped = Arc::clone(&stopped);
                thread::spawn(move || {
                    let path = read_request_path(&mut stream);
                    if !stopped.load(Ordering::SeqCst) {
                        behave(&path, &mut stream);
                    }
                });
            }
        });
        RawServer { addr, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_request_path(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.split_whitespace().nth(1).unwrap_or("/").to_owned()
}

/// Closes with a TCP reset rather than a clean FIN.
fn reset(stream: &mut TcpStream) {
    let socket = socket2::SockRef::from(&*stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Read);
}

fn write(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
}

/// Sends `bytes` one at a time, `every` apart, for up to a minute (the client gives up
/// first).
fn trickle(stream: &mut TcpStream, bytes: &[u8], every: Duration) {
    let until = Instant::now() + Duration::from_secs(60);
    for byte in bytes.iter().cycle() {
        if Instant::now() > until || stream.write_all(&[*byte]).is_err() {
            return;
        }
        thread::sleep(every);
    }
}

/// Writes zeros until the client hangs up.
fn endless(stream: &mut TcpStream) {
    let block = [0u8; 64 * 1024];
    while stream.write_all(&block).is_ok() {}
}

/// A gzip body that never ends and inflates ~1 000-fold: 1 MiB of zeros per ~1 KiB sent,
/// without end (a gigabyte for a megabyte). Deflate blocks ended by a sync flush are byte
/// aligned, and a block of zeros only refers back to zeros, so the same block can follow
/// itself for ever.
fn gzip_bomb(stream: &mut TcpStream) {
    use flate2::{Compress, Compression, FlushCompress};
    let zeros = vec![0u8; 1 << 20];
    let mut deflate = Compress::new(Compression::best(), false);
    let block = |deflate: &mut Compress| {
        let mut out = Vec::with_capacity(4096);
        deflate
            .compress_vec(&zeros, &mut out, FlushCompress::Sync)
            .unwrap();
        out
    };
    let first = block(&mut deflate);
    let repeated = block(&mut deflate);
    // The gzip header: magic, deflate, no flags, no time, no extra flags, unknown OS.
    let mut start = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    start.extend_from_slice(&first);
    write(
        stream,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n",
    );
    write(stream, &start);
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until && stream.write_all(&repeated).is_ok() {}
}

fn behave(path: &str, stream: &mut TcpStream) {
    const HTML: &str = "Content-Type: text/html\r\n";
    match path {
        "/reset-in-headers" => {
            write(stream, b"HTTP/1.1 200 OK\r\nContent-Ty");
            reset(stream);
        }
        "/reset-in-body" => {
            write(
                stream,
                format!("HTTP/1.1 200 OK\r\n{HTML}Content-Length: 1000\r\n\r\n<title>cut")
                    .as_bytes(),
            );
            reset(stream);
        }
        "/headers-never-end" => {
            write(stream, b"HTTP/1.1 200 OK\r\n");
            trickle(stream, b"X-Slow: aaaa\r\n", Duration::from_millis(200));
        }
        "/body-trickles" => {
            write(
                stream,
                format!("HTTP/1.1 200 OK\r\n{HTML}Content-Length: 100000\r\n\r\n").as_bytes(),
            );
            trickle(stream, b"<p>slow</p>", Duration::from_millis(100));
        }
        "/length-too-long" => {
            write(
                stream,
                format!(
                    "HTTP/1.1 200 OK\r\n{HTML}Content-Length: 5000\r\n\r\n<title>short</title>"
                )
                .as_bytes(),
            );
            let _ = stream.shutdown(Shutdown::Write);
        }
        "/length-too-short" => {
            write(
                stream,
                format!(
                    "HTTP/1.1 200 OK\r\n{HTML}Content-Length: 20\r\nConnection: close\r\n\r\n\
                     <title>cut here</title> and more bytes the length does not cover"
                )
                .as_bytes(),
            );
            let _ = stream.shutdown(Shutdown::Write);
        }
        "/bad-chunks" => {
            write(
                stream,
                format!("HTTP/1.1 200 OK\r\n{HTML}Transfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n")
                    .as_bytes(),
            );
            let _ = stream.shutdown(Shutdown::Write);
        }
        "/http-1.0" => {
            write(
                stream,
                format!("HTTP/1.0 200 OK\r\n{HTML}\r\n<title>from 1996</title>").as_bytes(),
            );
            let _ = stream.shutdown(Shutdown::Write);
        }
        "/informational-first" => {
            write(
                stream,
                format!(
                    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                     HTTP/1.1 200 OK\r\n{HTML}Content-Length: 22\r\n\r\n<title>finally</title>"
                )
                .as_bytes(),
            );
        }
        "/five-gigabytes" => {
            write(
                stream,
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5368709120\r\n\r\n",
            );
            endless(stream);
        }
        "/endless-chunked" => {
            write(
                stream,
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            while stream.write_all(chunk.as_bytes()).is_ok() {}
        }
        "/gzip-bomb" => gzip_bomb(stream),
        "/redirect-without-location" => {
            write(stream, b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n");
        }
        "/garbage-location" => {
            write(
                stream,
                b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n",
            );
        }
        "/to-file" => write(
            stream,
            b"HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n\r\n",
        ),
        "/to-ftp" => write(
            stream,
            b"HTTP/1.1 301 Moved\r\nLocation: ftp://example.com/x\r\nContent-Length: 0\r\n\r\n",
        ),
        "/to-javascript" => write(
            stream,
            b"HTTP/1.1 302 Found\r\nLocation: javascript:alert(1)\r\nContent-Length: 0\r\n\r\n",
        ),
        _ => write(
            stream,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ),
    }
}

#[test]
fn broken_servers_end_each_job_with_a_reason_and_the_daemon_keeps_going() {
    block_on(async {
        let raw = RawServer::start(behave);
        let good = TestServer::pages("127.0.0.1");
        let daemon = RunningDaemon::start(|s| {
            s.fetch.timeout = Duration::from_secs(2);
        })
        .await;
        // (path, "done" or the words the failure reason must contain)
        let cases = [
            ("/reset-in-headers", "network error talking to 127.0.0.3"),
            ("/reset-in-body", "127.0.0.3"),
            (
                "/headers-never-end",
                "timed out after 2 s waiting for 127.0.0.3",
            ),
            (
                "/body-trickles",
                "timed out after 2 s waiting for 127.0.0.3",
            ),
            ("/length-too-long", "127.0.0.3"),
            ("/length-too-short", "done"),
            (
                "/five-gigabytes",
                "response body is larger than fetch.max_body_bytes",
            ),
            (
                "/endless-chunked",
                "response body is larger than fetch.max_body_bytes",
            ),
            ("/bad-chunks", "127.0.0.3"),
            (
                "/gzip-bomb",
                "response body is larger than fetch.max_body_bytes",
            ),
            ("/http-1.0", "done"),
            ("/informational-first", "done"),
            ("/redirect-without-location", "HTTP 302 Found"),
            ("/garbage-location", "Location"),
            ("/to-file", "unsupported URL scheme \"file\""),
            ("/to-ftp", "unsupported URL scheme \"ftp\""),
            ("/to-javascript", "unsupported URL scheme \"javascript\""),
        ];
        let mut ids = Vec::new();
        for (path, _) in cases {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO jobs (url, max_attempts) VALUES (?1, 1) RETURNING id",
            )
            .bind(raw.url(path))
            .fetch_one(daemon.sql.sqlite())
            .await
            .unwrap();
            ids.push(id);
        }
        // TLS spoken to a plain-HTTP port.
        let tls = daemon
            .insert(&good.url("/tls").replace("http://", "https://"))
            .await;
        // Meanwhile an ordinary host is served as usual.
        let ordinary = daemon.insert(&good.url("/ordinary")).await;
        assert_eq!(daemon.wait_finished(ordinary).await.status, "done");

        for (id, (path, expected)) in ids.into_iter().zip(cases) {
            let job = daemon.wait_finished(id).await;
            if expected == "done" {
                assert_eq!(job.status, "done", "{path}: {:?}", job.error);
                continue;
            }
            assert_eq!(job.status, "failed", "{path}");
            let error = job.error.unwrap_or_default();
            assert!(
                error.contains(expected),
                "{path}: {error:?} lacks {expected:?}"
            );
        }
        let titles: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT j.url, r.title FROM jobs j JOIN latest_results r ON r.job_id = j.id
              WHERE j.status = 'done' ORDER BY j.id",
        )
        .fetch_all(daemon.sql.sqlite())
        .await
        .unwrap();
        let title_of = |path: &str| {
            titles
                .iter()
                .find(|(url, _)| url.ends_with(path))
                .and_then(|(_, title)| title.clone())
        };
        assert_eq!(title_of("/http-1.0").as_deref(), Some("from 1996"));
        assert_eq!(title_of("/informational-first").as_deref(), Some("finally"));
        // A Content-Length shorter than the body is believed: only its 20 bytes are read
        // (an unclosed <title> runs to the end of what was read).
        assert_eq!(
            title_of("/length-too-short").as_deref(),
            Some("cut here</tit")
        );

        let job = daemon.wait_finished(tls).await;
        assert_ne!(job.status, "done");
        daemon.stop().await;
    });
}

#[test]
fn huge_titles_many_links_and_deep_nesting_are_parsed_within_bounds() {
    block_on(async {
        let server = TestServer::start("127.0.0.1", |req| match req.path.as_str() {
            "/huge-title" => Reply::html(format!("<title>{}</title>", "t".repeat(1 << 20))),
            "/many-links" => Reply::html(
                (0..100_000)
                    .map(|i| format!("<a href=\"/l/{i}\">{i}</a>"))
                    .collect::<String>(),
            ),
            "/deep" => Reply::html(format!(
                "<title>deep</title>{}x{}",
                "<div>".repeat(100_000),
                "</div>".repeat(100_000)
            )),
            _ => Reply::html("<title>ordinary</title>"),
        });
        let daemon = RunningDaemon::start(|_| {}).await;
        let ids = [
            daemon.insert(&server.url("/huge-title")).await,
            daemon.insert(&server.url("/many-links")).await,
            daemon.insert(&server.url("/deep")).await,
            daemon.insert(&server.url("/ordinary")).await,
        ];
        daemon.wait_all_done(&ids).await;
        let (title_len, links): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT length(title) FROM results WHERE job_id = ?1),
                    (SELECT json_array_length(links) FROM results WHERE job_id = ?2)",
        )
        .bind(ids[0])
        .bind(ids[1])
        .fetch_one(daemon.sql.sqlite())
        .await
        .unwrap();
        assert!(
            title_len > 0,
            "the huge title is kept (it is under the body cap)"
        );
        assert_eq!(links, 100_000, "every link is kept");
        let deep: Option<String> =
            sqlx::query_scalar("SELECT title FROM results WHERE job_id = ?1")
                .bind(ids[2])
                .fetch_one(daemon.sql.sqlite())
                .await
                .unwrap();
        assert_eq!(deep.as_deref(), Some("deep"));
        daemon.stop().await;
    });
}
