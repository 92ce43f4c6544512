//! The packet thread's loop: batches from the TUN device (and, below the top of a hierarchy,
//! the parent's tunnels from the IP-in-IP socket) through the core and out in batches, with the
//! mailbox's requests served between batches.

use crate::daemon::{Clock, Signals};
use crate::health::HealthSupervisor;
use crate::mailbox::{Mailbox, OverrideChange, Request};
use crate::snapshot::{flow_page, has_live_flows, snapshot, DaemonState};
use anyhow::{bail, Result};
use slr_config::{Overrides, RouterDaemonConfig};
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
    /// The operator's runtime overrides (kept in `cfg.overrides_file`).
    overrides: Overrides,
    /// When a graceful stop must end, once a stop signal came.
    stop_deadline: Option<std::time::Instant>,
    /// When the stopping router last looked for flows still alive.
    last_live_check: std::time::Instant,
    /// The routes of the virtual subnets into the TUN device: installed at start (handed over
    /// by `router::run`), changed by reloads, removed when the router stops.
    pub(super) routes: crate::daemon::Routes,
    /// The kernel fast path (off until `router::run` starts it).
    pub(super) fast: super::fast_path::FastPath,
    /// `[bgp]`: the announcements through BIRD (none until `router::run` starts them).
    pub(super) bgp: Option<super::bgp::Announcer>,
    /// `[cluster]`: flow mirroring (none until `router::run` starts it).
    pub(super) mirror: Option<super::mirror::Mirror>,
    /// The core's shortcut signals, on their way to the control thread.
    pub(super) signals: super::shortcut::SignalOutbox,
}

impl LoopState {
    /// The state of a packet thread that starts now.
    pub(super) fn new(
        cfg: RouterDaemonConfig,
        config_path: PathBuf,
        delayed: Vec<(Ipv4Addr, FaultInjector<IpipSocket>)>,
        overrides: Overrides,
    ) -> Self {
        LoopState {
            cfg,
            config_path,
            clock: Clock::new(),
            send_drops: 0,
            delayed,
            gateways: None,
            overrides,
            stop_deadline: None,
            last_live_check: std::time::Instant::now(),
            routes: crate::daemon::Routes::new(),
            fast: super::fast_path::FastPath::off(),
            bgp: None,
            mirror: None,
            signals: super::shortcut::SignalOutbox::default(),
        }
    }

    /// Starts the kernel fast path (the core takes back the flows of a pinned map).
    pub(super) fn start_fast_path(&mut self, router: &mut Router) {
        self.fast = super::fast_path::FastPath::start(&self.cfg, router, self.clock.now());
    }

    /// Hands the core's flow changes to the fast path's map and to the cluster's peers, and
    /// its WHOHAS questions to the asker.
    fn follow(&mut self, router: &mut Router) {
        while let Some(change) = router.poll_flow_change() {
            if let Some(m) = self.mirror.as_mut() {
                m.offer(&change, router);
            }
            self.fast.apply(change, router.next_hops());
        }
        let mut questions = Vec::new();
        while let Some(key) = router.poll_whohas() {
            questions.push(key);
        }
        if let Some(m) = self.mirror.as_mut().filter(|_| !questions.is_empty()) {
            m.ask(questions);
        }
        self.signals.forward(router);
    }

    /// The configuration in force: the file's, with a fetched gateway table's children and
    /// the runtime overrides.
    fn in_force(&self) -> RouterDaemonConfig {
        self.cfg.in_force(self.gateways.as_deref(), &self.overrides)
    }

    /// Applies a configuration in force to the core (new flows follow it; established flows
    /// keep their next hops).
    fn reconfigure(&self, router: &mut Router, cfg: &RouterDaemonConfig) -> Result<()> {
        let mut core = cfg.core.clone();
        core.flow_table_seed = router.config().flow_table_seed;
        router.handle_control(self.clock.now(), Control::Reconfigure(Box::new(core)))?;
        Ok(())
    }

