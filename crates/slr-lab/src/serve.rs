//! `slr serve`: the HTTP/1.1 and UDP echo servers the lab runs on each host server.
//!
//! Every answer names the host that produced it, so a client talking to a VIP can tell
//! which host server the router picked, and which address it dialled (with AnyIP a server
//! bound to 0.0.0.0 accepts on the VIP and answers from it: direct server return).
//!
//! HTTP (std::net, one thread per connection, keep-alive, `Content-Length` framing):
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | `served-by=<name> client=<peer ip:port> vip=<local ip the client dialled>\n` |
//! | `GET /health` | `ok\n` |
//! | `GET /json` | `{"served_by":..,"client":..,"vip":..,"port":..}` |
//! | `GET /bytes/N` | N bytes, byte i = `(i % 251) as u8`, streamed (N up to 1 TiB) |
//! | `POST /upload` | `bytes=<n> fnv64=<16 hex digits>\n`: length and FNV-1a 64 of the body |
//!
//! Every response carries `X-Served-By: <name>`. `HEAD` works wherever `GET` does.
//! Request bodies may be `Content-Length` or `Transfer-Encoding: chunked`; `Expect:
//! 100-continue` is honoured. 251 is prime, so the `/bytes` pattern never lines up with
//! power-of-two buffer sizes and a dropped, duplicated or reordered block shows.
//!
//! UDP echo: each `--udp ADDR` is bound exactly (with `IP_FREEBIND`, so the VIP may be
//! bound before the host agent has added its AnyIP route), and every datagram is
//! answered with `served-by=<name> client=<peer ip:port> bytes=<len> fnv64=<hex>`.
//!
//! Bounded: at most `--max-connections` connections (more get `503` and are closed),
//! request heads of at most 16 KiB read within 10 s, idle keep-alive connections closed
//! after `--idle-timeout`, stalled writes after 30 s. Logs go to stderr; SIGTERM ends
//! the process (no state to save).

