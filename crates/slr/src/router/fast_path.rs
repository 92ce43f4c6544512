//! The router's kernel fast path (`router.fast_path = "xdp"`): the XDP program on the ingress
//! interfaces forwards established flows; the core stays the one place where decisions are made
//! and the program's flow map follows it (see `slr_xdp`).

use crate::snapshot::FastPathView;
use slr_config::{FastPathMode, RouterDaemonConfig};
use slr_core::flow_table::FlowKey;
use slr_core::router::{FlowChange, NextHopState, Router};
use slr_core::time::{Duration, Instant};
use slr_xdp::{
    Counter, FlowKeyRecord, FlowValueRecord, InstallError, Reason, RouterFastPath, RouterSettings,
};

/// The fast path as the packet thread drives it: loaded and attached, or off (with why).
pub(super) struct FastPath {
    inner: Option<RouterFastPath>,
    /// Flows the core offered that did not fit the map (they stay on the slow path).
    pub(super) map_full: u64,
    /// Map updates that failed otherwise.
    pub(super) errors: u64,
}

impl FastPath {
    /// Off.
    pub(super) fn off() -> Self {
        FastPath {
            inner: None,
            map_full: 0,
            errors: 0,
        }
    }

    /// Loads and attaches the program as configured; where it cannot, says so in one log line
    /// and stays off (the TUN path serves every packet).
    ///
    /// With a pin directory the flow map is pinned there, and the flows a map pinned by an
    /// earlier run still holds (a router killed or restarted) are taken back by the core, each
    /// to the next hop it had (MISSION F17a), before the program replaces the old one on the
    /// interfaces: established flows keep their hosts across a restart, and forward in the
    /// kernel meanwhile.
    pub(super) fn start(cfg: &RouterDaemonConfig, router: &mut Router, now: Instant) -> Self {
        if cfg.fast_path == FastPathMode::Off {
            tracing::info!(
                "fast path off (router.fast_path = \"off\"): every packet through the TUN device"
            );
            return Self::off();
        }
        let settings = RouterSettings {
            max_flows: cfg.fast_path_max_flows.min(u32::MAX as usize) as u32,
            tunnel_source: cfg.core.tunnel_source,
            tunnel_mtu: u32::from(cfg.core.tunnel_mtu),
            outer_ttl: slr_core::tunnel::DEFAULT_OUTER_TTL,
        };
        let names = if cfg.fast_path_interfaces.is_empty() {
            crate::daemon::interfaces_except(&cfg.tun)
        } else {
            cfg.fast_path_interfaces.clone()
        };
        let loaded = match &cfg.fast_path_pin_dir {
            Some(dir) => match RouterFastPath::load_pinned(settings, dir) {
                Ok(pinned) => Ok(pinned),
                Err(e @ slr_xdp::FastPathError::Pin { .. }) => {
                    tracing::warn!(
                        "fast path flows not pinned ({e}): a restart of this router loses them"
                    );
                    RouterFastPath::load(settings).map(|fp| (fp, Vec::new()))
                }
                Err(e) => Err(e),
            },
            None => RouterFastPath::load(settings).map(|fp| (fp, Vec::new())),
        };
        let mut fp = match loaded {
            Ok((mut fp, inherited)) => {
                if let Err(e) = fp.set_trusted_parents(&cfg.core.trusted_parents) {
                    tracing::warn!("fast path: trusted parents not set ({e}): their tunnels take the slow path");
                }
                router.set_flow_log(true);
                let mut me = FastPath {
                    inner: Some(fp),
                    map_full: 0,
                    errors: 0,
                };
                me.take_back(router, now, inherited);
                me
            }
            Err(e) => {
                tracing::warn!(
                    "fast path off: the programs could not load ({e}); the TUN path serves every packet"
                );
                return Self::off();
            }
        };
        let hook = crate::daemon::hook_of(cfg.fast_path);
        let attached = {
            let inner = fp.inner.as_mut().expect("just loaded");
            names
                .iter()
                .try_for_each(|n| inner.attach_to_link_at(n, hook))
        };
        match attached {
            Ok(()) => {
                tracing::info!(interfaces = ?names, hook = hook.as_str(), pinned = ?cfg.fast_path_pin_dir, "fast path on: the kernel forwards established flows");
                fp
            }
            Err(e) => {
                tracing::warn!(
                    "fast path off: the {} program could not attach ({e}); the TUN path serves every packet",
                    hook.as_str()
                );
                if let Some(inner) = fp.inner.as_mut() {
                    let _ = inner.detach_all();
                }
                router.set_flow_log(false);
                Self::off()
            }
        }
    }

