//! The router's kernel fast path (`router.fast_path = "xdp"`): the XDP program on the ingress
//! interfaces forwards established flows; the core stays the one place where decisions are made
//! and the program's flow map follows it (see `slr_xdp`).

use crate::snapshot::FastPathView;
use slr_config::{FastPathMode, RouterDaemonConfig};
use slr_core::flow_table::FlowKey;
use slr_core::router::Router;
use slr_core::time::Instant;
use slr_xdp::{Counter, InstallError, Reason, RouterFastPath, RouterSettings};

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
    pub(super) fn start(cfg: &RouterDaemonConfig, router: &mut Router) -> Self {
        if cfg.fast_path == FastPathMode::Off {
            tracing::info!(
                "fast path off (router.fast_path = \"off\"): every packet through the TUN device"
            );
            return Self::off();
        }
        let settings = RouterSettings {
            max_flows: cfg.core.flow_table.max_flows.min(u32::MAX as usize) as u32,
            tunnel_source: cfg.core.tunnel_source,
            tunnel_mtu: u32::from(cfg.core.tunnel_mtu),
            outer_ttl: slr_core::tunnel::DEFAULT_OUTER_TTL,
        };
        let names = if cfg.fast_path_interfaces.is_empty() {
            crate::daemon::interfaces_except(&cfg.tun)
        } else {
            cfg.fast_path_interfaces.clone()
        };
        let attached = RouterFastPath::load(settings).and_then(|mut fp| {
            for n in &names {
                fp.attach(n)?;
            }
            Ok(fp)
        });
        match attached {
            Ok(fp) => {
                tracing::info!(interfaces = ?names, "fast path on: XDP forwards established flows");
                router.set_flow_log(true);
                FastPath {
                    inner: Some(fp),
                    map_full: 0,
                    errors: 0,
                }
            }
            Err(e) => {
                tracing::warn!(
                    "fast path off: XDP could not attach ({e}); the TUN path serves every packet"
                );
                Self::off()
            }
        }
    }

    /// Whether the program forwards.
    pub(super) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Applies the core's flow changes to the map.
    pub(super) fn follow(&mut self, router: &mut Router) {
        let Some(fp) = self.inner.as_mut() else {
            return;
        };
        while let Some(change) = router.poll_flow_change() {
            match fp.apply(change, router.next_hops()) {
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
    }

    /// Expires flows, asking the map when the program last forwarded each one due.
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
        self.follow(router);
    }

    /// What the metrics show.
    pub(super) fn view(&self) -> FastPathView {
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
        }
    }
}
