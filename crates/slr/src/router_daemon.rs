//! `slr router`: the Service Level Router daemon.
//!
//! Threads:
//! - the **packet thread** (the main thread) owns the routing core, the TUN device that captures
//!   virtual-host traffic and the raw IP-in-IP socket; it reads batches from the TUN, lets the
//!   core route them in place and sends the tunnelled packets in batches. Control requests reach
//!   it through a channel plus an eventfd that wakes its poll.
//! - **health checkers**, one per next hop, probe through the tunnel with the VIP inside
//!   (see [`crate::health`]);
//! - the **control socket** (`slr ctl`) and the **metrics** listener, which both ask the packet
//!   thread for snapshots.

use crate::config::{RouterDaemonConfig, RouterFile};
use crate::daemon::{Clock, Routes, Signals};
use crate::health::HealthSupervisor;
use crate::metrics::{self, Page};
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use slr_core::flow_table::FlowState;
use slr_core::router::{Action, Control, Destination, DropReason, Event, NextHopConfig, Router};
use slr_io::{poll_readable, EventFd, FaultInjector, IpipSocket, PacketDevice, TunDevice};
use slr_wire::PacketBuf;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Packets read from the TUN per batch.
const BATCH: usize = 64;
/// Headroom kept in front of each packet for the outer header.
const HEADROOM: usize = slr_wire::buf::DEFAULT_HEADROOM;

/// A request to the packet thread.
pub enum Request {
    /// Apply a control input; the answer says whether the core took it.
    Control(Control, Sender<Result<(), String>>),
    /// A snapshot of state and counters.
    Snapshot(Sender<Snapshot>),
    /// Up to `limit` flows.
    Flows(usize, Sender<Vec<FlowRow>>),
    /// Read the configuration file again.
    Reload(Sender<Result<(), String>>),
    /// The children of a fetched gateway table: they replace the file's
    /// `[[gateways.children]]` as next hops, now and after every reload.
    Gateways(Vec<NextHopConfig>, Sender<Result<(), String>>),
}

/// The handle other threads use to reach the packet thread.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Request>,
    wake: Arc<EventFd>,
}

impl Handle {
    fn send(&self, r: Request) -> Result<()> {
        self.tx
            .send(r)
            .map_err(|_| anyhow!("router is shutting down"))?;
        self.wake.notify()?;
        Ok(())
    }
    /// Applies a control input and waits for the core's answer.
    pub fn control(&self, c: Control) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Control(c, tx))?;
        rx.recv_timeout(Duration::from_secs(5))?
            .map_err(|e| anyhow!(e))
    }
    /// A snapshot.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Snapshot(tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(5))?)
    }
    fn flows(&self, limit: usize) -> Result<Vec<FlowRow>> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Flows(limit, tx))?;
        Ok(rx.recv_timeout(Duration::from_secs(10))?)
    }
    fn reload(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Reload(tx))?;
        rx.recv_timeout(Duration::from_secs(10))?
            .map_err(|e| anyhow!(e))
    }
    /// Replaces the gateway children (next hops) with a fetched table's.
    pub fn set_gateways(&self, children: Vec<NextHopConfig>) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Gateways(children, tx))?;
        rx.recv_timeout(Duration::from_secs(10))?
            .map_err(|e| anyhow!(e))
    }
}

/// The configuration in force: the file's, with the static gateway children replaced by a
/// fetched table's when there is one. Names that are gone drop out of virtual hosts' lists.
fn effective(file: &RouterDaemonConfig, gateways: Option<&[NextHopConfig]>) -> RouterDaemonConfig {
    let mut cfg = file.clone();
    let Some(children) = gateways else {
        return cfg;
    };
    let core = &mut cfg.core;
    core.next_hops
        .retain(|n| !file.gateways.children.iter().any(|g| g.name == n.name));
    for c in children {
        if core.next_hops.iter().all(|n| n.name != c.name) {
            core.next_hops.push(c.clone());
        }
    }
    let known: Vec<String> = core.next_hops.iter().map(|n| n.name.clone()).collect();
    for v in &mut core.virtual_hosts {
        v.next_hops.retain(|n| known.contains(n));
        for r in &mut v.rules {
            r.next_hops.retain(|n| known.contains(n));
        }
        v.rules.retain(|r| !r.next_hops.is_empty());
    }
    cfg.fault_delay.retain(|(n, _)| known.contains(n));
    cfg
}

