//! Prometheus exposition and the HTTP endpoint that serves it.
//!
//! Each daemon renders its metrics on demand from a snapshot of its counters (the packet path
//! never formats anything): [`Exposition`] collects the families of one scrape into a
//! registry of the `prometheus` crate, whose encoder writes the text format (0.0.4) that
//! `promtool check metrics` and every Prometheus server read. A family's HELP and TYPE appear
//! once, whatever the number of its label sets; the library checks names and label sets. The
//! standard `process_*` families (CPU seconds, resident memory, open files, start time) come
//! from the library's process collector.

use anyhow::{Context, Result};
use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The families of one scrape, filled sample by sample and rendered once.
pub struct Exposition {
    registry: Registry,
    counters: HashMap<String, IntCounterVec>,
    float_counters: HashMap<String, CounterVec>,
    gauges: HashMap<String, GaugeVec>,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    /// An empty scrape, with this process's standard `process_*` families.
    pub fn new() -> Self {
        let registry = Registry::new();
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = registry.register(Box::new(process)) {
            tracing::debug!("process metrics unavailable: {e}");
        }
        Exposition {
            registry,
            counters: HashMap::new(),
            float_counters: HashMap::new(),
            gauges: HashMap::new(),
        }
    }

    /// A counter sample (the name ends in `_total`); a family's label names are those of its
    /// first sample.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        let family = family(
            &self.registry,
            &mut self.counters,
            name,
            help,
            labels,
            IntCounterVec::new,
        );
        if let Some(f) = family {
            if let Ok(c) = f.get_metric_with_label_values(&values(labels)) {
                c.inc_by(value);
            }
        }
    }

    /// A counter sample in a unit with fractions (`_seconds_total`).
    pub fn counter_f64(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = family(
            &self.registry,
            &mut self.float_counters,
            name,
            help,
            labels,
            CounterVec::new,
        );
        if let Some(f) = family {
            if let Ok(c) = f.get_metric_with_label_values(&values(labels)) {
                c.inc_by(value.max(0.0));
            }
        }
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = family(
            &self.registry,
            &mut self.gauges,
            name,
            help,
            labels,
            GaugeVec::new,
        );
        if let Some(f) = family {
            if let Ok(g) = f.get_metric_with_label_values(&values(labels)) {
                g.set(value);
            }
        }
    }

    /// The page, in the text format (families sorted by name).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn values<'a>(labels: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    labels.iter().map(|(_, v)| *v).collect()
}

/// The family `name`, made and registered at its first sample. A name or label set the
/// library refuses is a bug of ours: logged, and the sample left out rather than the scrape.
fn family<'m, V: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    families: &'m mut HashMap<String, V>,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    make: impl FnOnce(Opts, &[&str]) -> prometheus::Result<V>,
) -> Option<&'m V> {
    if !families.contains_key(name) {
        let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        let made = make(Opts::new(name, help), &names)
            .and_then(|v| registry.register(Box::new(v.clone())).map(|()| v));
        match made {
            Ok(v) => {
                families.insert(name.to_owned(), v);
            }
            Err(e) => {
                tracing::error!(metric = name, "metric family refused: {e}");
                return None;
            }
        }
    }
    families.get(name)
}

/// Most scrapes served at once; more wait for the listener's backlog.
const MAX_CONCURRENT_SCRAPES: usize = 16;

/// Serves `GET /metrics` on `addr`; `render` builds the page per request. Scrapes are served
/// concurrently (a thread each, at most [`MAX_CONCURRENT_SCRAPES`]), so that one slow client
/// does not hold up Prometheus.
pub fn serve(addr: SocketAddr, render: impl Fn() -> String + Send + Sync + 'static) -> Result<()> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let render = Arc::new(render);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                while active.load(Ordering::Acquire) >= MAX_CONCURRENT_SCRAPES {
                    std::thread::sleep(Duration::from_millis(5));
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (render, active) = (render.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        answer_scrape(conn, &*render);
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    tracing::warn!("metrics: cannot start a thread for a scrape");
                }
            }
        })?;
    Ok(())
}

fn answer_scrape(mut conn: std::net::TcpStream, render: &(impl Fn() -> String + ?Sized)) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() {
        return;
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
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        prometheus::TEXT_FORMAT,
        body.len()
    );
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
    (ticks(11) + ticks(12)) / slr_io::process::clock_ticks_per_second() as f64
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
    fn one_help_and_type_per_family_whatever_the_label_sets() {
        let mut p = Exposition::new();
        p.counter("slr_x_total", "X.", &[("host", "h\"1")], 3);
        p.counter("slr_x_total", "X.", &[("host", "h2")], 4);
        p.gauge("slr_y", "Y.", &[], 1.5);
        p.counter_f64("slr_z_seconds_total", "Z.", &[], 0.25);
        let s = p.render();
        assert_eq!(s.matches("# HELP slr_x_total X.").count(), 1, "{s}");
        assert_eq!(s.matches("# TYPE slr_x_total counter").count(), 1, "{s}");
        assert!(s.contains("slr_x_total{host=\"h\\\"1\"} 3\n"), "{s}");
        assert!(s.contains("slr_x_total{host=\"h2\"} 4\n"), "{s}");
        assert!(s.contains("# TYPE slr_y gauge\nslr_y 1.5\n"), "{s}");
        assert!(s.contains("slr_z_seconds_total 0.25\n"), "{s}");
        assert!(
            s.contains("# TYPE process_cpu_seconds_total counter"),
            "{s}"
        );
        assert!(process_cpu_seconds() >= 0.0);
        assert!(process_resident_bytes() > 0);
    }

    #[test]
    fn a_sample_with_other_label_names_is_left_out_not_the_scrape() {
        let mut p = Exposition::new();
        p.gauge("slr_y", "Y.", &[("a", "1")], 1.0);
        p.gauge("slr_y", "Y.", &[("b", "2")], 2.0);
        let s = p.render();
        assert!(s.contains("slr_y{a=\"1\"} 1\n"), "{s}");
        assert!(!s.contains("b=\"2\""), "{s}");
    }

    #[test]
    fn concurrent_scrapes_are_served() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        // A render that takes a while: four scrapes at once finish in about one render's time.
        serve(addr, || {
            std::thread::sleep(Duration::from_millis(300));
            "slr_up 1\n".to_owned()
        })
        .unwrap();
        let started = std::time::Instant::now();
        let scrapes: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                    let mut out = String::new();
                    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
                    out
                })
            })
            .collect();
        for s in scrapes {
            let out = s.join().unwrap();
            assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
            assert!(out.ends_with("slr_up 1\n"), "{out}");
        }
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "served one after the other: {:?}",
            started.elapsed()
        );
    }
}
