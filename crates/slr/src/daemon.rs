//! What the router daemon and the host agent share: logging, signals, the clock fed to the core,
//! and the `ip route` changes they make and undo.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts `tracing` output on stderr (`RUST_LOG` overrides the `info` default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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

/// Runs `ip ARGS`, failing with the command and its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Routes a daemon installed; they are removed when this is dropped (also on error paths).
pub struct Routes {
    installed: Vec<Vec<String>>,
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Routes {
            installed: Vec::new(),
        }
    }

    /// `ip route replace ROUTE...`, remembered for removal.
    pub fn replace(&mut self, route: &[&str]) -> Result<()> {
        let mut args = vec!["route", "replace"];
        args.extend_from_slice(route);
        ip(&args)?;
        self.installed
            .push(route.iter().map(|s| s.to_string()).collect());
        Ok(())
    }

    /// Removes every route installed (idempotent).
    pub fn remove_all(&mut self) {
        for r in self.installed.drain(..).rev() {
            let mut args = vec!["route", "del"];
            args.extend(r.iter().map(String::as_str));
            if let Err(e) = ip(&args) {
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
