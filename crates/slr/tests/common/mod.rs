//! Harness for the end-to-end tests: a lab of network namespaces built by `slr lab up`, driven
//! with real clients (curl, sockets from threads that entered a client's namespace), inspected
//! with `slr ctl`, tcpdump and the lab's state, and torn down by `slr lab down` on drop.
//!
//! These tests need root. They fail (never skip) when they cannot build a lab.
#![allow(dead_code)]

use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Labs share two cores: one at a time, even if the harness runs tests in parallel.
static SERIAL: Mutex<()> = Mutex::new(());

/// The slr binary under test.
pub fn slr() -> &'static str {
    env!("CARGO_BIN_EXE_slr")
}

/// A running lab; torn down when dropped.
pub struct Lab {
    pub name: String,
    pub status: Value,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds a lab from topology text (its `[lab] name` must be `name`).
    pub fn up(name: &str, topology: &str) -> Lab {
        Self::up_with(name, topology, &[])
    }

    /// Builds a lab with more `slr lab up` flags (`--prometheus`).
    pub fn up_with(name: &str, topology: &str, flags: &[&str]) -> Lab {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        assert!(is_root(), "end-to-end tests need root (network namespaces)");
        let file = std::env::temp_dir().join(format!("slr-e2e-{name}.toml"));
        std::fs::write(&file, topology).unwrap();
        // A lab left by an earlier, killed run of the same test.
        let _ = Command::new(slr()).args(["lab", "down", name]).output();
        // SLR_E2E_FAST_PATH=off|xdp runs a suite with the routers' fast path so (scripts/test
        // runs the site suite both ways); unset, the daemon's default.
        // A test that names the fast path itself (`flags`) keeps its choice.
        let fast_path: Vec<String> = std::env::var("SLR_E2E_FAST_PATH")
            .ok()
            .filter(|_| !flags.contains(&"--fast-path"))
            .map(|v| vec!["--fast-path".to_string(), v])
            .unwrap_or_default();
        let out = Command::new(slr())
            .args(["lab", "up"])
            .arg(&file)
            .args(flags)
            .args(&fast_path)
            .output()
            .expect("run slr lab up");
        if !out.status.success() {
            let _ = Command::new(slr()).args(["lab", "down", name]).output();
            panic!(
                "slr lab up {} failed:\n{}\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let st = Command::new(slr())
            .args(["lab", "status", "--json", name])
            .output()
            .unwrap();
        let status: Value = serde_json::from_slice(&st.stdout).expect("lab status --json is JSON");
        Lab {
            name: name.to_string(),
            status,
            _serial: serial,
        }
    }

    /// The namespace of a node.
    pub fn ns(&self, node: &str) -> String {
        self.node(node)["netns"].as_str().unwrap().to_string()
    }

    fn node(&self, node: &str) -> &Value {
        self.status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap_or_else(|| panic!("no node {node} in {}", self.status))
    }

    /// A node's address.
    pub fn addr(&self, node: &str) -> Ipv4Addr {
        self.node(node)["addresses"][0]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The VIP of virtual host `i`.
    pub fn vip(&self, i: usize) -> Ipv4Addr {
        self.status["virtual_hosts"][i]["vip"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The lab's state directory.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/slr-lab/{}", self.name))
    }

    /// Pid of a node's process of `kind` (router, host, serve, ...), from the lab's state.
    pub fn pid(&self, node: &str, kind: &str) -> i32 {
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir().join("state.json")).unwrap())
                .unwrap();
        st["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == node && p["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} process on {node}: {st}"))["pid"]
            .as_i64()
            .unwrap() as i32
    }

    /// Runs a shell command in a node's namespace.
    pub fn sh(&self, node: &str, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "sh", "-c", cmd])
            .output()
            .unwrap()
    }