/// One next hop in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct NextHopRow {
    /// Name.
    pub name: String,
    /// Tunnel endpoint.
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Health.
    pub available: bool,
    /// Still in the configuration.
    pub configured: bool,
    /// Active flows.
    pub active_flows: u32,
    /// New flows given to it.
    pub selections: u64,
    /// Packets sent to it.
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
}

/// One virtual host in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHostRow {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// Policy.
    pub policy: String,
    /// UDP mode.
    pub udp: String,
    /// Member next hops.
    pub next_hops: Vec<String>,
    /// Packets routed.
    pub packets: u64,
    /// Bytes routed.
    pub bytes: u64,
    /// Flows created.
    pub flows_created: u64,
}

/// One flow.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    /// Protocol name or number.
    pub protocol: String,
    /// Client address:port.
    pub client: String,
    /// Virtual host address:port.
    pub virtual_host: String,
    /// Next hop name.
    pub next_hop: String,
    /// State.
    pub state: String,
    /// Seconds since the flow began.
    pub age_secs: f64,
    /// Seconds since its last packet.
    pub idle_secs: f64,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A consistent view of the router.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Router name.
    pub name: String,
    /// Flows pinned now.
    pub flows_active: usize,
    /// Flow table bound.
    pub max_flows: usize,
    /// Router-wide counters.
    pub counters: Value,
    /// Drops by reason.
    pub drops: Vec<(String, u64)>,
    /// Next hops.
    pub next_hops: Vec<NextHopRow>,
    /// Virtual hosts.
    pub virtual_hosts: Vec<VirtualHostRow>,
    /// Packets the TUN device dropped before the core saw them (not IPv4, truncated).
    pub device_drops: u64,
    /// Tunnel packets the socket could not send.
    pub tunnel_send_drops: u64,
    /// CPU seconds used by the process.
    pub cpu_seconds: f64,
    /// Resident memory of the process.
    pub resident_bytes: u64,
}

fn snapshot(
    name: &str,
    r: &Router,
    tun: &TunDevice,
    ipip: &IpipSocket,
    send_drops: u64,
) -> Snapshot {
    let c = r.counters();
    Snapshot {
        name: name.to_string(),
        flows_active: r.flow_count(),
        max_flows: r.config().flow_table.max_flows,
        counters: json!({
            "packets_in": c.packets_in, "bytes_in": c.bytes_in,
            "packets_tunneled": c.packets_tunneled, "bytes_tunneled": c.bytes_tunneled,
            "flows_created": c.flows_created, "flows_expired": c.flows_expired,
            "flows_evicted": c.flows_evicted, "flows_rerouted": c.flows_rerouted,
            "icmp_frag_needed_sent": c.icmp_frag_needed_sent, "icmp_rate_limited": c.icmp_rate_limited,
            "icmp_errors_routed": c.icmp_errors_routed, "mss_clamped": c.mss_clamped,
            "fragments_routed": c.fragments_routed, "fragments_held": c.fragments_held,
            "tunnels_terminated": c.tunnels_terminated, "drops_total": c.drops_total(),
        }),
        drops: DropReason::ALL
            .iter()
            .map(|&d| (d.as_str().to_string(), c.drops(d)))
            .collect(),
        next_hops: r
            .next_hops()
            .iter()
            .map(|n| NextHopRow {
                name: n.name.clone(),
                address: n.address.to_string(),
                weight: n.weight,
                available: n.available,
                configured: n.configured,
                active_flows: n.active_flows,
                selections: n.selections,
                packets: n.packets,
                bytes: n.bytes,
            })
            .collect(),
        virtual_hosts: r
            .virtual_hosts()
            .iter()
            .map(|v| VirtualHostRow {
                name: v.config.name.clone(),
                subnet: v.config.subnet.to_string(),
                policy: v.config.policy.as_str().to_string(),
                udp: v.config.udp.as_str().to_string(),
                next_hops: v
                    .members
                    .iter()
                    .map(|&i| r.next_hops()[i].name.clone())
                    .collect(),
                packets: v.packets,
                bytes: v.bytes,
                flows_created: v.flows_created,
            })
            .collect(),
        device_drops: tun.stats().total_drops(),
        tunnel_send_drops: send_drops + ipip.stats().total_drops(),
        cpu_seconds: metrics::process_cpu_seconds(),
        resident_bytes: metrics::process_resident_bytes(),
    }
}

