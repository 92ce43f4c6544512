//! The load a host agent reports to its parents (F11: "the load can be anything", so a report
//! carries several named metrics per virtual subnet).
//!
//! | metric | meaning | source |
//! |---|---|---|
//! | `cpu` | busy fraction of the whole machine since the last sample, 0..1 | `/proc/stat` |
//! | `cpu_netns` | CPU used by the processes of the host's network namespace, in cores (1.0 = one core busy) | `/proc/PID/stat` of every process whose `/proc/PID/ns/net` is the agent's |
//! | `cores` | CPUs of the machine | `/proc/stat` |
//! | `flows` | established TCP connections whose local address is in the virtual subnet | `/proc/net/tcp` of the namespace |
//! | `load` | with `host.load_scope = "machine"` (the default): `cpu`; with `"netns"`: `cpu_netns / cores`, the share of the machine the host's processes use; 0..1 | derived |
//!
//! `cpu_netns` is what tells hosts apart when several share a machine (the lab, containers),
//! and is measured only with `load_scope = "netns"`: seeing which namespace another user's
//! process is in takes root (or CAP_SYS_PTRACE), which an agent with only CAP_NET_ADMIN and
//! CAP_NET_RAW does not have; on a machine of its own the machine's CPU is the host's load.
//! The default cost function uses `load`.

use slr_config::LoadScope;
use slr_wire::Ipv4Cidr;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;

/// Metrics per virtual subnet, as reported.
pub type Report = Vec<(Ipv4Cidr, BTreeMap<String, f64>)>;

/// Takes samples of the host's load; each sample covers the time since the previous one.
pub struct LoadSampler {
    subnets: Vec<Ipv4Cidr>,
    scope: LoadScope,
    /// Other processes' namespaces could not be read (told once in the log).
    blind_told: bool,
    netns: Option<u64>,
    clk_tck: f64,
    last_stat: Option<(u64, u64)>,
    last_ticks: HashMap<u32, u64>,
    last_at: Option<std::time::Instant>,
    first: bool,
}

impl LoadSampler {
    /// A sampler for the agent's virtual subnets; the first sample only sets the baseline.
    pub fn new(subnets: Vec<Ipv4Cidr>, scope: LoadScope) -> Self {
        LoadSampler {
            subnets,
            scope,
            blind_told: false,
            netns: std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino()),
            clk_tck: slr_io::process::clock_ticks_per_second() as f64,
            last_stat: None,
            last_ticks: HashMap::new(),
            last_at: None,
            first: true,
        }
    }

    /// A sample: per subnet, the metrics of the module documentation.
    pub fn sample(&mut self) -> Report {
        let now = std::time::Instant::now();
        let (cpu, cores) = self.machine_cpu();
        let ticks = match self.scope {
            LoadScope::Netns => self.netns_ticks(),
            LoadScope::Machine => 0,
        };
        let secs = self
            .last_at
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        self.last_at = Some(now);
        let cpu_netns = if self.first || secs <= 0.0 {
            0.0
        } else {
            ticks as f64 / self.clk_tck / secs
        };
        self.first = false;
        let flows = established_by_subnet(&self.subnets);
        self.subnets
            .iter()
            .zip(flows)
            .map(|(net, flows)| {
                let mut m = BTreeMap::new();
                m.insert("cpu".to_owned(), cpu);
                m.insert("cores".to_owned(), cores);
                m.insert("flows".to_owned(), flows as f64);
                let load = match self.scope {
                    LoadScope::Machine => cpu,
                    LoadScope::Netns => {
                        m.insert("cpu_netns".to_owned(), cpu_netns);
                        cpu_netns / cores.max(1.0)
                    }
                };
                m.insert("load".to_owned(), load);
                (*net, m)
            })
            .collect()
    }

    /// (busy fraction since the last call, number of CPUs).
    fn machine_cpu(&mut self) -> (f64, f64) {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cores = text
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
            .max(1) as f64;
        let Some((busy, total)) = text.lines().next().and_then(parse_cpu_line) else {
            return (0.0, cores);
        };
        let frac = match self.last_stat.replace((busy, total)) {
            Some((b0, t0)) if total > t0 => (busy.saturating_sub(b0)) as f64 / (total - t0) as f64,
            _ => 0.0,
        };
        (frac.clamp(0.0, 1.0), cores)
    }

    /// Clock ticks used since the last call by the processes of this network namespace.
    fn netns_ticks(&mut self) -> u64 {
        let Some(ns) = self.netns else { return 0 };
        let mut seen = HashMap::new();
        let mut delta = 0u64;
        let mut denied = 0usize;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let same = match std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                Ok(m) => m.ino() == ns,
                Err(e) => {
                    denied += usize::from(e.kind() == std::io::ErrorKind::PermissionDenied);
                    false
                }
            };
            if !same {
                continue;
            }
            let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| process_ticks(&s))
            else {
                continue;
            };
            // A process first seen now started during the interval (after the baseline): all
            // of its time is in it.
            delta += t.saturating_sub(self.last_ticks.get(&pid).copied().unwrap_or(0));
            seen.insert(pid, t);
        }
        self.last_ticks = seen;
        if denied > 0 && !self.blind_told {
            self.blind_told = true;
            tracing::warn!(
                processes = denied,
                "host.load_scope = \"netns\": other processes' namespaces cannot be read \
                 (root or CAP_SYS_PTRACE needed): load counts only what can be seen; \
                 load_scope = \"machine\" measures the whole machine"
            );
        }
        delta
    }
}