    /// Starts a shell command in a node's namespace in the background.
    pub fn spawn(&self, node: &str, cmd: &str) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "sh", "-c", cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `curl -s URL` from a node; the body, or an error with curl's stderr.
    pub fn curl(&self, node: &str, url: &str) -> Result<String, String> {
        let o = self.sh(node, &format!("curl -sS -m 5 {url}"));
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// `slr ctl NODE ARGS... --json` (a command with arguments: `["drain", "h2"]`); the answer,
    /// or the error slr ctl printed.
    pub fn ctl_args(&self, node: &str, args: &[&str]) -> Result<Value, String> {
        let sock = self.dir().join(format!("{node}.sock"));
        let o = Command::new(slr())
            .args(["ctl"])
            .arg(&sock)
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        if o.status.success() {
            Ok(serde_json::from_slice(&o.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// `slr ctl NODE CMD --json`.
    pub fn ctl(&self, node: &str, cmd: &str) -> Value {
        let sock = self.dir().join(format!("{node}.sock"));
        // Every flow, not the first page.
        let all: &[&str] = if cmd == "flows" { &["--all"] } else { &[] };
        let o = Command::new(slr())
            .args(["ctl"])
            .arg(&sock)
            .args([cmd, "--json"])
            .args(all)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "slr ctl {node} {cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The router's next hops by name: (available, weight, active_flows, selections).
    pub fn next_hop(&self, router: &str, name: &str) -> Value {
        let s = self.ctl(router, "hosts");
        s["snapshot"]["next_hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name && n["configured"] == true)
            .cloned()
            .unwrap_or_else(|| panic!("no next hop {name}"))
    }

    /// Packets the router's XDP program forwarded (0 with the fast path off).
    pub fn fast_path_forwarded(&self, router: &str) -> u64 {
        self.fast_path_count(router, "forwarded")
    }

    /// Packets the router's XDP program counted for `reason` (0 with the fast path off).
    pub fn fast_path_count(&self, router: &str, reason: &str) -> u64 {
        self.fast_path_counter(router, reason).0
    }

    /// Bytes (inner packets) the router's fast path counted for `reason`.
    pub fn fast_path_bytes(&self, router: &str, reason: &str) -> u64 {
        self.fast_path_counter(router, reason).1
    }

    /// Packets and bytes the router's fast path counted for `reason` (0 with it off).
    fn fast_path_counter(&self, router: &str, reason: &str) -> (u64, u64) {
        let s = self.ctl(router, "stats");
        s["snapshot"]["fast_path"]["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r[0] == reason)
            .map_or((0, 0), |r| {
                (r[1].as_u64().unwrap_or(0), r[2].as_u64().unwrap_or(0))
            })
    }

    /// Whether the router's XDP program forwards established flows.
    pub fn fast_path_enabled(&self, router: &str) -> bool {
        self.ctl(router, "stats")["snapshot"]["fast_path"]["enabled"] == true
    }

    /// A router counter.
    pub fn counter(&self, router: &str, name: &str) -> u64 {
        self.ctl(router, "stats")["snapshot"]["counters"][name]
            .as_u64()
            .unwrap()
    }

    /// A router drop counter.
    pub fn drops(&self, router: &str, reason: &str) -> u64 {
        let s = self.ctl(router, "stats");
        s["snapshot"]["drops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d[0] == reason)
            .unwrap()[1]
            .as_u64()
            .unwrap()
    }

    /// Runs `f` on a thread inside a node's namespace (sockets it opens live there).
    pub fn in_ns<T: Send + 'static>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let ns = self.ns(node);
        std::thread::spawn(move || {
            slr_io::netns::enter_netns(&ns).expect("enter namespace");
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    /// A host agent's drop counter.
    pub fn host_drops(&self, host: &str, reason: &str) -> u64 {
        let s = self.ctl(host, "stats");
        s["drops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d[0] == reason)
            .unwrap()[1]
            .as_u64()
            .unwrap()
    }

    /// Packets a host's XDP program counted for `reason` (0 when it does not run).
    pub fn host_fast_path(&self, host: &str, reason: &str) -> u64 {
        self.host_fast_path_counter(host, reason, 1)
    }

    /// Bytes a host's kernel program counted for `reason` (0 when it does not run).
    pub fn host_fast_path_bytes(&self, host: &str, reason: &str) -> u64 {
        self.host_fast_path_counter(host, reason, 2)
    }

    /// Column `column` (1 packets, 2 bytes) of a host program's row for `reason`.
    fn host_fast_path_counter(&self, host: &str, reason: &str, column: usize) -> u64 {
        let s = self.ctl(host, "stats");
        s["fast_path"]["reasons"]
            .as_array()
            .and_then(|r| r.iter().find(|d| d[0] == reason))
            .map_or(0, |d| d[column].as_u64().unwrap())
    }

    /// The router's configuration file.
    pub fn router_config(&self, router: &str) -> PathBuf {
        self.dir().join(format!("{router}.toml"))
    }

    /// Starts a packet capture in a node's namespace; stop it with [`Capture::stop`].
    /// A capture at the core's end of `node`'s link (`v-NODE`): what the core sends the node
    /// (what crosses the wire, before any XDP program of the node's runs).
    pub fn capture_toward(&self, node: &str, filter: &str) -> Capture {
        let core = self.status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["role"] == "core")
            .expect("a core node")["name"]
            .as_str()
            .unwrap()
            .to_string();
        let ifname: String = format!("v-{node}").chars().take(15).collect();
        self.capture(&core, &ifname, filter)
    }

    pub fn capture(&self, node: &str, iface: &str, filter: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("slr-e2e-{}-{node}-{iface}.pcap", self.name));
        let _ = std::fs::remove_file(&file);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(node),
                "tcpdump",
                "-i",
                iface,
                "-nn",
                "-U",
                // Without it packets wait in the kernel's ring and are lost when we stop tcpdump.
                "--immediate-mode",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says "listening on" once the capture runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { child, file }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = Command::new(slr())
            .args(["lab", "down", &self.name])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "slr lab down {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

/// A running tcpdump.
pub struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    /// Stops the capture and returns the file.
    pub fn stop(mut self) -> PathBuf {
        std::thread::sleep(Duration::from_millis(300));
        signal(self.child.id() as i32, "INT");
        let _ = self.child.wait();
        self.file.clone()
    }
}

/// Counts the packets in a pcap matching a tcpdump filter.
pub fn count_packets(file: &Path, filter: &str) -> usize {
    let o = Command::new("tcpdump")
        .arg("-r")
        .arg(file)
        .args(["-nn", filter])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Whether the suite runs with the daemons' fast path (`SLR_E2E_FAST_PATH`, default xdp).
pub fn fast_path_expected() -> bool {
    std::env::var("SLR_E2E_FAST_PATH").map_or(true, |v| v != "off")
}

/// Parses `key=value` fields of a lab server answer.
pub fn field<'a>(answer: &'a str, key: &str) -> Option<&'a str> {
    answer
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// FNV-1a 64, as the lab server computes it.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A file of `size` bytes for uploads (a fixed pseudo-random pattern), in the temporary
/// directory as `slr-e2e-NAME-up.bin`; removed on drop.
pub struct Upload {
    /// The file (`curl --data-binary @PATH`).
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its FNV-1a 64 hash, as the lab server reports it (16 hex digits).
    pub fnv64: String,
}

impl Upload {
    /// Writes the file.
    pub fn new(name: &str, size: usize) -> Upload {
        let data: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let path = std::env::temp_dir().join(format!("slr-e2e-{name}-up.bin"));
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Upload {
            path,
            size: size as u64,
            fnv64: format!("{:016x}", fnv64(&data)),
        }
    }

    /// What the lab server answers for it intact: `bytes=SIZE fnv64=HASH`.
    pub fn expect(&self) -> String {
        format!("bytes={} fnv64={}", self.size, self.fnv64)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `data` is the lab server's /bytes/N pattern (byte i = i mod 251).
pub fn is_pattern(data: &[u8]) -> bool {
    data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8)
}

/// Polls `f` every 100 ms until it is true or `limit` passes; returns the time it took.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// Sends a signal (by name: INT, STOP, CONT, TERM) to a process the test started or the lab runs.
pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A plain HTTP/1.0 GET over a fresh connection; returns the body.
pub fn http_get(addr: Ipv4Addr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&(addr, 80).into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// An IPv4 packet (20-byte header, checksum filled) carrying `payload`, for raw sockets.
pub fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
    dont_frag: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut pkt = vec![0u8; 20 + payload.len()];
    slr_wire::Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: slr_wire::Protocol::from(protocol),
        payload_len: payload.len(),
        ttl: 64,
        tos: 0,
        ident,
        dont_frag,
    }
    .emit(&mut pkt);
    pkt[20..].copy_from_slice(payload);
    pkt
}

/// Starts a download of `mib` MiB of the pattern from the first VIP at `rate` with curl in a
/// client's namespace: (the curl process, body file, header file).
pub fn start_download(
    lab: &Lab,
    client: &str,
    tag: &str,
    mib: u64,
    rate: &str,
) -> (std::process::Child, String, String) {
    let body = format!("/tmp/slr-e2e-{}-{tag}.bin", lab.name);
    let head = format!("/tmp/slr-e2e-{}-{tag}.hdr", lab.name);
    let _ = std::fs::remove_file(&body);
    let _ = std::fs::remove_file(&head);
    let url = format!("http://{}/bytes/{}", lab.vip(0), mib << 20);
    let child = lab.spawn(
        client,
        &format!("curl -sS -m 60 --limit-rate {rate} -D {head} -o {body} {url}"),
    );
    (child, body, head)
}

/// Which host serves a download in progress (from its response headers).
pub fn download_host(head: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = std::fs::read_to_string(head).ok().and_then(|h| {
            h.lines().find_map(|l| {
                l.strip_prefix("X-Served-By: ")
                    .map(|v| v.trim().to_string())
            })
        });
        found.is_some()
    });
    found.expect("download started")
}

/// Waits for a download and checks it is complete and intact (the pattern, every byte).
pub fn finish_download(child: std::process::Child, body: &str, mib: u64) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "download failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(body).unwrap();
    assert_eq!(data.len() as u64, mib << 20, "download complete");
    assert!(is_pattern(&data), "download intact");
    let _ = std::fs::remove_file(body);
}

/// `promtool check metrics` on a page: Ok, or what promtool said.
pub fn promtool(page: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; scripts/install-deps)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The next hops of the core's kernel route to the virtual subnet (empty: no route).
pub fn core_next_hops(lab: &Lab) -> std::collections::BTreeSet<Ipv4Addr> {
    let out = lab.sh("core", "ip -j route show 10.99.0.0/24");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut hops = std::collections::BTreeSet::new();
    for r in v.as_array().into_iter().flatten() {
        if let Some(g) = r["gateway"].as_str() {
            hops.extend(g.parse::<Ipv4Addr>().ok());
        }
        for n in r["nexthops"].as_array().into_iter().flatten() {
            if let Some(g) = n["gateway"].as_str() {
                hops.extend(g.parse::<Ipv4Addr>().ok());
            }
        }
        assert_eq!(
            r["protocol"], "bird",
            "the core's route to the virtual subnet comes from BIRD: {r}"
        );
    }
    hops
}

/// A lab of one client, two routers (r1, r2) that announce 10.99.0.0/24 to the core by BGP,
/// and `hosts` hosts (h1, h2, ...): `bgp` lines go into `[bgp]`, `policy` is the virtual
/// host's, `rest` follows everything (`[cluster]`, `[router_config]`).
pub fn anycast_topology(name: &str, policy: &str, hosts: usize, bgp: &str, rest: &str) -> String {
    let hosts: String = (1..=hosts)
        .map(|i| format!("[[nodes]]\nname = \"h{i}\"\nrole = \"host\"\n\n"))
        .collect();
    format!(
        r#"
[lab]
name = "{name}"

[bgp]
{bgp}

[[virtual_hosts]]
name = "web"
subnet = "10.99.0.0/24"
policy = "{policy}"

[[nodes]]
name = "c1"
role = "client"

[[nodes]]
name = "r1"
role = "router"

[[nodes]]
name = "r2"
role = "router"

{hosts}{rest}
"#
    )
}

/// The established TCP flows of client c1 a router holds, by client address and port; `own`:
/// only those whose packets it carried (a copy taken in from a peer has carried no byte).
pub fn client_flows(lab: &Lab, router: &str, own: bool) -> std::collections::BTreeSet<String> {
    let c1 = format!("{}:", lab.addr("c1"));
    let page = lab
        .ctl_args(router, &["flows", "--all"])
        .unwrap_or_else(|e| panic!("slr ctl {router} flows: {e}"));
    page["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["protocol"] == "tcp" && f["state"] == "established")
        .filter(|f| !own || f["bytes"].as_u64().unwrap_or(0) > 0)
        .filter_map(|f| f["client"].as_str())
        .filter(|c| c.starts_with(&c1))
        .map(str::to_owned)
        .collect()
}

/// Many rate-limited downloads of the pattern from the first VIP, run by curl in c1, each of
/// which prints its local port at the end (failed or not).
pub struct Downloads {
    runs: Vec<(std::process::Child, String)>,
    size: u64,
    /// Which were still running (at least 2 MiB to come) when [`Downloads::mark_running`] looked.
    running: Vec<bool>,
}

/// What became of a batch of downloads.
pub struct DownloadOutcome {
    /// Downloads complete and intact.
    pub intact: usize,
    /// Of those marked running, the ones whose flow was in `carried`.
    pub carried_running: usize,
    /// Of those, the ones complete and intact.
    pub carried_intact: usize,
}

impl DownloadOutcome {
    /// Asserts what a mechanism that saves a router's flows (mirroring, WHOHAS) must show:
    /// with it (`self`), that router carried at least 10 running downloads and at least
    /// `percent` % of all `total` downloads completed intact; without it (`control`, the same
    /// lab and event), the router carried at least 10 running downloads and most of them broke,
    /// so that the mechanism is what saved them. `what` names the mechanism and the event.
    pub fn assert_saved(
        &self,
        control: &DownloadOutcome,
        total: usize,
        percent: usize,
        what: &str,
    ) {
        for (run, o) in [("with", self), ("without", control)] {
            assert!(
                o.carried_running >= 10,
                "{what}, {run} it: the router carried running downloads ({})",
                o.carried_running
            );
        }
        assert!(
            self.intact * 100 >= total * percent,
            "{what}: at least {percent} % of the downloads survive ({} of {total})",
            self.intact
        );
        assert!(
            control.carried_intact * 2 < control.carried_running,
            "{what}, the control: without it most of the router's running downloads break ({} of {} intact)",
            control.carried_intact,
            control.carried_running
        );
    }
}

impl Downloads {
    /// Starts `n` downloads of `size` bytes at `rate` from c1 (small receive buffers: they last
    /// about as long as the rate says, though curl lets some run ahead at first).
    pub fn start(lab: &Lab, n: usize, size: u64, rate: &str) -> Downloads {
        let o = lab.sh("c1", "sysctl -qw net.ipv4.tcp_rmem='4096 131072 262144'");
        assert!(o.status.success());
        let url = format!("http://{}/bytes/{size}", lab.vip(0));
        let runs = (0..n)
            .map(|i| {
                let body = format!("/tmp/slr-e2e-{}-{i}.bin", lab.name);
                let _ = std::fs::remove_file(&body);
                let child = lab.spawn(
                    "c1",
                    &format!(
                        "curl -sS -m 60 --limit-rate {rate} -o {body} -w '%{{local_port}}' {url}"
                    ),
                );
                (child, body)
            })
            .collect();
        Downloads {
            runs,
            size,
            running: Vec::new(),
        }
    }

    /// Notes which downloads still have at least 2 MiB to come (what is left of a nearly
    /// finished one may already be on its way, and completes without the client's ACKs
    /// reaching a host).
    pub fn mark_running(&mut self) {
        let size = |b: &String| std::fs::metadata(b).map_or(0, |m| m.len());
        self.running = self
            .runs
            .iter()
            .map(|(_, b)| size(b) + (2 << 20) <= self.size)
            .collect();
    }

    /// Waits for every download; `carried`: the client flows ("address:port") of interest.
    pub fn finish(
        self,
        lab: &Lab,
        carried: &std::collections::BTreeSet<String>,
    ) -> DownloadOutcome {
        let c1 = lab.addr("c1");
        let mut o = DownloadOutcome {
            intact: 0,
            carried_running: 0,
            carried_intact: 0,
        };
        let running = self.running.into_iter().chain(std::iter::repeat(false));
        for ((child, body), was_running) in self.runs.into_iter().zip(running) {
            let out = child.wait_with_output().unwrap();
            let port = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let data = std::fs::read(&body).unwrap_or_default();
            let ok = out.status.success() && data.len() as u64 == self.size && is_pattern(&data);
            o.intact += usize::from(ok);
            if was_running && carried.contains(&format!("{c1}:{port}")) {
                o.carried_running += 1;
                o.carried_intact += usize::from(ok);
            }
            let _ = std::fs::remove_file(&body);
        }
        o
    }
}
