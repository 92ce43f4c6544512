//! `slr router`: the Service Level Router daemon.
//!
//! Threads:
//! - the **packet thread** (the main thread, [`packet_loop`]) owns the routing core, the TUN
//!   device that captures virtual-host traffic and the raw IP-in-IP socket; it reads batches
//!   from the TUN, lets the core route them in place and sends the tunnelled packets in
//!   batches. Every other thread reaches it through its [mailbox](crate::mailbox);
//! - **health checkers**, one per next hop, probe through the tunnel with the VIP inside
//!   (see [`crate::health`]);
//! - the **control thread** ([`crate::control_plane`]), when the router takes part in the state
//!   update protocol;
//! - the **control socket** (`slr ctl`, [`ctl_answers`]) and the **metrics** listener
//!   ([`metrics`]), which both ask the packet thread for snapshots.

mod bgp;
mod ctl_answers;
mod fast_path;
mod metrics;
mod mirror;
mod packet_loop;
mod shortcut;

use crate::daemon::{LogFormat, Routes, Signals};
use crate::health::HealthSupervisor;
use anyhow::{Context, Result};
use ctl_answers::ViewSlot;
use packet_loop::LoopState;
use serde_json::json;
use slr_core::router::Router;
use slr_io::{FaultInjector, IpipSocket, TunDevice};
use std::path::Path;

/// Runs the router until SIGTERM/SIGINT.
pub fn run(config_path: &Path, check_only: bool, log_format: LogFormat) -> Result<()> {
    let cfg = slr_config::load_router(config_path)?;
    if check_only {
        println!("{}: ok", config_path.display());
        return Ok(());
    }
    crate::daemon::init_logging(log_format);
    let signals = Signals::install()?;
    let overrides = slr_config::Overrides::load(&cfg.overrides_file)?;
    if !overrides.next_hops.is_empty() {
        tracing::warn!(
            file = %cfg.overrides_file.display(),
            overrides = ?overrides.next_hops,
            "runtime overrides in force (slr ctl R overrides; slr ctl R clear)"
        );
    }
    let mut core_cfg = cfg.in_force(None, &overrides).core;
    core_cfg.flow_table_seed = crate::daemon::random_seed();
    let mut router = Router::new(core_cfg).with_context(|| format!("{}", config_path.display()))?;

    let mtu = cfg.core.tunnel_mtu as u32;
    let mut tun = TunDevice::create(&cfg.tun, mtu)
        .with_context(|| format!("cannot create TUN device {}", cfg.tun))?;
    let _ = tun.set_txqueuelen(4096);
    let mut routes = Routes::new();
    for v in &cfg.core.virtual_hosts {
        routes.replace(slr_io::Route::unicast(v.subnet, &cfg.tun))?;
    }
    let mut ipip =
        IpipSocket::open().context("cannot open the raw IP-in-IP socket (root needed)")?;
    let _ = ipip.set_send_buffer_size(8 << 20);

    let (handle, mailbox) = crate::mailbox::channel()?;
    let slot = ViewSlot::default();
    {
        let (h, slot) = (handle.clone(), slot.clone());
        slr_ctl::serve(&cfg.control_socket, move |req, parts| {
            ctl_answers::answer(&h, &slot, req, parts)
                .unwrap_or_else(|e| json!({"ok": false, "error": format!("{e:#}")}))
        })?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let (h, slot) = (handle.clone(), slot.clone());
        crate::metrics::serve(addr, move || {
            ctl_answers::metrics_page(&h, &slot).unwrap_or_default()
        })?;
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
    let mut state = LoopState::new(cfg, config_path.to_path_buf(), delayed, overrides);
    state.routes = routes;
    if let Some(tx) = control.as_ref().and_then(|c| c.signals.clone()) {
        state.signals = shortcut::SignalOutbox::new(tx);
    }
    state.start_fast_path(&mut router);
    if let Some(c) = state.cfg.cluster.clone() {
        state.mirror = Some(
            mirror::Mirror::start(&c, &state.cfg.name, handle.clone())
                .with_context(|| format!("{}: [cluster]", config_path.display()))?,
        );
        // The peers learn of every flow change, with or without a fast path.
        if c.mirror {
            router.set_flow_log(true);
        }
    }
    if let Some(b) = state.cfg.bgp.clone() {
        state.bgp = Some(bgp::Announcer::start(b).context("[bgp]")?);
    }
    let result = state.run(
        &mut router,
        &mut tun,
        &mut ipip,
        &mailbox,
        &signals,
        &mut health,
    );
    drop(control);
    // BIRD closes its sessions (the subnets were withdrawn when the stop began).
    drop(state.bgp.take());
    drop(state.mirror.take());
    health.stop_all();
    state.fast.stop();
    state.routes.remove_all();
    let _ = std::fs::remove_file(&state.cfg.control_socket);
    tracing::info!("router down");
    result
}
