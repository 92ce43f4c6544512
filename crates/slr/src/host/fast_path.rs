//! The host's kernel fast path (`host.fast_path = "xdp"`): `slr_host` decapsulates trusted
//! tunnels on the host's interfaces; the agent reads its counters into the host's families.

use crate::metrics::Exposition;
use serde::Serialize;
use slr_config::{FastPathMode, HostDaemonConfig};
use slr_xdp::{Counter, HostFastPath, HostReason, HostSettings};

/// The program loaded and attached, or off.
pub(super) struct HostKernel {
    inner: Option<HostFastPath>,
}

/// What the program did, for metrics and `status`.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct KernelView {
    /// Whether the program decapsulates.
    pub enabled: bool,
    /// Interfaces it is attached to.
    pub interfaces: Vec<String>,
    /// Inner packets (and bytes) it passed up the stack.
    pub delivered: CounterView,
    /// Packets and bytes by reason (`HostReason` names).
    pub reasons: Vec<(&'static str, u64, u64)>,
    /// Inner packets delivered per virtual subnet, in configuration order.
    pub per_subnet: Vec<u64>,
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(super) struct CounterView {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CounterView {
    fn from(c: Counter) -> Self {
        CounterView {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

impl KernelView {
    /// Tunnel packets the program decided itself (delivered or dropped; not those it left to
    /// the agent, which the agent counts).
    pub fn decided(&self) -> u64 {
        self.reasons
            .iter()
            .filter(|(r, _, _)| {
                HostReason::ALL
                    .iter()
                    .any(|h| h.as_str() == *r && (h.is_drop() || *h == HostReason::Delivered))
            })
            .map(|(_, p, _)| p)
            .sum()
    }

    /// Packets the program dropped for the agent's reason named `reason`.
    pub fn drops(&self, reason: &str) -> u64 {
        self.reasons
            .iter()
            .find(|(r, _, _)| *r == reason)
            .map_or(0, |(_, p, _)| *p)
    }

    pub fn add_metrics(&self, p: &mut Exposition, host: &str) {
        p.gauge(
            "slr_host_fast_path_enabled",
            "1 while the XDP program decapsulates trusted tunnels in the kernel (host.fast_path = \"xdp\" and attached).",
            &[("host", host)],
            f64::from(u8::from(self.enabled)),
        );
        for (reason, packets, bytes) in &self.reasons {
            let l = [("host", host), ("reason", reason)];
            p.counter(
                "slr_host_fast_path_packets_total",
                "Packets the XDP program saw, by what it did: delivered, dropped (the agent's reasons), or passed (not_tunnel, slow_path, disabled).",
                &l,
                *packets,
            );
            p.counter(
                "slr_host_fast_path_bytes_total",
                "Bytes the XDP program saw, by what it did (inner bytes when delivered).",
                &l,
                *bytes,
            );
        }
    }
}

impl HostKernel {
    /// Loads and attaches `slr_host` as configured; where it cannot, says so in one log line
    /// and stays off (the agent's raw socket takes every tunnel).
    pub fn start(cfg: &HostDaemonConfig) -> Self {
        if cfg.fast_path == FastPathMode::Off {
            tracing::info!(
                "fast path off (host.fast_path = \"off\"): tunnels are decapsulated by the agent"
            );
            return HostKernel { inner: None };
        }
        let names = if cfg.fast_path_interfaces.is_empty() {
            crate::daemon::interfaces_except(&cfg.tun)
        } else {
            cfg.fast_path_interfaces.clone()
        };
        let hook = crate::daemon::hook_of(cfg.fast_path);
        let attached = HostFastPath::load(HostSettings {
            trusted_tunnel_sources: cfg.trusted_tunnel_sources.clone(),
            virtual_subnets: cfg.virtual_subnets.clone(),
        })
        .and_then(|mut fp| {
            for n in &names {
                fp.attach_at(n, hook)?;
            }
            Ok(fp)
        });
        match attached {
            Ok(fp) => {
                tracing::info!(interfaces = ?names, hook = hook.as_str(), "fast path on: the kernel decapsulates trusted tunnels");
                HostKernel { inner: Some(fp) }
            }
            Err(e) => {
                tracing::warn!(
                    "fast path off: the {} program could not attach ({e}); the agent decapsulates every tunnel",
                    hook.as_str()
                );
                HostKernel { inner: None }
            }
        }
    }

    /// What the program did so far.
    pub fn view(&self, subnets: usize) -> KernelView {
        let Some(fp) = self.inner.as_ref() else {
            return KernelView::default();
        };
        let stats = fp.stats().unwrap_or_default();
        KernelView {
            enabled: true,
            interfaces: fp.attached().to_vec(),
            delivered: stats
                .iter()
                .find(|(r, _)| *r == HostReason::Delivered)
                .map(|(_, c)| CounterView::from(*c))
                .unwrap_or_default(),
            reasons: stats
                .iter()
                .map(|(r, c)| (r.as_str(), c.packets, c.bytes))
                .collect(),
            per_subnet: (0..subnets)
                .map(|i| fp.subnet_counter(i).map(|c| c.packets).unwrap_or(0))
                .collect(),
        }
    }

    /// A graceful stop: the program is detached (a killed agent leaves it running).
    pub fn stop(&mut self) {
        if let Some(fp) = self.inner.as_mut() {
            if let Err(e) = fp.detach_all() {
                tracing::warn!("detaching the host's XDP program: {e}");
            }
        }
    }
}