    /// A stop signal came: take no new flows, stop the health checks, and forward the
    /// established flows until they end or `drain_period` has passed.
    fn begin_stop(&mut self, router: &mut Router, health: &mut HealthSupervisor) {
        let _ = router.handle_control(self.clock.now(), Control::SetStopping(true));
        // The virtual subnets are withdrawn first: the network moves new connections to other
        // routers while this one drains its established flows.
        if let Some(a) = self.bgp.as_mut() {
            a.follow(router, true);
        }
        health.stop_all();
        self.stop_deadline = Some(std::time::Instant::now() + self.cfg.drain_period);
        tracing::info!(
            drain_period = ?self.cfg.drain_period,
            flows = router.flow_count(),
            "stopping: no new flows; established flows are forwarded until they end or the drain period is over"
        );
    }

    /// Whether a graceful stop is over: the drain period passed, or no flow is left alive.
    fn stop_is_over(&mut self, router: &Router) -> bool {
        let Some(deadline) = self.stop_deadline else {
            return false;
        };
        if std::time::Instant::now() >= deadline {
            tracing::info!(
                flows = router.flow_count(),
                "drain period over: exiting with the flows left"
            );
            return true;
        }
        // A walk of the table, five times a second at most.
        if self.last_live_check.elapsed() < Duration::from_millis(200) {
            return false;
        }
        self.last_live_check = std::time::Instant::now();
        if has_live_flows(router, self.clock.now()) {
            return false;
        }
        tracing::info!("no established flow left: exiting");
        true
    }

