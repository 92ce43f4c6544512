//! What the router's and the host's control threads share: the running thread's handle, the
//! stop signal, the node's identity, and conversions between the protocol's and the core's
//! prefixes.

use super::view::SharedView;
use anyhow::Result;
use slr_config::ControlConfig;
use slr_control::{Identity, Subnet};
use slr_wire::Ipv4Cidr;
use std::time::SystemTime;
use tokio::sync::watch;

/// The running control thread; dropping it stops the thread.
pub struct ControlThread {
    pub(super) stop: watch::Sender<bool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    /// What it knows.
    pub view: SharedView,
    /// Where the core's shortcut signals go (with `[control] shortcut`).
    pub signals: Option<tokio::sync::mpsc::Sender<Vec<super::shortcut::OwnSignal>>>,
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A virtual subnet as the state update protocol writes it.
pub(super) fn to_subnet(c: Ipv4Cidr) -> Subnet {
    Subnet::new(c.addr(), c.prefix_len()).expect("an Ipv4Cidr is a valid subnet")
}

/// A subnet of the state update protocol as a prefix.
pub(super) fn to_cidr(s: &Subnet) -> Ipv4Cidr {
    Ipv4Cidr::new(s.network(), s.prefix_len()).expect("a Subnet is a valid prefix")
}

/// This node's certificate, key and the operator CA.
pub(super) fn identity(c: &ControlConfig) -> Result<Identity> {
    Ok(Identity::load(&c.ca, &c.cert, &c.key)?)
}

/// Resolves when the stop flag is set (or its sender is gone).
pub(super) async fn until_stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Wall-clock time in Unix milliseconds (an input of the cost functions).
pub(super) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
