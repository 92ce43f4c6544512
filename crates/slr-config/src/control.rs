//! `[control]`, the state update protocol's settings, shared by routers and host agents.

use crate::check::Ctx;
use crate::file::ControlSection;
use crate::ConfigError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The state update protocol's settings (`[control]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// Operator CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by the CA for its name.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Where children report to this router (None: no child reports here).
    pub listen: Option<SocketAddr>,
    /// T: how often children are asked to report.
    pub report_interval: Duration,
    /// N: reports missed before a child leaves selection.
    pub silent_after: u32,
    /// R: how often the route table is rebuilt (also on every change).
    pub rebuild_interval: Duration,
    /// Parents this node reports to.
    pub parents: Vec<ParentConfig>,
    /// The shortcut (F10), if on: how long the ingress waits for a flow's signal.
    pub shortcut: Option<Duration>,
}

/// A parent this node reports to.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentConfig {
    /// Its name (its certificate's name).
    pub name: String,
    /// Its control address.
    pub address: SocketAddr,
}

/// Checks `[control]`; `router` tells whether `listen` is allowed (hosts have no children).
pub(crate) fn control(
    c: &Ctx,
    s: &ControlSection,
    router: bool,
) -> Result<ControlConfig, ConfigError> {
    let listen = match &s.listen {
        Some(l) if router => Some(c.socket("control.listen", l)?),
        Some(l) => return Err(c.err("control.listen", l, "hosts have no children: remove it")),
        None => None,
    };
    let interval = |key: &str, v: &str| -> Result<Duration, ConfigError> {
        let d = c.duration(key, v)?;
        if d < Duration::from_millis(50) {
            return Err(c.err(key, v, "must be at least 50ms"));
        }
        Ok(d)
    };
    let report_interval = interval("control.report_interval", &s.report_interval)?;
    let rebuild_interval = interval("control.rebuild_interval", &s.rebuild_interval)?;
    if s.silent_after == 0 {
        return Err(c.err("control.silent_after", s.silent_after, "must be at least 1"));
    }
    let mut parents = Vec::new();
    for (i, p) in s.parents.iter().enumerate() {
        if p.name.is_empty() {
            return Err(c.err(
                &format!("control.parents[{i}].name"),
                &p.name,
                "must not be empty",
            ));
        }
        parents.push(ParentConfig {
            name: p.name.clone(),
            address: c.socket(&format!("control.parents[{i}].address"), &p.address)?,
        });
    }
    let shortcut = match (s.shortcut.unwrap_or(false), &s.shortcut_hold) {
        (false, Some(h)) => {
            return Err(c.err(
                "control.shortcut_hold",
                h,
                "set control.shortcut = true to use it",
            ))
        }
        (false, None) => None,
        (true, hold) => {
            let hold = match hold {
                Some(h) => {
                    let d = c.duration("control.shortcut_hold", h)?;
                    if d > Duration::from_secs(1) {
                        return Err(c.err("control.shortcut_hold", h, "must be at most 1s"));
                    }
                    d
                }
                None => Duration::from_millis(20),
            };
            Some(hold)
        }
    };
    Ok(ControlConfig {
        shortcut,
        ca: c.relative(&s.ca),
        cert: c.relative(&s.cert),
        key: c.relative(&s.key),
        listen,
        report_interval,
        silent_after: s.silent_after,
        rebuild_interval,
        parents,
    })
}
