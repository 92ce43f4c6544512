//! The fast path follows the routing core: its flow map is the core's cache.

use crate::{FastPathError, FlowKeyRecord, FlowValueRecord, InstallError, RouterFastPath};
use slr_core::flow_table::FlowKey;
use slr_core::router::{FlowChange, NextHopState};

/// The map key of a core flow.
pub fn key_record(key: &FlowKey) -> FlowKeyRecord {
    FlowKeyRecord::new(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.protocol,
    )
}

impl RouterFastPath {
    /// Follows one [`FlowChange`] of the core (`next_hops`: the core's, to find the tunnel
    /// address of an offloaded flow's next hop). Only TCP and UDP flows are installed.
    pub fn apply(
        &mut self,
        change: FlowChange,
        next_hops: &[NextHopState],
    ) -> Result<(), InstallError> {
        match change {
            FlowChange::Offload {
                key,
                next_hop,
                virtual_host,
                shortcut,
            } => {
                if key.protocol != 6 && key.protocol != 17 {
                    return Ok(());
                }
                let Some(nh) = next_hops.get(next_hop as usize) else {
                    return Ok(());
                };
                // A shortcut flow (F10) is tunnelled straight to its host; it stays counted
                // under its next hop, as in the core.
                let mut value =
                    FlowValueRecord::new(shortcut.unwrap_or(nh.address), next_hop, virtual_host);
                if shortcut.is_some() {
                    value = value.with_shortcut();
                }
                self.install(key_record(&key), value)
            }
            FlowChange::Withdraw { key } => self
                .withdraw(&key_record(&key))
                .map(|_| ())
                .map_err(InstallError::Other),
        }
    }

    /// When the program last forwarded a packet of `key`, in ns of [`crate::ktime_ns`]'s clock
    /// (`None`: no entry, or no packet yet).
    pub fn last_used_ns(&self, key: &FlowKey) -> Result<Option<u64>, FastPathError> {
        Ok(self
            .lookup(&key_record(key))?
            .map(|v| v.last_used_ns)
            .filter(|&t| t != 0))
    }
}