fn flow_rows(r: &Router, now: slr_core::time::Instant, limit: usize) -> Vec<FlowRow> {
    r.flows()
        .take(limit)
        .map(|(k, e)| FlowRow {
            protocol: match k.protocol {
                6 => "tcp".into(),
                17 => "udp".into(),
                1 => "icmp".into(),
                p => p.to_string(),
            },
            client: format!("{}:{}", k.src_addr, k.src_port),
            virtual_host: format!("{}:{}", k.dst_addr, k.dst_port),
            next_hop: r.next_hops()[e.next_hop() as usize].name.clone(),
            state: state_name(e.state()).into(),
            age_secs: (now - e.created()).as_secs_f64(),
            idle_secs: (now - e.last_seen()).as_secs_f64(),
            packets: e.packets(),
            bytes: e.bytes(),
        })
        .collect()
}

fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::TcpHalfOpen => "syn",
        FlowState::TcpEstablished => "established",
        FlowState::TcpClosing => "closing",
        FlowState::Udp => "udp",
        FlowState::Other => "other",
    }
}

/// Renders the Prometheus page from a snapshot.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut p = Page::default();
    let r = [("router", s.name.as_str())];
    p.gauge(
        "slr_router_flows_active",
        "Flows pinned in the flow table.",
        &r,
        s.flows_active as f64,
    );
    p.gauge(
        "slr_router_flows_max",
        "Flow table bound.",
        &r,
        s.max_flows as f64,
    );
    let c = &s.counters;
    let get = |k: &str| c[k].as_u64().unwrap_or(0);
    p.counter(
        "slr_router_packets_total",
        "Packets handed to the router.",
        &r,
        get("packets_in"),
    );
    p.counter(
        "slr_router_bytes_total",
        "Bytes handed to the router.",
        &r,
        get("bytes_in"),
    );
    p.counter(
        "slr_router_tunneled_packets_total",
        "Packets sent into tunnels.",
        &r,
        get("packets_tunneled"),
    );
    p.counter(
        "slr_router_tunneled_bytes_total",
        "Bytes sent into tunnels.",
        &r,
        get("bytes_tunneled"),
    );
    p.counter(
        "slr_router_flows_created_total",
        "Flows created.",
        &r,
        get("flows_created"),
    );
    p.counter(
        "slr_router_flows_expired_total",
        "Flows expired by idle timeout.",
        &r,
        get("flows_expired"),
    );
    p.counter(
        "slr_router_flows_evicted_total",
        "Flows evicted from a full table.",
        &r,
        get("flows_evicted"),
    );
    p.counter(
        "slr_router_flows_rerouted_total",
        "Reused 5-tuples routed afresh.",
        &r,
        get("flows_rerouted"),
    );
    p.counter(
        "slr_router_icmp_frag_needed_total",
        "ICMP fragmentation-needed sent.",
        &r,
        get("icmp_frag_needed_sent"),
    );
    p.counter(
        "slr_router_icmp_errors_routed_total",
        "ICMP errors routed to the host owning the flow.",
        &r,
        get("icmp_errors_routed"),
    );
    p.counter(
        "slr_router_mss_clamped_total",
        "SYNs whose MSS was clamped.",
        &r,
        get("mss_clamped"),
    );
    for (reason, v) in &s.drops {
        p.counter(
            "slr_router_drops_total",
            "Packets dropped, by reason.",
            &[("router", &s.name), ("reason", reason)],
            *v,
        );
    }
    p.counter(
        "slr_router_device_drops_total",
        "Packets the capture device dropped (not IPv4, truncated).",
        &r,
        s.device_drops,
    );
    p.counter(
        "slr_router_tunnel_send_drops_total",
        "Tunnel packets the socket could not send.",
        &r,
        s.tunnel_send_drops,
    );
    for n in &s.next_hops {
        let l = [("router", s.name.as_str()), ("next_hop", n.name.as_str())];
        p.gauge(
            "slr_next_hop_available",
            "1 if the next hop takes new flows (health).",
            &l,
            n.available as u8 as f64,
        );
        p.gauge(
            "slr_next_hop_weight",
            "Configured weight (0 drains).",
            &l,
            n.weight as f64,
        );
        p.gauge(
            "slr_next_hop_flows_active",
            "Flows pinned to the next hop.",
            &l,
            n.active_flows as f64,
        );
        p.counter(
            "slr_next_hop_selections_total",
            "New flows given to the next hop.",
            &l,
            n.selections,
        );
        p.counter(
            "slr_next_hop_packets_total",
            "Packets tunnelled to the next hop.",
            &l,
            n.packets,
        );
        p.counter(
            "slr_next_hop_bytes_total",
            "Bytes tunnelled to the next hop.",
            &l,
            n.bytes,
        );
    }
    for v in &s.virtual_hosts {
        let l = [
            ("router", s.name.as_str()),
            ("virtual_host", v.name.as_str()),
        ];
        p.counter(
            "slr_virtual_host_packets_total",
            "Packets routed for the virtual host.",
            &l,
            v.packets,
        );
        p.counter(
            "slr_virtual_host_bytes_total",
            "Bytes routed for the virtual host.",
            &l,
            v.bytes,
        );
        p.counter(
            "slr_virtual_host_flows_total",
            "Flows created for the virtual host.",
            &l,
            v.flows_created,
        );
    }
    p.counter(
        "slr_process_cpu_microseconds_total",
        "CPU time used by the process.",
        &r,
        (s.cpu_seconds * 1e6) as u64,
    );
    p.gauge(
        "slr_process_resident_bytes",
        "Resident memory of the process.",
        &r,
        s.resident_bytes as f64,
    );
    p.finish()
}