    /// The core takes back the flows a pinned map held; those it refuses leave the map.
    fn take_back(
        &mut self,
        router: &mut Router,
        now: Instant,
        inherited: Vec<(FlowKeyRecord, FlowValueRecord)>,
    ) {
        if inherited.is_empty() {
            return;
        }
        let Some(fp) = self.inner.as_mut() else {
            return;
        };
        let ktime = slr_xdp::ktime_ns();
        let (mut taken, mut refused) = (0usize, std::collections::BTreeMap::new());
        for (k, v) in inherited {
            let key = FlowKey {
                src_addr: k.src(),
                dst_addr: k.dst(),
                src_port: k.src_port(),
                dst_port: k.dst_port(),
                protocol: k.protocol(),
            };
            let idle = if v.last_used_ns == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(ktime.saturating_sub(v.last_used_ns) / 1000)
            };
            // A shortcut's entry names its host; its next hop is the index (F10).
            let (nh, shortcut) = if v.is_shortcut() {
                let nh = v.next_hop as usize;
                (
                    (nh < router.next_hops().len()).then_some(nh),
                    Some(v.tunnel_dst()),
                )
            } else {
                (router.next_hop_by_address(v.tunnel_dst()), None)
            };
            let r = match nh {
                Some(nh) => router
                    .restore_flow(now, key, nh, idle)
                    .map(|()| {
                        if let Some(host) = shortcut {
                            router.restore_shortcut(&key, host);
                        }
                    })
                    .map_err(|r| r.as_str()),
                None => Err("no_next_hop"),
            };
            match r {
                Ok(()) => taken += 1,
                Err(why) => {
                    *refused.entry(why).or_insert(0usize) += 1;
                    let _ = fp.withdraw(&k);
                }
            }
        }
        tracing::info!(
            flows = taken,
            refused = ?refused,
            "fast path: flows of the pinned map taken back by the core (F17a)"
        );
        while let Some(change) = router.poll_flow_change() {
            self.apply(change, router.next_hops());
        }
    }

    /// A graceful stop: the program leaves the interfaces (the pinned map stays, for the next
    /// start). A killed router leaves the program forwarding.
    pub(super) fn stop(&mut self) {
        if let Some(fp) = self.inner.as_mut() {
            if let Err(e) = fp.detach_all() {
                tracing::warn!("detaching the XDP program: {e}");
            }
        }
    }

    /// Empties the flow map (`slr ctl R fast-path flush`); returns how many entries went.
    pub(super) fn flush(&mut self) -> Result<usize, slr_xdp::FastPathError> {
        match self.inner.as_mut() {
            Some(fp) => fp.flush(),
            None => Ok(0),
        }
    }

    /// Whether the program forwards.
    pub(super) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Applies one of the core's flow changes to the map.
    pub(super) fn apply(&mut self, change: FlowChange, next_hops: &[NextHopState]) {
        let Some(fp) = self.inner.as_mut() else {
            return;
        };
        match fp.apply(change, next_hops) {
            Ok(()) => {}
            Err(InstallError::Full) => self.map_full += 1,
            Err(InstallError::Other(e)) => {
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::warn!(errors = self.errors, "fast path map update failed: {e}");
                }
            }
        }
    }

    /// Whether the program forwarded a packet of `key` since its entry was last installed.
    pub(super) fn used(&self, key: &FlowKey) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|fp| matches!(fp.last_used_ns(key), Ok(Some(_))))
    }

    /// When the program last forwarded a packet of `key` (in the core's clock, `now` being
    /// the present), if it has the flow and forwarded any.
    pub(super) fn last_used(&self, key: &FlowKey, now: Instant) -> Option<Instant> {
        let fp = self.inner.as_ref()?;
        let used = fp.last_used_ns(key).ok()??;
        let ago_us = slr_xdp::ktime_ns().saturating_sub(used) / 1000;
        Some(Instant::from_micros(now.as_micros().saturating_sub(ago_us)))
    }

    /// Expires flows, asking the map when the program last forwarded each one due (the caller
    /// then follows the core's changes).
    pub(super) fn handle_timeout(&mut self, router: &mut Router, now: Instant) {
        match self.inner.as_ref() {
            None => router.handle_timeout(now),
            Some(fp) => {
                let ktime = slr_xdp::ktime_ns();
                router.handle_timeout_with(now, |key: &FlowKey| {
                    let used = fp.last_used_ns(key).ok()??;
                    let ago_us = ktime.saturating_sub(used) / 1000;
                    Some(Instant::from_micros(now.as_micros().saturating_sub(ago_us)))
                });
            }
        }
    }

    /// What the metrics show (`router`: for how many next hops and virtual hosts).
    pub(super) fn view(&self, router: &Router) -> FastPathView {
        let per = |n: usize, get: &dyn Fn(&RouterFastPath, u32) -> Option<Counter>| {
            self.inner.as_ref().map_or_else(Vec::new, |fp| {
                (0..n as u32)
                    .map(|i| get(fp, i).map_or((0, 0), |c| (c.packets, c.bytes)))
                    .collect()
            })
        };
        let next_hops = per(router.next_hops().len(), &|fp, i| {
            fp.next_hop_counter(i).ok()
        });
        let virtual_hosts = per(router.virtual_hosts().len(), &|fp, i| {
            fp.virtual_host_counter(i).ok()
        });
        let reasons = self
            .inner
            .as_ref()
            .and_then(|fp| fp.stats().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(r, c): (Reason, Counter)| (r.as_str(), c.packets, c.bytes))
            .collect();
        FastPathView {
            enabled: self.enabled(),
            reasons,
            map_full: self.map_full,
            errors: self.errors,
            next_hops,
            virtual_hosts,
        }
    }
}