    /// Applies a change of the runtime overrides: checked against the next hops in force,
    /// saved, then applied to the core at once (new flows follow; established flows stay).
    fn change_overrides(
        &mut self,
        router: &mut Router,
        change: OverrideChange,
    ) -> Result<Overrides> {
        // The next hops in force are the core's configured ones (file and gateway table).
        let known = |n: &str| {
            router
                .next_hops()
                .iter()
                .any(|h| h.name == n && h.configured)
        };
        let mut next = self.overrides.clone();
        match &change {
            OverrideChange::Weight(n, w) => {
                if !known(n) {
                    bail!("no next hop named {n:?}");
                }
                if *w > 65_535 {
                    bail!("weight {w} is above 65535");
                }
                next.set_weight(n, *w);
            }
            OverrideChange::Drain(n, drained) => {
                if !known(n) && *drained {
                    bail!("no next hop named {n:?}");
                }
                next.set_drained(n, *drained);
            }
            OverrideChange::Clear(n) => {
                next.clear(n.as_deref());
            }
        }
        next.save(&self.cfg.overrides_file).map_err(|e| {
            anyhow::anyhow!(
                "cannot save the overrides to {}: {e}",
                self.cfg.overrides_file.display()
            )
        })?;
        let old = std::mem::replace(&mut self.overrides, next);
        let cfg = self.in_force();
        if let Err(e) = self.reconfigure(router, &cfg) {
            // Refused by the core (it should not be): keep the old ones, on disk too.
            let _ = old.save(&self.cfg.overrides_file);
            self.overrides = old;
            return Err(e);
        }
        tracing::info!(change = ?change, "runtime override applied");
        Ok(self.overrides.clone())
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
            if signals.stopping() && self.stop_deadline.is_none() {
                self.begin_stop(router, health);
            }
            if self.stop_is_over(router) {
                return Ok(());
            }
            if let Some(a) = self.bgp.as_mut() {
                a.follow(router, false);
            }
            if let Some(m) = self.mirror.as_mut() {
                let (now, fast) = (self.clock.now(), &self.fast);
                m.refresh(router, now, |key| fast.last_used(key, now));
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
                // As below: the fast path follows the core before these packets leave.
                self.follow(router);
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
                    self.fast.handle_timeout(router, now);
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
            // The fast path follows the core before the batch leaves: a SYN that reuses a
            // closing flow's 5-tuple withdraws the old entry, and the new connection's ACK,
            // which can only come after this SYN, must not find it in the kernel.
            self.follow(router);
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
                self.fast.handle_timeout(router, now);
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
        self.follow(router);
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
        let cfg = file.in_force(self.gateways.as_deref(), &self.overrides);
        self.reconfigure(router, &cfg)?;
        // Routes for virtual subnets added or removed.
        for v in &cfg.core.virtual_hosts {
            if !self
                .cfg
                .core
                .virtual_hosts
                .iter()
                .any(|o| o.subnet == v.subnet)
            {
                self.routes
                    .replace(slr_io::Route::unicast(v.subnet, &cfg.tun))?;
            }
        }
        for o in &self.cfg.core.virtual_hosts {
            if !cfg.core.virtual_hosts.iter().any(|v| v.subnet == o.subnet) {
                if let Err(e) = self
                    .routes
                    .remove(&slr_io::Route::unicast(o.subnet, &cfg.tun))
                {
                    tracing::warn!("{e:#}");
                }
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
                let daemon = DaemonState {
                    name: &self.cfg.name,
                    device_drops: tun.stats().total_drops(),
                    tunnel_send_drops: self.send_drops + ipip.stats().total_drops(),
                    overrides: &self.overrides,
                    stop_deadline: self
                        .stop_deadline
                        .map(|d| d.saturating_duration_since(std::time::Instant::now())),
                    fast_path: self.fast.view(router),
                    bgp: self.bgp.as_ref().map(super::bgp::Announcer::status),
                    mirror: self.mirror.as_ref().map(super::mirror::Mirror::view),
                    whohas: self.mirror.as_ref().and_then(|m| m.whohas_view(router)),
                };
                let _ = reply.send(snapshot(router, &daemon));
            }
            Request::Flows {
                offset,
                limit,
                reply,
            } => {
                let _ = reply.send(flow_page(router, now, offset, limit));
            }
            Request::Override(change, reply) => {
                let r = self.change_overrides(router, change);
                let _ = reply.send(r.map_err(|e| format!("{e:#}")));
            }
            Request::Reload(reply) => {
                let r = self.reload(router, health).map_err(|e| format!("{e:#}"));
                if r.is_ok() {
                    tracing::info!("configuration reloaded (slr ctl reload)");
                }
                let _ = reply.send(r);
            }
            Request::FastPathFlush(reply) => {
                let r = self.fast.flush();
                if let Ok(n) = &r {
                    tracing::info!(
                        entries = n,
                        "fast path flow map flushed (slr ctl fast-path flush)"
                    );
                }
                let _ = reply.send(r.map_err(|e| format!("{e:#}")));
            }
            Request::Gateways(children, reply) => {
                let eff = self.cfg.in_force(Some(&children), &self.overrides);
                let r = self.reconfigure(router, &eff);
                if r.is_ok() {
                    // Health checks (and so RTTs) follow the new children.
                    health.update(&eff);
                    self.gateways = Some(children);
                }
                let _ = reply.send(r.map_err(|e| format!("{e:#}")));
            }
            Request::Mirrored(batch) => {
                if let Some(m) = self.mirror.as_mut() {
                    let fast = &self.fast;
                    m.apply(router, now, batch, |r, key, since| {
                        r.flow(key).is_some_and(|e| e.last_seen() > since) || fast.used(key)
                    });
                }
            }
            Request::MirrorFlows(reply) => {
                let _ = reply.send(super::mirror::mirrorable(router));
            }
            Request::WhohasFound(found) => {
                if let Some(m) = self.mirror.as_mut() {
                    m.found(router, now, found);
                }
            }
            Request::WhohasAsk(flows, reply) => {
                let _ = reply.send(super::mirror::answer_question(router, &flows));
            }
            Request::Shortcut(child, signals, keepalives, reply) => {
                let answer = super::shortcut::judge(router, now, &child, &signals, &keepalives);
                let _ = reply.send(answer);
            }
            Request::ShortcutMark(flows) => super::shortcut::mark(router, &flows),
            Request::ShortcutKept(max, reply) => {
                let _ = reply.send(super::shortcut::kept(router, max));
            }
            Request::ShortcutRefresh(flows) => super::shortcut::refresh(router, now, &flows),
            Request::ShortcutFlush(reply) => {
                let n = router.flush_shortcuts();
                tracing::info!(shortcuts = n, "shortcuts flushed (slr ctl shortcuts flush)");
                let _ = reply.send(n);
            }
        }
    }
}