use anyhow::{Context, Result};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `slr serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Name reported in every answer (the lab passes the host's node name).
    #[arg(long)]
    name: String,
    /// HTTP listen address.
    #[arg(long, default_value = "0.0.0.0:80")]
    http: SocketAddr,
    /// UDP echo address, bound exactly (repeatable or a comma list), e.g. 10.99.0.1:7.
    #[arg(long, value_delimiter = ',')]
    udp: Vec<SocketAddr>,
    /// Most HTTP connections served at once; further ones get 503 and are closed.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
}

/// Longest request head (request line plus headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time allowed to receive a whole request head once it started.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that makes no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `/bytes/N` served.
const MAX_BYTES: u64 = 1 << 40;
/// Body of a request to another path than /upload drained to keep the connection usable;
/// anything larger closes the connection instead.
const MAX_DRAIN: u64 = 1 << 20;
/// The period of the `/bytes` pattern.
const PATTERN_PERIOD: usize = 251;

/// FNV-1a 64-bit, streaming: the checksum `/upload` and UDP echo report.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    /// Adds bytes to the hash.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The hash of `bytes`.
    pub fn hash(bytes: &[u8]) -> u64 {
        let mut h = Fnv1a64::default();
        h.update(bytes);
        h.value()
    }
}

/// Byte `i` of the `/bytes/N` answer.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD as u64) as u8
}

/// The UDP echo answer for a datagram (also used by the lab to check answers).
pub fn udp_answer(name: &str, peer: SocketAddr, datagram: &[u8]) -> String {
    format!(
        "served-by={name} client={peer} bytes={} fnv64={:016x}",
        datagram.len(),
        Fnv1a64::hash(datagram)
    )
}

struct Server {
    name: String,
    max_connections: usize,
    idle_timeout: Duration,
    active: AtomicUsize,
    connections: AtomicU64,
    requests: AtomicU64,
    rejected: AtomicU64,
    datagrams: AtomicU64,
}

/// Runs the servers until the process is killed.
pub fn run(args: ServeArgs) -> Result<()> {
    let server = Arc::new(Server {
        name: args.name.clone(),
        max_connections: args.max_connections.max(1),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        active: AtomicUsize::new(0),
        connections: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        datagrams: AtomicU64::new(0),
    });
    let listener =
        TcpListener::bind(args.http).with_context(|| format!("binding HTTP on {}", args.http))?;
    eprintln!("slr serve {}: HTTP on {}", args.name, args.http);
    for &addr in &args.udp {
        let socket = bind_udp(addr).with_context(|| format!("binding UDP on {addr}"))?;
        eprintln!("slr serve {}: UDP echo on {addr}", args.name);
        let server = Arc::clone(&server);
        std::thread::Builder::new()
            .name(format!("udp-{addr}"))
            .spawn(move || udp_loop(&server, &socket, addr))
            .context("spawning a UDP thread")?;
    }
    {
        let server = Arc::clone(&server);
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || stats_loop(&server))
            .context("spawning the stats thread")?;
    }
    accept_loop(&server, &listener);
    Ok(())
}

/// Logs counters every 10 s when they changed (per-request logs would drown a benchmark).
fn stats_loop(server: &Server) {
    let mut last = (0, 0, 0, 0);
    loop {
        std::thread::sleep(Duration::from_secs(10));
        let now = (
            server.connections.load(Ordering::Relaxed),
            server.requests.load(Ordering::Relaxed),
            server.rejected.load(Ordering::Relaxed),
            server.datagrams.load(Ordering::Relaxed),
        );
        if now != last {
            eprintln!(
                "slr serve {}: connections={} requests={} rejected={} datagrams={} active={}",
                server.name,
                now.0,
                now.1,
                now.2,
                now.3,
                server.active.load(Ordering::Relaxed)
            );
            last = now;
        }
    }
}

fn accept_loop(server: &Arc<Server>, listener: &TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("slr serve {}: accept: {e}", server.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        server.connections.fetch_add(1, Ordering::Relaxed);
        if server.active.load(Ordering::Relaxed) >= server.max_connections {
            server.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = respond_simple(
                &mut &stream,
                &server.name,
                503,
                "too many connections\n",
                false,
                false,
            );
            continue;
        }
        server.active.fetch_add(1, Ordering::Relaxed);
        let conn_server = Arc::clone(server);
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(e) = serve_connection(&conn_server, stream) {
                    // Timeouts and resets are routine for a server; note anything else.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
                    ) {
                        eprintln!("slr serve {}: connection: {e}", conn_server.name);
                    }
                }
                conn_server.active.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            server.active.fetch_sub(1, Ordering::Relaxed);
            eprintln!("slr serve {}: cannot spawn a thread: {e}", server.name);
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    http11: bool,
    content_length: Option<u64>,
    chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
}

impl Request {
    fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.connection_close
        } else {
            self.connection_keep_alive
        }
    }
    fn has_body(&self) -> bool {
        self.chunked || self.content_length.unwrap_or(0) > 0
    }
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Not HTTP, or a header we cannot make sense of (answered 400).
    Malformed(&'static str),
    /// Longer than [`MAX_HEAD`] (answered 431).
    TooLarge,
    /// Not finished within [`HEAD_TIMEOUT`] (answered 408).
    Slow,
}

/// Reads one line (through '\n') into `line`, without letting it exceed `budget` bytes.
/// Returns false on EOF before any byte.
fn read_line_bounded<R: BufRead>(
    r: &mut R,
    line: &mut Vec<u8>,
    budget: &mut usize,
) -> io::Result<bool> {
    line.clear();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if take > *budget {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        *budget -= take;
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            return Ok(true);
        }
    }
}

/// Reads a request head. `Ok(None)` on a clean EOF between requests.
fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Result<Request, HeadError>>> {
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    // Tolerate empty lines before a request (RFC 9112 section 2.2).
    loop {
        match read_line_bounded(r, &mut line, &mut budget) {
            Ok(false) => return Ok(None),
            Ok(true) if line.is_empty() => continue,
            Ok(true) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(Some(Err(HeadError::TooLarge)))
            }
            Err(e) => return Err(e),
        }
    }
    let started = Instant::now();
    let request_line = String::from_utf8_lossy(&line).into_owned();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(Some(Err(HeadError::Malformed("bad request line"))));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Ok(Some(Err(HeadError::Malformed("unsupported HTTP version")))),
    };
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        http11,
        content_length: None,
        chunked: false,
        connection_close: false,
        connection_keep_alive: false,
        expect_continue: false,
    };
    loop {
        if started.elapsed() > HEAD_TIMEOUT {
            return Ok(Some(Err(HeadError::Slow)));
        }
        match read_line_bounded(r, &mut line, &mut budget) {
            Ok(true) => {}
            Ok(false) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(Some(Err(HeadError::TooLarge)))
            }
            Err(e) => return Err(e),
        }
        if line.is_empty() {
            break;
        }
        let header = String::from_utf8_lossy(&line);
        let Some((name, value)) = header.split_once(':') else {
            return Ok(Some(Err(HeadError::Malformed("header without ':'"))));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let Ok(n) = value.parse::<u64>() else {
                    return Ok(Some(Err(HeadError::Malformed("bad Content-Length"))));
                };
                if req.content_length.is_some_and(|m| m != n) {
                    return Ok(Some(Err(HeadError::Malformed("two Content-Lengths"))));
                }
                req.content_length = Some(n);
            }
            "transfer-encoding" => {
                if value.eq_ignore_ascii_case("chunked") {
                    req.chunked = true;
                } else {
                    return Ok(Some(Err(HeadError::Malformed(
                        "unsupported Transfer-Encoding",
                    ))));
                }
            }
            "connection" => {
                for token in value.split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        req.connection_close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        req.connection_keep_alive = true;
                    }
                }
            }
            "expect" => req.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if req.chunked && req.content_length.is_some() {
        // RFC 9112 6.3: a request with both is a smuggling risk; refuse it.
        return Ok(Some(Err(HeadError::Malformed(
            "both Content-Length and chunked",
        ))));
    }
    Ok(Some(Ok(req)))
}

/// A request body, read incrementally from the connection.
enum Body<'a, R> {
    Length {
        r: &'a mut R,
        remaining: u64,
    },
    Chunked {
        r: &'a mut R,
        in_chunk: u64,
        done: bool,
    },
}

impl<'a, R: BufRead> Body<'a, R> {
    fn new(r: &'a mut R, req: &Request) -> Self {
        if req.chunked {
            Body::Chunked {
                r,
                in_chunk: 0,
                done: false,
            }
        } else {
            Body::Length {
                r,
                remaining: req.content_length.unwrap_or(0),
            }
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: BufRead> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Length { r, remaining } => {
                if *remaining == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let max = buf
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let n = r.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *remaining -= n as u64;
                Ok(n)
            }
            Body::Chunked { r, in_chunk, done } => {
                if *done || buf.is_empty() {
                    return Ok(0);
                }
                let mut line = Vec::new();
                if *in_chunk == 0 {
                    let mut budget = 1024;
                    if !read_line_bounded(*r, &mut line, &mut budget)? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let text = String::from_utf8_lossy(&line);
                    let size = text.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                    if size == 0 {
                        // Trailers, then the empty line that ends the body.
                        let mut budget = MAX_HEAD;
                        loop {
                            if !read_line_bounded(*r, &mut line, &mut budget)? {
                                return Err(io::ErrorKind::UnexpectedEof.into());
                            }
                            if line.is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *in_chunk = size;
                }
                let max = buf
                    .len()
                    .min(usize::try_from(*in_chunk).unwrap_or(usize::MAX));
                let n = r.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *in_chunk -= n as u64;
                if *in_chunk == 0 {
                    let mut budget = 2;
                    if !read_line_bounded(*r, &mut line, &mut budget)? || !line.is_empty() {
                        return Err(invalid("chunk not followed by CRLF"));
                    }
                }
                Ok(n)
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn head(name: &str, status: u16, content_type: &str, len: u64, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nServer: slr-serve\r\nX-Served-By: {name}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: {}\r\n\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" }
    )
}

/// Writes a whole small response in one write (one segment: no Nagle/delayed-ACK stall).
fn respond<W: Write>(
    w: &mut W,
    name: &str,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = head(name, status, content_type, body.len() as u64, keep_alive).into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

fn respond_simple<W: Write>(
    w: &mut W,
    name: &str,
    status: u16,
    body: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    respond(
        w,
        name,
        status,
        "text/plain",
        body.as_bytes(),
        keep_alive,
        head_only,
    )
}

/// Streams `/bytes/N` with a buffer that holds whole periods of the pattern, so every
/// write starts at pattern byte 0 and nothing of size N is ever allocated.
fn send_pattern<W: Write>(w: &mut W, n: u64) -> io::Result<()> {
    const PERIODS: usize = 256;
    let block: Vec<u8> = (0..PATTERN_PERIOD * PERIODS)
        .map(|i| pattern_byte(i as u64))
        .collect();
    let mut left = n;
    while left > 0 {
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
        w.write_all(&block[..take])?;
        left -= take as u64;
    }
    w.flush()
}

/// Answers the requests of one connection until the client or an error closes it, or a
/// request asks to close it.
fn serve_connection(server: &Server, stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(server.idle_timeout))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let ends = Ends {
        name: server.name.as_str(),
        peer: stream.peer_addr()?,
        local: stream.local_addr()?,
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut w = &stream;
    loop {
        let req = match read_head(&mut reader)? {
            None => return Ok(()),
            Some(Ok(req)) => req,
            Some(Err(e)) => {
                let (status, msg) = match e {
                    HeadError::Malformed(m) => (400, m),
                    HeadError::TooLarge => (431, "request head too large"),
                    HeadError::Slow => (408, "request head too slow"),
                };
                let msg = format!("{msg}\n");
                return respond_simple(&mut w, ends.name, status, &msg, false, false);
            }
        };
        server.requests.fetch_add(1, Ordering::Relaxed);
        let mut keep_alive = req.keep_alive();
        let path = req.target.split('?').next().unwrap_or("");
        if req.method == "POST" && path == "/upload" {
            answer_upload(&mut reader, &mut w, ends.name, &req, keep_alive)?;
        } else {
            if !drain_body(&mut reader, &req)? {
                keep_alive = false;
            }
            answer(&mut w, &ends, &req, keep_alive)?;
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

/// The two ends of a connection, as answers name them.
struct Ends<'a> {
    /// The server's (host's) name.
    name: &'a str,
    /// The client.
    peer: SocketAddr,
    /// The address the client dialled (a VIP, or the host's own).
    local: SocketAddr,
}

/// `POST /upload`: reads the body and answers its length and FNV-1a 64.
fn answer_upload<R: BufRead, W: Write>(
    reader: &mut R,
    w: &mut W,
    name: &str,
    req: &Request,
    keep_alive: bool,
) -> io::Result<()> {
    if req.expect_continue {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = Body::new(reader, req);
    let mut hash = Fnv1a64::default();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
    let answer = format!("bytes={total} fnv64={:016x}\n", hash.value());
    respond_simple(w, name, 200, &answer, keep_alive, false)
}

/// Drains a (small) body of any other request so the next request is framed right; a
/// large one is not worth reading. Returns whether the connection can stay open.
fn drain_body<R: BufRead>(reader: &mut R, req: &Request) -> io::Result<bool> {
    if !req.has_body() {
        return Ok(true);
    }
    if req.content_length.unwrap_or(0) > MAX_DRAIN {
        return Ok(false);
    }
    let mut body = Body::new(reader, req).take(MAX_DRAIN + 1);
    Ok(io::copy(&mut body, &mut io::sink())? <= MAX_DRAIN)
}

/// Answers any request but `POST /upload` (its body already drained).
fn answer<W: Write>(w: &mut W, ends: &Ends<'_>, req: &Request, keep_alive: bool) -> io::Result<()> {
    let name = ends.name;
    let head_only = req.method == "HEAD";
    let get = req.method == "GET" || head_only;
    let path = req.target.split('?').next().unwrap_or("");
    match (get, path) {
        (true, "/") => {
            let body = format!(
                "served-by={name} client={} vip={}\n",
                ends.peer,
                ends.local.ip()
            );
            respond_simple(w, name, 200, &body, keep_alive, head_only)
        }
        (true, "/health") => respond_simple(w, name, 200, "ok\n", keep_alive, head_only),
        (true, "/json") => {
            // A struct, not json!(), so the keys keep this order.
            #[derive(serde::Serialize)]
            struct Facts<'a> {
                served_by: &'a str,
                client: String,
                vip: String,
                port: u16,
            }
            let facts = Facts {
                served_by: name,
                client: ends.peer.to_string(),
                vip: ends.local.ip().to_string(),
                port: ends.local.port(),
            };
            let body = serde_json::to_string(&facts).unwrap_or_default() + "\n";
            respond(
                w,
                name,
                200,
                "application/json",
                body.as_bytes(),
                keep_alive,
                head_only,
            )
        }
        (true, p) if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<u64>() {
            Ok(n) if n <= MAX_BYTES => {
                let h = head(name, 200, "application/octet-stream", n, keep_alive);
                w.write_all(h.as_bytes())?;
                if !head_only {
                    send_pattern(w, n)?;
                }
                Ok(())
            }
            _ => {
                let msg = format!("/bytes/N takes N = 0..={MAX_BYTES}\n");
                respond_simple(w, name, 400, &msg, keep_alive, head_only)
            }
        },
        (false, "/" | "/health" | "/json") => {
            respond_simple(w, name, 405, "use GET\n", keep_alive, false)
        }
        (_, "/upload") => respond_simple(w, name, 405, "use POST\n", keep_alive, head_only),
        _ => respond_simple(w, name, 404, "not found\n", keep_alive, head_only),
    }
}

/// Binds a UDP socket to exactly `addr`. IPv4 sockets get `IP_FREEBIND` so that a VIP
/// can be bound before its AnyIP route exists; once it does, datagrams to the VIP arrive
/// here and replies leave from the VIP.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let SocketAddr::V4(_) = addr else {
        return UdpSocket::bind(addr);
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_freebind(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn udp_loop(server: &Server, socket: &UdpSocket, addr: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                server.datagrams.fetch_add(1, Ordering::Relaxed);
                let answer = udp_answer(&server.name, peer, &buf[..n]);
                if let Err(e) = socket.send_to(answer.as_bytes(), peer) {
                    eprintln!("slr serve {}: UDP {addr} reply to {peer}: {e}", server.name);
                }
            }
            Err(e) => {
                eprintln!("slr serve {}: UDP {addr}: {e}", server.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The local address `GET /` reports (kept in one place for the lab's checks).
pub fn vip_of(body: &str) -> Option<IpAddr> {
    body.split_whitespace()
        .find_map(|f| f.strip_prefix("vip="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(text: &str) -> Result<Request, HeadError> {
        read_head(&mut Cursor::new(text.as_bytes().to_vec()))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(Fnv1a64::hash(b""), 0xcbf29ce484222325);
        assert_eq!(Fnv1a64::hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(Fnv1a64::hash(b"foobar"), 0x85944171f73967e8);
        let mut h = Fnv1a64::default();
        h.update(b"foo");
        h.update(b"bar");
        assert_eq!(h.value(), Fnv1a64::hash(b"foobar"));
    }

    #[test]
    fn pattern_streams_in_period_aligned_blocks() {
        let mut out = Vec::new();
        send_pattern(&mut out, 200_000).unwrap();
        assert_eq!(out.len(), 200_000);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)));
        assert_eq!(pattern_byte(250), 250);
        assert_eq!(pattern_byte(251), 0);
    }

    #[test]
    fn parses_heads() {
        let r = parse("GET /bytes/10 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(r.target, "/bytes/10");
        assert!(r.keep_alive());
        let r = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive());
        let r = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(r.keep_alive());
        let r = parse("GET / HTTP/1.1\nConnection: close\n\n").unwrap();
        assert!(!r.keep_alive());
        assert_eq!(
            parse("GET /\r\n\r\n"),
            Err(HeadError::Malformed("bad request line"))
        );
        assert_eq!(
            parse(
                "POST /upload HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Err(HeadError::Malformed("both Content-Length and chunked"))
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&huge), Err(HeadError::TooLarge));
        assert!(read_head(&mut Cursor::new(Vec::new())).unwrap().is_none());
    }

    #[test]
    fn reads_chunked_and_length_bodies() {
        let text = "POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nfoo\r\n3\r\nbar\r\n0\r\nTrailer: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut cur = Cursor::new(text.as_bytes().to_vec());
        let req = read_head(&mut cur).unwrap().unwrap().unwrap();
        let mut body = Vec::new();
        Body::new(&mut cur, &req).read_to_end(&mut body).unwrap();
        assert_eq!(body, b"foobar");
        let next = read_head(&mut cur).unwrap().unwrap().unwrap();
        assert_eq!(next.method, "GET");

        let text = "POST /upload HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET";
        let mut cur = Cursor::new(text.as_bytes().to_vec());
        let req = read_head(&mut cur).unwrap().unwrap().unwrap();
        let mut body = Vec::new();
        Body::new(&mut cur, &req).read_to_end(&mut body).unwrap();
        assert_eq!(body, b"abcd");
    }

    #[test]
    fn serves_over_tcp_with_keep_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(Server {
            name: "t1".into(),
            max_connections: 4,
            idle_timeout: Duration::from_secs(5),
            active: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
        });
        std::thread::spawn(move || accept_loop(&server, &listener));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /upload HTTP/1.1\r\nContent-Length: 6\r\n\r\nfoobarGET /bytes/300 HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("X-Served-By: t1"), "{text}");
        assert!(
            text.contains(&format!(
                "served-by=t1 client={} vip=127.0.0.1\n",
                s.local_addr().unwrap()
            )),
            "{text}"
        );
        assert_eq!(
            vip_of("served-by=t1 client=1.2.3.4:5 vip=127.0.0.1\n"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert!(text.contains("bytes=6 fnv64=85944171f73967e8\n"), "{text}");
        let tail = &all[all.len() - 300..];
        assert!(tail
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)));
    }

    #[test]
    fn udp_echo_reports_length_and_hash() {
        let sock = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            udp_answer("h1", peer, b"foobar"),
            "served-by=h1 client=127.0.0.1:9 bytes=6 fnv64=85944171f73967e8"
        );
        assert!(sock.local_addr().unwrap().port() != 0);
    }
}