/// The control thread's view, once it runs (routers without `[control]` have none).
type ViewSlot = Arc<std::sync::OnceLock<crate::control_plane::SharedView>>;

fn control_view(slot: &ViewSlot) -> Option<crate::control_plane::ControlView> {
    slot.get().map(|v| {
        v.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    })
}

/// Answers a control-socket request.
fn answer(h: &Handle, slot: &ViewSlot, req: &Value) -> Result<Value> {
    let cmd = req["cmd"].as_str().unwrap_or("");
    Ok(match cmd {
        "children" | "table" | "parents" | "control" => match control_view(slot) {
            Some(mut v) => {
                // Each child's health check, as the core holds it.
                let s = h.snapshot()?;
                for c in &mut v.children {
                    c.health = s
                        .next_hops
                        .iter()
                        .find(|n| n.name == c.name && n.configured)
                        .map(|n| if n.available { "up" } else { "down" }.to_owned());
                }
                json!({"ok": true, "kind": "router", "control": v})
            }
            None => {
                json!({"ok": false, "error": "this router has no [control] section (no children report to it)"})
            }
        },
        "status" | "stats" | "hosts" | "next_hops" => {
            let s = h.snapshot()?;
            json!({"ok": true, "kind": "router", "snapshot": s})
        }
        "flows" => {
            let limit = req["limit"].as_u64().unwrap_or(10_000) as usize;
            json!({"ok": true, "flows": h.flows(limit)?})
        }
        "reload" => {
            h.reload()?;
            json!({"ok": true})
        }
        "metrics" => json!({"ok": true, "text": metrics_page(h, slot)?}),
        other => {
            json!({"ok": false, "error": format!("unknown command {other:?} (status, flows, hosts, stats, children, table, reload, metrics)")})
        }
    })
}

fn metrics_page(h: &Handle, slot: &ViewSlot) -> Result<String> {
    let mut text = render_metrics(&h.snapshot()?);
    if let Some(v) = control_view(slot) {
        v.render_metrics(&mut text);
    }
    Ok(text)
}

