//! `slr host`: the host agent on a host server (MISSION F1, F6, F7, F20).
//!
//! It makes the virtual subnets local (AnyIP: `ip route add local SUBNET dev lo`). With
//! `host.fast_path = "xdp"` (the default) an XDP program on the host's interfaces strips
//! IP-in-IP from the trusted sources in the kernel and passes the inner packets up the stack
//! (`slr_xdp::HostFastPath`); what the program leaves to the agent, and every tunnel when the
//! program is off or cannot attach, arrives on a raw socket, where the core's
//! [`TunnelTerminator`] decides by the same rules (trusted source, virtual subnet, well-formed,
//! not nested) and accepted inner packets are written into the agent's TUN device. Either way
//! the host's stack takes the inner packet as if it had arrived on that interface, and the
//! server answers from the VIP straight to the client (direct server return).
//!
//! On a graceful stop the routes are removed and the program detached. A killed agent leaves
//! both in place, so the host keeps serving its connections; the next agent replaces the
//! program in one step.

mod fast_path;
mod load;

use crate::control_plane::SharedView;
use crate::daemon::{LogFormat, Routes, Signals};
use crate::metrics::{self, Exposition};
use anyhow::{Context, Result};
use serde_json::json;
use slr_config::HostDaemonConfig;
use slr_core::terminate::{TerminateDrop, TunnelTerminator};
use slr_io::{poll_readable, IpipSocket, PacketDevice, TunDevice};
use slr_wire::PacketBuf;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BATCH: usize = 64;

/// Counters shared with the control socket and the metrics listener.
#[derive(Default, Clone)]
struct Shared {
    packets_in: u64,
    packets_delivered: u64,
    bytes_delivered: u64,
    drops: Vec<(String, u64)>,
    per_subnet: Vec<(String, u64)>,
    inject_failures: u64,
    device_drops: u64,
    kernel: fast_path::KernelView,
}

/// The host agent's families, for a scrape (the control thread's are added when it runs).
fn render(name: &str, s: &Shared, view: Option<&SharedView>) -> String {
    let mut p = Exposition::new();
    let h = [("host", name)];
    let k = &s.kernel;
    p.counter(
        "slr_host_tunnel_packets_total",
        "IP-in-IP packets received (decided in the kernel or by the agent).",
        &h,
        s.packets_in + k.decided(),
    );
    p.counter(
        "slr_host_delivered_packets_total",
        "Inner packets delivered to the stack (in the kernel or by the agent).",
        &h,
        s.packets_delivered + k.delivered.packets,
    );
    p.counter(
        "slr_host_delivered_bytes_total",
        "Inner bytes delivered to the stack.",
        &h,
        s.bytes_delivered + k.delivered.bytes,
    );
    for (reason, v) in &s.drops {
        p.counter(
            "slr_host_drops_total",
            "Tunnel packets dropped, by reason (in the kernel or by the agent).",
            &[("host", name), ("reason", reason)],
            *v + k.drops(reason),
        );
    }
    for (i, (subnet, v)) in s.per_subnet.iter().enumerate() {
        p.counter(
            "slr_host_virtual_subnet_packets_total",
            "Packets delivered per virtual subnet.",
            &[("host", name), ("virtual_subnet", subnet)],
            *v + k.per_subnet.get(i).copied().unwrap_or(0),
        );
    }
    k.add_metrics(&mut p, name);
    p.counter(
        "slr_host_inject_failures_total",
        "Inner packets the TUN refused.",
        &h,
        s.inject_failures,
    );
    p.counter(
        "slr_host_device_drops_total",
        "Packets the socket dropped before the agent saw them.",
        &h,
        s.device_drops,
    );
    if let Some(v) = view {
        v.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add_metrics(&mut p);
    }
    p.render()
}

