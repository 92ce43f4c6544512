//! Small clients the lab uses from inside a namespace (see [`super::netns::in_netns`]):
//! an HTTP GET for readiness checks and a UDP echo exchange for the demo.

use crate::serve::Fnv1a64;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

/// `GET path` over a new connection; returns the status code and the body.
pub fn http_get(addr: SocketAddrV4, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    )?;
    let mut raw = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{addr}: incomplete HTTP answer {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{addr}: bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The answer to one UDP echo exchange.
#[derive(Debug, Clone)]
pub struct UdpEcho {
    /// Source address of the answer (the VIP, with direct server return).
    pub from: SocketAddr,
    /// The host that answered (`served-by=`).
    pub served_by: String,
    /// Whether the echoed length and FNV-1a 64 matched what was sent.
    pub intact: bool,
    /// How many sends it took (1 unless a datagram or its answer was lost).
    pub attempts: u32,
}

/// Sends `payload` to `target` and waits for the echo, resending up to `attempts` times.
pub fn udp_echo(
    target: SocketAddrV4,
    payload: &[u8],
    attempts: u32,
    timeout: Duration,
) -> Result<UdpEcho> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    sock.set_read_timeout(Some(timeout))?;
    let want = format!(
        "bytes={} fnv64={:016x}",
        payload.len(),
        Fnv1a64::hash(payload)
    );
    let mut buf = vec![0u8; 2048];
    for attempt in 1..=attempts.max(1) {
        sock.send_to(payload, target)
            .with_context(|| format!("sending {} bytes to {target}", payload.len()))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let served_by = text
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("served-by="))
                    .unwrap_or("?")
                    .to_string();
                return Ok(UdpEcho {
                    from,
                    served_by,
                    intact: text.ends_with(&want),
                    attempts: attempt,
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("waiting for {target}")),
        }
    }
    bail!(
        "no answer from {target} to a {}-byte datagram after {attempts} tries",
        payload.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn http_get_parses_status_and_body() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // Read the whole request: closing with unread data would reset the connection.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .unwrap();
        });
        let (status, body) = http_get(addr, "/health", Duration::from_secs(2)).unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }

    #[test]
    fn udp_echo_checks_length_and_hash() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = server.local_addr().unwrap() else {
            unreachable!()
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let answer = crate::serve::udp_answer("h9", peer, &buf[..n]);
            server.send_to(answer.as_bytes(), peer).unwrap();
        });
        let echo = udp_echo(addr, &[7u8; 3000], 2, Duration::from_secs(2)).unwrap();
        assert!(echo.intact);
        assert_eq!(echo.served_by, "h9");
        assert_eq!(echo.from.ip(), Ipv4Addr::LOCALHOST);
    }
}
