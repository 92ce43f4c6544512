//! What the control protocol's benchmarks share: two routers' identities from a throwaway CA,
//! and a thread's CPU time.

use slr_control::{create_ca, issue, Identity, MirrorFlow};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Identities of routers `r1` and `r2` from a CA made in `dir`, valid for an hour around now.
pub fn two_routers(dir: &Path) -> (Identity, Identity) {
    let hour = Duration::from_secs(3600);
    create_ca(&dir.join("ca"), "bench CA", hour).unwrap();
    let now = SystemTime::now();
    let identity = |name: &str| -> Identity {
        let f = issue(
            &dir.join("ca"),
            name,
            &dir.join(name),
            now - hour,
            now + hour,
        )
        .unwrap();
        Identity::load(&dir.join("ca/ca.pem"), &f.cert, &f.key).unwrap()
    };
    (identity("r1"), identity("r2"))
}

/// The calling thread's id (for its CPU time in /proc).
pub fn tid() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of the thread `tid` of this process, from /proc.
pub fn thread_cpu(tid: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// The `i`-th of many distinct client flows to 10.99.0.1:80.
pub fn flow(i: u32) -> MirrorFlow {
    MirrorFlow {
        src: Ipv4Addr::from(0x0a00_0000 | (i >> 14)),
        dst: Ipv4Addr::new(10, 99, 0, 1),
        src_port: 1024 + (i & 0x3fff) as u16,
        dst_port: 80,
        protocol: 6,
    }
}