/// Runs the host agent until SIGTERM/SIGINT.
pub fn run(config_path: &Path, check_only: bool, log_format: LogFormat) -> Result<()> {
    let cfg = slr_config::load_host(config_path)?;
    if check_only {
        println!("{}: ok", config_path.display());
        return Ok(());
    }
    crate::daemon::init_logging(log_format);
    let signals = Signals::install()?;
    let mut tun = TunDevice::create(&cfg.tun, 65535)
        .with_context(|| format!("cannot create TUN device {}", cfg.tun))?;
    let mut ipip =
        IpipSocket::open().context("cannot open the raw IP-in-IP socket (root needed)")?;
    let _ = ipip.set_recv_buffer_size(8 << 20);
    let mut routes = Routes::new();
    if cfg.manage_routes {
        for s in &cfg.virtual_subnets {
            routes.replace(slr_io::Route::local(*s))?;
        }
    }
    let mut kernel = fast_path::HostKernel::start(&cfg);
    // Every counter exists (at zero) from the first answer on, before the pump's first publish.
    let shared = Arc::new(Mutex::new(Shared {
        drops: TerminateDrop::ALL
            .iter()
            .map(|d| (d.as_str().to_string(), 0))
            .collect(),
        per_subnet: cfg
            .virtual_subnets
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect(),
        kernel: kernel.view(cfg.virtual_subnets.len()),
        ..Shared::default()
    }));
    let mut sampler = load::LoadSampler::new(cfg.virtual_subnets.clone(), cfg.load_scope);
    let control = crate::control_plane::start_host(
        &cfg.name,
        cfg.control.as_ref(),
        &cfg.virtual_subnets,
        move || sampler.sample(),
    )
    .with_context(|| format!("{}: [control]", config_path.display()))?;
    let view = control.as_ref().map(|c| c.view.clone());
    {
        let view = view.clone();
        let (shared, name) = (shared.clone(), cfg.name.clone());
        let trusted: Vec<String> = cfg
            .trusted_tunnel_sources
            .iter()
            .map(|c| c.to_string())
            .collect();
        let subnets: Vec<String> = cfg.virtual_subnets.iter().map(|c| c.to_string()).collect();
        slr_ctl::serve(&cfg.control_socket, move |req, _| {
            let s = shared.lock().map(|s| s.clone()).unwrap_or_default();
            match req["cmd"].as_str().unwrap_or("") {
                "status" | "stats" => json!({
                    "ok": true, "kind": "host", "name": name,
                    "virtual_subnets": subnets, "trusted_tunnel_sources": trusted,
                    // Totals: decided in the kernel or by the agent (the agent's own are under
                    // "agent", the program's under "fast_path").
                    "packets_in": s.packets_in + s.kernel.decided(),
                    "packets_delivered": s.packets_delivered + s.kernel.delivered.packets,
                    "bytes_delivered": s.bytes_delivered + s.kernel.delivered.bytes,
                    "drops": s.drops.iter().map(|(r, v)| (r.clone(), v + s.kernel.drops(r))).collect::<Vec<_>>(),
                    "per_subnet": s.per_subnet.iter().enumerate().map(|(i, (n, v))| (n.clone(), v + s.kernel.per_subnet.get(i).copied().unwrap_or(0))).collect::<Vec<_>>(),
                    "agent": {"packets_in": s.packets_in, "packets_delivered": s.packets_delivered, "drops": s.drops},
                    "inject_failures": s.inject_failures, "device_drops": s.device_drops,
                    "fast_path": s.kernel,
                    "cpu_seconds": metrics::process_cpu_seconds(),
                }),
                "metrics" => json!({"ok": true, "text": render(&name, &s, view.as_ref())}),
                "control" | "parents" => match &view {
                    Some(v) => {
                        json!({"ok": true, "kind": "host", "control": *v.lock().unwrap_or_else(std::sync::PoisonError::into_inner)})
                    }
                    None => {
                        json!({"ok": false, "error": "this host agent has no [control] section"})
                    }
                },
                other => {
                    json!({"ok": false, "error": format!("unknown command {other:?} for a host agent (status, stats, metrics)")})
                }
            }
        })?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let (shared, name, view) = (shared.clone(), cfg.name.clone(), view.clone());
        metrics::serve(addr, move || {
            let s = shared.lock().map(|s| s.clone()).unwrap_or_default();
            render(&name, &s, view.as_ref())
        })?;
    }
    tracing::info!(host = %cfg.name, tun = %cfg.tun, subnets = ?cfg.virtual_subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "host agent up");
    let result = pump(&cfg, &signals, &mut tun, &mut ipip, &shared, &kernel);
    drop(control);
    kernel.stop();
    routes.remove_all();
    let _ = std::fs::remove_file(&cfg.control_socket);
    tracing::info!("host agent down");
    result
}

fn pump(
    cfg: &HostDaemonConfig,
    signals: &Signals,
    tun: &mut TunDevice,
    ipip: &mut IpipSocket,
    shared: &Mutex<Shared>,
    kernel: &fast_path::HostKernel,
) -> Result<()> {
    let mut term = TunnelTerminator::new(
        cfg.trusted_tunnel_sources.clone(),
        cfg.virtual_subnets.clone(),
    );
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new(65535 + 64)).collect();
    let mut inject_failures = 0u64;
    let mut ready = [false; 1];
    let mut last_publish = std::time::Instant::now();
    loop {
        if signals.stopping() {
            return Ok(());
        }
        for b in bufs.iter_mut() {
            b.reset(0);
        }
        let n = ipip.recv_batch(&mut bufs)?;
        if n > 0 {
            let mut k = 0;
            for i in 0..n {
                match term.handle_packet(&mut bufs[i]) {
                    Ok(_) => {
                        bufs.swap(i, k);
                        k += 1;
                    }
                    Err(reason) => tracing::trace!(?reason, "tunnel packet dropped"),
                }
            }
            let mut sent = 0;
            while sent < k {
                match tun.send_batch(&bufs[sent..k]) {
                    Ok(0) | Err(_) => {
                        inject_failures += (k - sent) as u64;
                        break;
                    }
                    Ok(m) => sent += m,
                }
            }
        } else {
            poll_readable(&[ipip.fd()], Some(Duration::from_millis(200)), &mut ready)?;
        }
        if n == 0 || last_publish.elapsed() >= Duration::from_millis(100) {
            last_publish = std::time::Instant::now();
            let c = term.counters();
            let k = kernel.view(cfg.virtual_subnets.len());
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            s.kernel = k;
            s.packets_in = c.packets_in;
            s.packets_delivered = c.packets_delivered;
            s.bytes_delivered = c.bytes_delivered;
            s.drops = TerminateDrop::ALL
                .iter()
                .map(|&d| (d.as_str().to_string(), c.drops(d)))
                .collect();
            s.per_subnet = term
                .virtual_subnets()
                .iter()
                .zip(&c.per_subnet_packets)
                .map(|(s, v)| (s.to_string(), *v))
                .collect();
            s.inject_failures = inject_failures;
            s.device_drops = ipip.stats().total_drops();
        }
    }
}
