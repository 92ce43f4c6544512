//! Health checks through the tunnel, with the VIP inside (MISSION F2, F9; FIELD-NOTES: checks
//! that take another path than the data pass while data is dropped).
//!
//! For each next hop a thread opens a real TCP connection from the router's tunnel source to
//! `VIP:port`, after pinning that exact 5-tuple to the next hop in the core. The SYN therefore
//! enters the router's TUN like client traffic, is tunnelled to that one host, decapsulated by its
//! agent and answered by its server *as the VIP*. A pass proves the whole data path: tunnel,
//! trust domain, AnyIP, the server, and the direct return path.
//!
//! `count` consecutive failures mark a next hop down (no new flows; its flows continue), `count`
//! consecutive passes mark it up again. With a check every `interval` and a `timeout` below the
//! interval, a host that stops answering leaves selection within `interval x count + timeout`,
//! which is within `interval x count + 1 s` for any timeout up to 1 s.

use crate::mailbox::Handle;
use crate::rtt::RttTable;
use slr_config::{HealthConfig, RouterDaemonConfig};
use slr_core::flow_table::FlowKey;
use slr_core::router::Control;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Checker {
    address: Ipv4Addr,
    vip: Ipv4Addr,
    config: HealthConfig,
    stop: Arc<AtomicBool>,
}

/// Starts, stops and updates one checker thread per next hop.
pub struct HealthSupervisor {
    handle: Handle,
    source: Ipv4Addr,
    checkers: HashMap<String, Checker>,
    rtt: RttTable,
}

impl HealthSupervisor {
    /// No checkers yet.
    pub fn new(handle: Handle, source: Ipv4Addr) -> Self {
        HealthSupervisor {
            handle,
            source,
            checkers: HashMap::new(),
            rtt: RttTable::default(),
        }
    }

    /// The RTTs the checks measure.
    pub fn rtt(&self) -> RttTable {
        self.rtt.clone()
    }

    /// Makes the set of checkers match the configuration.
    pub fn update(&mut self, cfg: &RouterDaemonConfig) {
        let mut wanted = HashMap::new();
        if cfg.health.enabled {
            for n in &cfg.core.next_hops {
                let vip = cfg.health.address.or_else(|| {
                    cfg.core
                        .virtual_hosts
                        .iter()
                        .find(|v| v.next_hops.is_empty() || v.next_hops.contains(&n.name))
                        .map(|v| first_address(v.subnet))
                });
                if let Some(vip) = vip {
                    wanted.insert(n.name.clone(), (n.address, vip));
                }
            }
        }
        self.checkers.retain(|name, c| {
            let keep = wanted.get(name) == Some(&(c.address, c.vip)) && c.config == cfg.health;
            if !keep {
                c.stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for (name, (address, vip)) in wanted {
            if self.checkers.contains_key(&name) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let c = Checker {
                address,
                vip,
                config: cfg.health.clone(),
                stop: stop.clone(),
            };
            let (handle, source, config) = (self.handle.clone(), self.source, cfg.health.clone());
            let n = name.clone();
            let rtt = self.rtt.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("health-{name}"))
                .spawn(move || check_loop(handle, n, source, vip, config, stop, rtt));
            if let Err(e) = spawned {
                tracing::error!("cannot start health checker for {name}: {e}");
                continue;
            }
            self.checkers.insert(name, c);
        }
    }

    /// Stops every checker.
    pub fn stop_all(&mut self) {
        for c in self.checkers.values() {
            c.stop.store(true, Ordering::Relaxed);
        }
        self.checkers.clear();
    }
}

/// The first usable address of a subnet (the network address itself for a /31 or /32).
pub fn first_address(subnet: slr_wire::Ipv4Cidr) -> Ipv4Addr {
    if subnet.prefix_len() >= 31 {
        subnet.addr()
    } else {
        Ipv4Addr::from(u32::from(subnet.addr()) + 1)
    }
}

fn check_loop(
    handle: Handle,
    name: String,
    source: Ipv4Addr,
    vip: Ipv4Addr,
    cfg: HealthConfig,
    stop: Arc<AtomicBool>,
    rtt: RttTable,
) {
    // Start from what the core believes (a checker restarted by a reload must not assume a
    // next hop is up that the core holds down, or it would never tell the core otherwise).
    let mut up = handle
        .snapshot()
        .ok()
        .and_then(|s| {
            s.next_hops
                .iter()
                .find(|n| n.name == name && n.configured)
                .map(|n| n.available)
        })
        .unwrap_or(true);
    let mut streak = 0u32;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += cfg.interval;
        if next < now {
            next = now + cfg.interval;
        }
        let result = check_once(&handle, &name, source, vip, &cfg);
        if let Ok(sample) = result {
            rtt.record(&name, sample);
        }
        let passed = result.is_ok();
        if passed == up {
            streak = 0;
            continue;
        }
        streak += 1;
        tracing::debug!(next_hop = %name, passed, streak, "health check result differs from state: {result:?}");
        if streak >= cfg.count {
            up = passed;
            streak = 0;
            match &result {
                Ok(_) => tracing::info!(next_hop = %name, "health check passing: next hop up"),
                Err(e) => {
                    tracing::warn!(next_hop = %name, "health check failing ({e}): next hop down")
                }
            }
            if let Err(e) = handle.control(Control::SetAvailable {
                next_hop: name.clone(),
                available: up,
            }) {
                tracing::error!(next_hop = %name, "cannot update health: {e:#}");
            }
        }
    }
}

fn check_once(
    handle: &Handle,
    name: &str,
    source: Ipv4Addr,
    vip: Ipv4Addr,
    cfg: &HealthConfig,
) -> Result<Duration, String> {
    let deadline = Instant::now() + cfg.timeout;
    let sock =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    sock.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket_ipv4())
        .ok_or("no local address")?;
    let key = FlowKey {
        src_addr: source,
        dst_addr: vip,
        src_port: local.port(),
        dst_port: cfg.port,
        protocol: 6,
    };
    // Pin before the SYN exists, so that the probe reaches exactly this next hop.
    handle
        .control(Control::PinFlow {
            key,
            next_hop: name.to_string(),
        })
        .map_err(|e| format!("pin: {e:#}"))?;
    let target = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(vip, cfg.port)));
    let started = Instant::now();
    sock.connect_timeout(&target, cfg.timeout)
        .map_err(|e| format!("connect {vip}:{}: {e}", cfg.port))?;
    let handshake = started.elapsed();
    if !cfg.http {
        return Ok(handshake);
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    sock.set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let mut s: std::net::TcpStream = sock.into();
    write!(
        s,
        "GET {} HTTP/1.0\r\nHost: {vip}\r\nUser-Agent: slr-health\r\n\r\n",
        cfg.path
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    if line.starts_with("HTTP/1.") && line.as_bytes().get(9) == Some(&b'2') {
        Ok(handshake)
    } else {
        Err(format!("unexpected answer {line:?}"))
    }
}