/// Runs the router until SIGTERM/SIGINT.
pub fn run(config_path: &Path, check_only: bool) -> Result<()> {
    let cfg = RouterFile::load(config_path)?;
    if check_only {
        println!("{}: ok", config_path.display());
        return Ok(());
    }
    crate::daemon::init_logging();
    let signals = Signals::install()?;
    let mut core_cfg = cfg.core.clone();
    core_cfg.flow_table_seed = crate::daemon::random_seed();
    let mut router = Router::new(core_cfg).with_context(|| format!("{}", config_path.display()))?;

    let mtu = cfg.core.tunnel_mtu as u32;
    let mut tun = TunDevice::create(&cfg.tun, mtu)
        .with_context(|| format!("cannot create TUN device {}", cfg.tun))?;
    let _ = tun.set_txqueuelen(4096);
    let mut routes = Routes::new();
    for v in &cfg.core.virtual_hosts {
        routes.replace(&[&v.subnet.to_string(), "dev", &cfg.tun])?;
    }
    let mut ipip =
        IpipSocket::open().context("cannot open the raw IP-in-IP socket (root needed)")?;
    let _ = ipip.set_send_buffer_size(8 << 20);

    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new()?);
    let handle = Handle {
        tx,
        wake: wake.clone(),
    };
    let slot = ViewSlot::default();
    {
        let (h, slot) = (handle.clone(), slot.clone());
        crate::ctl::serve(&cfg.control_socket, move |req| {
            answer(&h, &slot, req)
                .unwrap_or_else(|e| json!({"ok": false, "error": format!("{e:#}")}))
        })?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let (h, slot) = (handle.clone(), slot.clone());
        metrics::serve(addr, move || metrics_page(&h, &slot).unwrap_or_default())?;
    }
    let mut health = HealthSupervisor::new(handle.clone(), cfg.core.tunnel_source);
    health.update(&cfg);
    // The control thread calls the packet thread through `handle`, which is served by the
    // loop below: it starts now and may wait a moment for its first answers.
    let control = crate::control_plane::start_router(&cfg, handle.clone(), health.rtt())
        .with_context(|| format!("{}: [control]", config_path.display()))?;
    if let Some(c) = &control {
        let _ = slot.set(c.view.clone());
    }
    tracing::info!(
        router = %cfg.name, tun = %cfg.tun, virtual_hosts = cfg.core.virtual_hosts.len(),
        next_hops = cfg.core.next_hops.len(), control = %cfg.control_socket.display(), "router up"
    );

    let mut delayed = Vec::new();
    for (name, d) in &cfg.fault_delay {
        let Some(n) = cfg.core.next_hops.iter().find(|n| &n.name == name) else {
            continue;
        };
        let sock = IpipSocket::open().context("cannot open the raw IP-in-IP socket")?;
        let mut inj = FaultInjector::new(sock, 1);
        inj.set_send_delay(*d);
        tracing::warn!(next_hop = %name, delay = ?d, "fault injection: tunnelled packets delayed");
        delayed.push((n.address, inj));
    }
    let mut state = LoopState {
        cfg,
        config_path: config_path.to_path_buf(),
        clock: Clock::new(),
        send_drops: 0,
        delayed,
        gateways: None,
    };
    let result = state.run(
        &mut router,
        &mut tun,
        &mut ipip,
        &rx,
        &wake,
        &signals,
        &mut health,
    );
    drop(control);
    health.stop_all();
    routes.remove_all();
    let _ = std::fs::remove_file(&state.cfg.control_socket);
    tracing::info!("router down");
    result
}

struct LoopState {
    cfg: RouterDaemonConfig,
    config_path: PathBuf,
    clock: Clock,
    send_drops: u64,
    /// `[fault] delay`: tunnelled packets to these endpoints go through a delaying wrapper.
    delayed: Vec<(Ipv4Addr, FaultInjector<IpipSocket>)>,
    /// The children of a fetched gateway table, once the control thread has one.
    gateways: Option<Vec<NextHopConfig>>,
}

/// Where a tunnelled packet leaves: the plain socket, or the delaying wrapper of its endpoint.
fn delay_slot(delayed: &[(Ipv4Addr, FaultInjector<IpipSocket>)], to: Ipv4Addr) -> Option<usize> {
    delayed.iter().position(|(a, _)| *a == to)
}

