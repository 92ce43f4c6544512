//! The packet thread's loop: batches from the TUN device (and, below the top of a hierarchy,
//! the parent's tunnels from the IP-in-IP socket) through the core and out in batches, with the
//! mailbox's requests served between batches.

use crate::daemon::{Clock, Signals};
use crate::health::HealthSupervisor;
use crate::mailbox::{Mailbox, Request};
use crate::snapshot::{flow_rows, snapshot};
use anyhow::Result;
use slr_config::RouterDaemonConfig;
use slr_core::router::{Action, Control, Destination, DropReason, Event, NextHopConfig, Router};
use slr_io::{poll_readable, FaultInjector, IpipSocket, PacketDevice, TunDevice};
use slr_wire::PacketBuf;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// Packets read from the TUN per batch.
const BATCH: usize = 64;
/// Headroom kept in front of each packet for the outer header.
const HEADROOM: usize = slr_wire::buf::DEFAULT_HEADROOM;

/// What the packet thread keeps besides the core and the devices.
pub(super) struct LoopState {
    /// The configuration file's, as loaded (before a fetched gateway table).
    pub(super) cfg: RouterDaemonConfig,
    config_path: PathBuf,
    clock: Clock,
    send_drops: u64,
    /// `[fault] delay`: tunnelled packets to these endpoints go through a delaying wrapper.
    delayed: Vec<(Ipv4Addr, FaultInjector<IpipSocket>)>,
    /// The children of a fetched gateway table, once the control thread has one.
    gateways: Option<Vec<NextHopConfig>>,
}

impl LoopState {
    /// The state of a packet thread that starts now.
    pub(super) fn new(
        cfg: RouterDaemonConfig,
        config_path: PathBuf,
        delayed: Vec<(Ipv4Addr, FaultInjector<IpipSocket>)>,
    ) -> Self {
        LoopState {
            cfg,
            config_path,
            clock: Clock::new(),
            send_drops: 0,
            delayed,
            gateways: None,
        }
    }
}

/// Where a tunnelled packet leaves: the plain socket, or the delaying wrapper of its endpoint.
fn delay_slot(delayed: &[(Ipv4Addr, FaultInjector<IpipSocket>)], to: Ipv4Addr) -> Option<usize> {
    delayed.iter().position(|(a, _)| *a == to)
}

impl LoopState {
    /// Runs until a stop signal.
    pub(super) fn run(
        &mut self,
        router: &mut Router,
        tun: &mut TunDevice,
        ipip: &mut IpipSocket,
        mailbox: &Mailbox,
        signals: &Signals,
        health: &mut HealthSupervisor,
    ) -> Result<()> {
        let (rx, wake) = (&mailbox.requests, &*mailbox.wake);
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
        let file = slr_config::load_router(&self.config_path)?;
        if let Some(why) = self.cfg.restart_needed_for(&file) {
            anyhow::bail!("{why}");
        }
        let cfg = file.with_gateway_children(self.gateways.as_deref());
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
                let _ = reply.send(snapshot(
                    &self.cfg.name,
                    router,
                    tun.stats().total_drops(),
                    self.send_drops + ipip.stats().total_drops(),
                ));
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
                let eff = self.cfg.with_gateway_children(Some(&children));
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
