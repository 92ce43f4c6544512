//! What the router daemon and the host agent share: logging, signals, the clock fed to the core,
//! and the kernel routes they install and remove.

use anyhow::{Context, Result};
use slr_io::{Route, RouteSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How the daemons write their logs (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and fields), for log
    /// shippers.
    Json,
}

/// Starts `tracing` output on stderr (`RUST_LOG` overrides the `info` default).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Flags set by signals: `stop` on SIGTERM/SIGINT, `reload` on SIGHUP.
pub struct Signals {
    /// Set when the daemon should exit.
    pub stop: Arc<AtomicBool>,
    /// Set when the configuration should be read again; the daemon clears it.
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
        Ok(Signals { stop, reload })
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether a reload was asked for (clears the flag).
    pub fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::Relaxed)
    }
}

/// The monotonic clock the daemon feeds to the core.
#[derive(Clone, Copy)]
pub struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Clock {
            origin: std::time::Instant::now(),
        }
    }
    /// Now, as the core's instant.
    pub fn now(&self) -> slr_core::time::Instant {
        slr_core::time::Instant::from_micros(self.origin.elapsed().as_micros() as u64)
    }
    /// How long until `t` (zero if past).
    pub fn until(&self, t: slr_core::time::Instant) -> std::time::Duration {
        std::time::Duration::from_micros(t.as_micros().saturating_sub(self.now().as_micros()))
    }
}

/// Kernel routes a daemon installed, over netlink ([`RouteSocket`]); they are removed when this
/// is dropped (also on error paths).
pub struct Routes {
    /// Opened at the first change, in the network namespace of the thread that makes it.
    socket: Option<RouteSocket>,
    installed: Vec<Route>,
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Routes {
            socket: None,
            installed: Vec::new(),
        }
    }

    fn socket(&mut self, route: &Route) -> Result<&mut RouteSocket> {
        if self.socket.is_none() {
            let socket = RouteSocket::open().with_context(|| format!("route {route}"))?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_mut().expect("opened above"))
    }

    /// Installs `route` (what `ip route replace` does) and owns it: it is removed with the others.
    /// Installing a route again is harmless.
    pub fn replace(&mut self, route: Route) -> Result<()> {
        self.socket(&route)?.replace(&route)?;
        if !self.installed.contains(&route) {
            self.installed.push(route);
        }
        Ok(())
    }

    /// Removes `route` now, whether installed here or not, and forgets it. A route that is not
    /// there (or whose device is gone) counts as removed.
    pub fn remove(&mut self, route: &Route) -> Result<()> {
        self.socket(route)?.delete(route)?;
        self.installed.retain(|r| r != route);
        Ok(())
    }

    /// Removes every route installed (idempotent); failures are logged.
    pub fn remove_all(&mut self) {
        for route in std::mem::take(&mut self.installed).iter().rev() {
            if let Err(e) = self.remove(route) {
                tracing::warn!("removing route: {e:#}");
            }
        }
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// A random 64-bit seed (the std library's per-process SipHash keys come from the OS).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Where a configured kernel fast path runs (`off` is never asked: the daemons load nothing).
pub fn hook_of(mode: slr_config::FastPathMode) -> slr_xdp::Hook {
    match mode {
        slr_config::FastPathMode::Tc => slr_xdp::Hook::Tc,
        slr_config::FastPathMode::Xdp | slr_config::FastPathMode::Off => slr_xdp::Hook::Xdp,
    }
}

/// The interfaces of the calling thread's network namespace but loopback and `tun`: where a
/// daemon's XDP program attaches unless configured otherwise.
pub fn interfaces_except(tun: &str) -> Vec<String> {
    let Ok(dev) = std::fs::read_to_string("/proc/self/net/dev") else {
        return Vec::new();
    };
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .filter(|n| n != "lo" && n != tun && !n.is_empty())
        .collect()
}