impl LoopState {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        router: &mut Router,
        tun: &mut TunDevice,
        ipip: &mut IpipSocket,
        rx: &Receiver<Request>,
        wake: &EventFd,
        signals: &Signals,
        health: &mut HealthSupervisor,
    ) -> Result<()> {
        let buf_size = self.cfg.core.tunnel_mtu as usize + 256;
        let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new(buf_size)).collect();
        // Tunnelled packets from parents (routers of the level above) arrive on the IP-in-IP
        // socket, outer header included; the core checks the parent and decapsulates.
        let mut tbufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new(buf_size)).collect();
        let mut actions = [Action::Drop(DropReason::Truncated); BATCH];
        let mut ready = [false; 3];
        loop {
            if signals.stopping() {
                return Ok(());
            }
            if signals.take_reload() {
                match self.reload(router, health) {
                    Ok(()) => tracing::info!("configuration reloaded (SIGHUP)"),
                    Err(e) => tracing::error!("reload refused, old configuration stays: {e:#}"),
                }
            }
            let mut served = false;
            while let Ok(req) = rx.try_recv() {
                self.serve(router, tun, ipip, health, req);
                served = true;
            }
            if served {
                self.flush_core(router, tun, ipip);
            }
            for b in bufs.iter_mut() {
                b.reset(HEADROOM);
            }
            let n = tun.recv_batch(&mut bufs)?;
            let m = if router.config().trusted_parents.is_empty() {
                0
            } else {
                for b in tbufs.iter_mut() {
                    b.reset(HEADROOM);
                }
                ipip.recv_batch(&mut tbufs)?
            };
            let now = self.clock.now();
            if m > 0 {
                let mut k = 0;
                for i in 0..m {
                    if let Action::Tunnel { next_hop } =
                        router.handle_tunnelled_packet(now, &mut tbufs[i])
                    {
                        if self.send_delayed(next_hop, &tbufs[i]) {
                            continue;
                        }
                        tbufs.swap(i, k);
                        k += 1;
                    }
                }
                self.send_all(ipip, &tbufs[..k]);
            }
            self.flush_delayed();
            if n == 0 && m > 0 {
                self.flush_core(router, tun, ipip);
                continue;
            }
            if n == 0 {
                let timeout = router
                    .poll_timeout()
                    .map(|t| self.clock.until(t))
                    .unwrap_or(Duration::from_millis(500));
                let timeout = timeout.min(Duration::from_millis(500));
                // Delayed packets leave on time (a millisecond's granularity is enough here).
                let timeout = if self.delayed.iter().any(|(_, d)| d.held_len() > 0) {
                    timeout.min(Duration::from_millis(1))
                } else {
                    timeout
                };
                if timeout.is_zero() {
                    router.handle_timeout(now);
                } else {
                    let fds = [tun.fd(), wake.fd(), ipip.fd()];
                    // The IP-in-IP socket only when parents may send: unread, it would stay
                    // readable and turn this wait into a spin.
                    let k = if router.config().trusted_parents.is_empty() {
                        2
                    } else {
                        3
                    };
                    poll_readable(&fds[..k], Some(timeout), &mut ready)?;
                    if ready[1] {
                        wake.drain()?;
                    }
                }
                self.flush_core(router, tun, ipip);
                continue;
            }
            router.handle_batch(now, &mut bufs[..n], &mut actions[..n]);
            // Move the packets to tunnel to the front so that one sendmmsg carries them.
            let mut k = 0;
            for (i, action) in actions.iter().enumerate().take(n) {
                if let Action::Tunnel { next_hop } = *action {
                    if self.send_delayed(next_hop, &bufs[i]) {
                        continue;
                    }
                    bufs.swap(i, k);
                    k += 1;
                }
            }
            self.send_all(ipip, &bufs[..k]);
            if router.poll_timeout().is_some_and(|t| t <= now) {
                router.handle_timeout(now);
            }
            self.flush_core(router, tun, ipip);
        }
    }

    /// Sends through the delaying wrapper of `to`, if it has one (true: taken).
    fn send_delayed(&mut self, to: Ipv4Addr, pkt: &PacketBuf) -> bool {
        let Some(i) = delay_slot(&self.delayed, to) else {
            return false;
        };
        if !matches!(
            self.delayed[i].1.send_batch(std::slice::from_ref(pkt)),
            Ok(1)
        ) {
            self.send_drops += 1;
        }
        true
    }

    fn flush_delayed(&mut self) {
        for (_, d) in &mut self.delayed {
            if d.held_len() > 0 {
                let _ = d.flush_due();
            }
        }
    }

    fn send_all(&mut self, ipip: &mut IpipSocket, pkts: &[PacketBuf]) {
        let mut sent = 0;
        let mut tries = 0;
        while sent < pkts.len() {
            match ipip.send_batch(&pkts[sent..]) {
                Ok(0) => {
                    // Socket buffer full: give the kernel a moment, a few times, then drop.
                    tries += 1;
                    if tries > 50 {
                        self.send_drops += (pkts.len() - sent) as u64;
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(m) => sent += m,
                Err(e) => {
                    tracing::warn!("tunnel send failed: {e}");
                    self.send_drops += (pkts.len() - sent) as u64;
                    return;
                }
            }
        }
    }

    fn flush_core(&mut self, router: &mut Router, tun: &mut TunDevice, ipip: &mut IpipSocket) {
        while let Some(t) = router.poll_transmit() {
            let pkt = std::slice::from_ref(&t.buf);
            match t.destination {
                Destination::Tunnel(to) => {
                    if !self.send_delayed(to, &t.buf) {
                        self.send_all(ipip, pkt)
                    }
                }
                Destination::Local => {
                    if !matches!(tun.send_batch(pkt), Ok(1)) {
                        self.send_drops += 1;
                    }
                }
            }
        }
        while let Some(e) = router.poll_event() {
            match e {
                Event::NextHopAvailability {
                    next_hop,
                    available,
                } => {
                    tracing::warn!(next_hop = %next_hop, available, "next hop health changed")
                }
                Event::Reconfigured { generation } => {
                    tracing::info!(generation, "configuration applied")
                }
                Event::FlowTableFull => {
                    tracing::warn!("flow table full: evicting (half-open first)")
                }
            }
        }
    }

    fn reload(&mut self, router: &mut Router, health: &mut HealthSupervisor) -> Result<()> {
        let cfg = RouterFile::load(&self.config_path)?;
        if cfg.tun != self.cfg.tun || cfg.core.tunnel_source != self.cfg.core.tunnel_source {
            anyhow::bail!("router.tun and router.tunnel_source cannot change without a restart");
        }
        // The control thread and the fault wrappers read these once, at start.
        let o = &self.cfg;
        if cfg.control != o.control
            || cfg.gateways != o.gateways
            || cfg.cost != o.cost
            || cfg.client_groups != o.client_groups
            || cfg.high_priority != o.high_priority
            || cfg.fault_delay != o.fault_delay
            || cfg.level != o.level
        {
            anyhow::bail!(
                "[control], [gateways], [cost], [[client_groups]], virtual host priorities, [fault] \
                 and router.level cannot change without a restart"
            );
        }
        let file = cfg;
        let cfg = effective(&file, self.gateways.as_deref());
        let mut core_cfg = cfg.core.clone();
        core_cfg.flow_table_seed = router.config().flow_table_seed;
        router.handle_control(self.clock.now(), Control::Reconfigure(Box::new(core_cfg)))?;
        // Routes for virtual subnets added or removed.
        for v in &cfg.core.virtual_hosts {
            if !self
                .cfg
                .core
                .virtual_hosts
                .iter()
                .any(|o| o.subnet == v.subnet)
            {
                crate::daemon::ip(&["route", "replace", &v.subnet.to_string(), "dev", &cfg.tun])?;
            }
        }
        for o in &self.cfg.core.virtual_hosts {
            if !cfg.core.virtual_hosts.iter().any(|v| v.subnet == o.subnet) {
                let _ =
                    crate::daemon::ip(&["route", "del", &o.subnet.to_string(), "dev", &cfg.tun]);
            }
        }
        health.update(&cfg);
        self.cfg = file;
        Ok(())
    }

    fn serve(
        &mut self,
        router: &mut Router,
        tun: &TunDevice,
        ipip: &IpipSocket,
        health: &mut HealthSupervisor,
        req: Request,
    ) {
        let now = self.clock.now();
        match req {
            Request::Control(c, reply) => {
                let _ = reply.send(router.handle_control(now, c).map_err(|e| e.to_string()));
            }
            Request::Snapshot(reply) => {
                let _ = reply.send(snapshot(&self.cfg.name, router, tun, ipip, self.send_drops));
            }
            Request::Flows(limit, reply) => {
                let _ = reply.send(flow_rows(router, now, limit));
            }
            Request::Reload(reply) => {
                let r = self.reload(router, health).map_err(|e| format!("{e:#}"));
                if r.is_ok() {
                    tracing::info!("configuration reloaded (slr ctl reload)");
                }
                let _ = reply.send(r);
            }
            Request::Gateways(children, reply) => {
                let eff = effective(&self.cfg, Some(&children));
                let mut core = eff.core.clone();
                core.flow_table_seed = router.config().flow_table_seed;
                let r = router.handle_control(now, Control::Reconfigure(Box::new(core)));
                if r.is_ok() {
                    // Health checks (and so RTTs) follow the new children.
                    health.update(&eff);
                    self.gateways = Some(children);
                }
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
        }
    }
}
