//! Prometheus text exposition, and the small HTTP listener that serves it.
//!
//! Each daemon renders its metrics on demand from a snapshot of its counters, so the packet path
//! never formats anything.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Builds a Prometheus text-format page.
#[derive(Default)]
pub struct Page {
    out: String,
    last_family: String,
}

impl Page {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        if self.last_family != name {
            let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.last_family = name.to_string();
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter sample (name should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.header(name, help, "counter");
        self.sample(name, labels, value as f64);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.header(name, help, "gauge");
        self.sample(name, labels, value);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Serves `GET /metrics` on `addr` from a thread; `render` builds the page per request.
pub fn serve(addr: SocketAddr, render: impl Fn() -> String + Send + 'static) -> Result<()> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("metrics: cannot listen on {addr}"))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the request headers.
            let mut h = String::new();
            while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let (status, body) = if line.starts_with("GET /metrics") {
                ("200 OK", render())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds, from /proc/self/stat.
pub fn process_cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); here index 11 and 12.
    let hz = 100.0; // USER_HZ is 100 on Linux for every architecture slr runs on.
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of this process in bytes, from /proc/self/statm.
pub fn process_resident_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_format() {
        let mut p = Page::default();
        p.counter("slr_x_total", "X.", &[("host", "h\"1")], 3);
        p.counter("slr_x_total", "X.", &[("host", "h2")], 4);
        p.gauge("slr_y", "Y.", &[], 1.5);
        let s = p.finish();
        assert_eq!(
            s,
            "# HELP slr_x_total X.\n# TYPE slr_x_total counter\nslr_x_total{host=\"h\\\"1\"} 3\nslr_x_total{host=\"h2\"} 4\n# HELP slr_y Y.\n# TYPE slr_y gauge\nslr_y 1.5\n"
        );
        assert!(process_cpu_seconds() >= 0.0);
        assert!(process_resident_bytes() > 0);
    }
}