/// (busy, total) jiffies from the aggregate `cpu` line of /proc/stat.
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut it = line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime of a /proc/PID/stat line (fields 14 and 15, after the parenthesised name,
/// which may itself contain spaces and parentheses).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, i.e. index 11 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Established TCP connections per subnet, from this namespace's /proc/net/tcp.
fn established_by_subnet(subnets: &[Ipv4Cidr]) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    count_established(&text, subnets)
}

fn count_established(text: &str, subnets: &[Ipv4Cidr]) -> Vec<u64> {
    let mut counts = vec![0; subnets.len()];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st ...; st 01 = ESTABLISHED.
        if f.len() < 4 || f[3] != "01" {
            continue;
        }
        let Some(addr) = f[1]
            .split(':')
            .next()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        // The kernel prints the network-order word as a host-order integer.
        let addr = Ipv4Addr::from(u32::from_be(addr));
        for (i, n) in subnets.iter().enumerate() {
            if n.contains(addr) {
                counts[i] += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_formats_parse() {
        assert_eq!(
            parse_cpu_line("cpu  100 5 50 800 20 1 4 0 0 0"),
            Some((160, 980))
        );
        assert_eq!(parse_cpu_line("intr 1 2 3"), None);
        let stat =
            "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 1 0 123 0 0";
        assert_eq!(process_ticks(stat), Some(42));
        // 10.99.0.1:80 established twice, 127.0.0.1 listening, 10.99.1.1 established.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100630A:0050 0201C80A:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1
   1: 0100630A:0050 0201C80A:A1B3 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1
   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1
   3: 0101630A:0050 0201C80A:A1B4 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1";
        let nets = [
            "10.99.0.0/24".parse().unwrap(),
            "10.99.0.0/16".parse().unwrap(),
        ];
        assert_eq!(count_established(tcp, &nets), vec![2, 3]);
    }

    #[test]
    fn a_busy_process_in_the_namespace_shows_as_cpu_netns() {
        let mut s = LoadSampler::new(vec!["10.99.0.0/24".parse().unwrap()], LoadScope::Netns);
        let _ = s.sample();
        // Burn about 300 ms of CPU in this process (same namespace as the sampler).
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let r = s.sample();
        let m = &r[0].1;
        assert!(m["cpu_netns"] > 0.5, "{m:?}");
        assert!(m["load"] > 0.0 && m["load"] <= m["cpu_netns"], "{m:?}");
        assert!(m["cores"] >= 1.0);
    }

    #[test]
    fn machine_scope_reports_the_machine_cpu_as_load() {
        let mut s = LoadSampler::new(vec!["10.99.0.0/24".parse().unwrap()], LoadScope::Machine);
        let _ = s.sample();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let r = s.sample();
        let m = &r[0].1;
        assert_eq!(m["load"], m["cpu"], "{m:?}");
        assert!(m["cpu"] > 0.0, "this process kept a core busy: {m:?}");
        assert!(!m.contains_key("cpu_netns"), "{m:?}");
    }
}
